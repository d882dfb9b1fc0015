"""What keeps a sweep honest across failures: which errors are retried (`retries`) and the
signatures that make a resume refuse tampered pickles (`trust`)."""
