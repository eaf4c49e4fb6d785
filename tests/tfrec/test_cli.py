"""tfrec/cli.py: what every command line shares, exit codes and the one-line error."""

from __future__ import annotations

import errno

import pytest

from tfrec.cli import run_main
from tfrec.errors import UserError


def fails_with(error: BaseException):
    def command():
        raise error
    return command


def test_exit_codes_and_one_line_errors(capsys):
    assert run_main(lambda: None) == 0
    assert run_main(fails_with(UserError("data.csv, row 3, column 'rating': expected a number"))) == 2
    assert capsys.readouterr().err == "error: data.csv, row 3, column 'rating': expected a number\n"
    assert run_main(fails_with(OSError(errno.ENOSPC, "No space left on device", "/job/eval.json"))) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: /job/eval.json: No space left on device; free space or fix permissions, then rerun "
                   "the same command to resume"]
    assert run_main(fails_with(KeyboardInterrupt())) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_debug_and_programming_errors_keep_the_traceback():
    with pytest.raises(UserError):
        run_main(fails_with(UserError("bad")), debug=True)
    with pytest.raises(OSError):  # not the environment's fault: a bug, shown in full
        run_main(fails_with(OSError(errno.EBADF, "Bad file descriptor")))
    with pytest.raises(ZeroDivisionError):
        run_main(lambda: 1 / 0)


def test_quiet_logging_hides_the_libraries_warnings_and_shows_the_users():
    import warnings

    from tfrec.cli import setup_logging

    def shown(category, module):
        with warnings.catch_warnings(record=True) as caught:  # the filters come back after
            warnings.simplefilter("always")
            setup_logging(debug=False)
            warnings.warn_explicit("note", category, "x.py", 1, module=module)
        return len(caught) == 1

    assert not shown(UserWarning, "tensorflow.python.framework.ops")  # raised inside a library
    assert not shown(FutureWarning, "transformers.modeling_tf_utils")
    assert not shown(DeprecationWarning, "tfrec.encoders.text")  # a library's API deprecated where tfrec calls it
    assert shown(UserWarning, "my_pipeline")  # the user's own warnings still show
    assert shown(RuntimeWarning, "tfrec.evaluate")  # and tfrec's own
    assert shown(UserWarning, "tensorflowish")  # a name that merely starts like a library's
