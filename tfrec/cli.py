"""What every command line of the project shares: logging set-up and exit codes.

``python -m trainer.task``, ``python -m serving.export`` and ``serving.reindex``
print one readable log line per stage on stdout, and turn an error the user
can fix into one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import errno
import logging
import sys
from typing import Callable

from tfrec.errors import UserError

# A full disk or an unwritable folder: the user can fix it, then rerun the same command to resume.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.ENOTDIR, errno.EISDIR}


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest and notebooks swap it)."""

    _tfrec = True

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(debug: bool = False) -> None:
    """One readable line per stage on stdout; TensorFlow and friends quiet unless ``debug``."""
    import warnings

    logger = logging.getLogger("tfrec")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False  # libraries that configure the root logger would print every line twice
    if not any(getattr(h, "_tfrec", False) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    for noisy in ("tensorflow", "absl", "h5py", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)
    if not debug:
        warnings.filterwarnings("ignore")


def run_main(command: Callable[[], object], debug: bool = False) -> int:
    """Runs a command line's work and returns its exit code.

    0 on success; 2 on a :class:`UserError` or a full disk / unwritable folder
    (one line on stderr; ``debug`` re-raises); 130 on Ctrl-C.
    """
    try:
        command()
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or an unwritable folder outside the checkpoint writes
        if debug or e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {e.filename or 'writing'}: {e.strerror}; free space or fix permissions, then rerun the "
              "same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
