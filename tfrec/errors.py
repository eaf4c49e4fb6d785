"""Errors a user can cause: one clear line, never a deep stack trace."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's config, data or request.

    The command line prints ``str(error)`` as one line on stderr and exits 2.
    """


class ConfigError(UserError):
    """An unknown key, a wrong type or an out-of-range value in the config."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class DataError(UserError):
    """A file, row or column that does not hold what the config says it should.

    Args:
      path: the file.
      message: what was expected and what was found.
      row: 1-based data row (header excluded) or line number, if known.
      column: the column or feature name, if known.
    """

    def __init__(self, path: str, message: str, row: int | None = None, column: str | None = None):
        self.path, self.row, self.column = str(path), row, column
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")
