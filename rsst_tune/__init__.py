"""rsst-tune: hyperparameter search for structured pruning (IMP, Refill, RSST)."""

__version__ = "0.1.0"
