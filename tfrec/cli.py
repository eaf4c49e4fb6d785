"""What every command line of the project shares: logging set-up and exit codes.

``python -m trainer.task``, ``python -m serving.export`` and ``serving.reindex``
print one readable log line per stage on stdout, and turn an error the user
can fix into one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import difflib
import errno
import logging
import sys
import warnings
from typing import Callable, Iterable

from tfrec.errors import UserError

# A full disk or an unwritable folder: the user can fix it, then rerun the same command to resume.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                       errno.ENOTDIR, errno.EISDIR}
# The libraries whose own warnings (deprecations, tracing notes) a command line does not show unless --debug.
_LIBRARIES = (r"(tensorflow|tensorflow_recommenders|tensorflow_text|tf_keras|keras|transformers|tensorboard|absl|h5py"
              r"|scann|google\.protobuf)(\.|$)")


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
    """One readable line per stage on stdout; TensorFlow and friends quiet unless ``debug``.

    Quiet: their loggers show errors only, and Python warnings raised inside them, or deprecations of their
    APIs raised where tfrec calls them, are not shown; every other warning (the user's own) still is.
    """
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
        warnings.filterwarnings("ignore", module=_LIBRARIES)
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"tfrec(\.|$)")


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


def flags_as_overrides(unknown: list[str], cli_flags: Iterable[str], config_keys: Iterable[str],
                       platform_flags: Iterable[str] = ()) -> list[str]:
    """Turns the flags argparse did not know into ``--set`` assignments, or refuses them by name.

    ``--train.epochs 3`` (a dotted config key) and ``--epochs=3`` (a key's last
    part, when only one key ends so) are shorthands for ``--set train.epochs=3``:
    hyperparameter tuning on Vertex AI passes each tuned parameter as
    ``--<parameter_id> <value>``. A flag in ``platform_flags`` is logged and
    ignored. Anything else raises a UserError naming the closest valid flag.

    Returns:
      ``["train.epochs=3", ...]`` in command-line order.
    """
    keys = list(config_keys)
    by_leaf: dict[str, list[str]] = {}
    for key in keys:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    platform = set(platform_flags)
    overrides, i = [], 0
    while i < len(unknown):
        token = unknown[i]
        i += 1
        if not token.startswith("--") or token == "--":
            raise UserError(f"unexpected argument {token!r}; config values go as --set dotted.key=value")
        name, has_value, value = token[2:].partition("=")
        if not has_value and i < len(unknown) and not unknown[i].startswith("--"):
            value, has_value = unknown[i], True
            i += 1
        if name in platform:
            logging.getLogger("tfrec").info("ignoring platform flag --%s", name)
            continue
        key = name if name in keys else (by_leaf[name][0] if len(by_leaf.get(name, [])) == 1 else None)
        if key is None and name in by_leaf:
            raise UserError(f"flag --{name} is ambiguous: use one of "
                            + ", ".join(f"--{k}" for k in by_leaf[name]))
        if key is None:
            candidates = [f"--{f.lstrip('-')}" for f in cli_flags] + [f"--{k}" for k in keys]
            close = difflib.get_close_matches(f"--{name}", candidates, n=1, cutoff=0.6)
            leaf = difflib.get_close_matches(name, list(by_leaf), n=1, cutoff=0.6)
            if leaf and not close:
                close = [f"--{by_leaf[leaf[0]][0]}"]
            hint = f"; did you mean {close[0]}?" if close else "; see --help (config values: --set dotted.key=value)"
            raise UserError(f"unknown flag --{name}{hint}")
        if not has_value:
            raise UserError(f"flag --{name} needs a value (--{key}=VALUE)")
        overrides.append(f"{key}={value}")
    return overrides
