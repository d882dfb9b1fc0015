"""The project's log lines (`rsst_tune.*` loggers) copied into a file for the length of a block.

Used by `rsst-tune run` (`run.log` in the run directory) and by each Ray trial (`trial.log`,
copied into every state checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[logging.Handler]:
    """Append INFO and above of the `rsst_tune` loggers to `path`; yields the file's handler."""
    logger = logging.getLogger("rsst_tune")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
