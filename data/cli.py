"""The error policy of every command (`python -m benchmark.run`, `benchmark.status`, `trainers.train`,
`metrics.evaluate`, the converters, ...):

- a user error (an exception of class `UserError`: a file, config key or flag the user can fix) is
  one line `error: <message>` on stderr, exit status 2;
- anything else is a bug or an unexpected failure: it keeps its full traceback, exit status 1
  (a KeyError or FileNotFoundError deep inside training is NOT a user error unless raised as one);
- Ctrl-C prints one line and exits with 130 (128 + SIGINT, what shells report).

Only code that knows the cause raises `UserError` (or a subclass below); the message names the
file, key or flag. Lives in `data/`, the package every other one may import.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix; the message names the file, key or flag and what is allowed."""

    def __str__(self) -> str:  # the message as given (a KeyError subclass would quote it)
        return str(self.args[0]) if self.args else type(self).__name__


class InputError(UserError, ValueError):
    """A bad input file or config value (a ValueError too, for callers that catch those)."""


class ConfigKeyError(UserError, KeyError):
    """A config key that is missing, or names something that does not exist (a KeyError too)."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named (or the run needs) does not exist."""


# the suite's own packages: their loggers get the handler below (other libraries keep their own settings)
PACKAGES = ("ablations", "benchmark", "data", "metrics", "slurm", "trainers")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Writes each record through tqdm, so a progress bar on the same terminal stays whole."""

    def emit(self, record):
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except (OSError, ValueError, RuntimeError):  # logging must never raise into the program
            self.handleError(record)


def setup_logging(level: str | int | None = None) -> None:
    """Progress and status of every command: `<time> <LEVEL> <logger>: <message>` on stderr (SLURM's
    error log), through tqdm so progress bars keep working. The level is `level`, else the
    environment variable LSA_LOG_LEVEL, else INFO. Called once by `command` below; idempotent.
    A command's own output (tables, --dry-run graphs, --cfg job, the run folder) stays on stdout."""
    level = level or os.environ.get("LSA_LOG_LEVEL", "INFO")
    handler = next((h for h in logging.getLogger(PACKAGES[0]).handlers if isinstance(h, _TqdmHandler)), None)
    if handler is None:
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper() if isinstance(level, str) else level)
        if handler not in logger.handlers:
            logger.addHandler(handler)


def command(main):
    """Decorator for a command's `main(argv) -> int`: applies the policy above to what it raises
    (and sets up logging, setup_logging)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        setup_logging()
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C)", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper
