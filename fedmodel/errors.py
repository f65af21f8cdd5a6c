"""The one error type every user-facing failure derives from.

Each module owns its own subclass (``DataError``, ``LedgerError``, ...). The CLI catches
``FedmodelError`` and prints one line naming the field or file, then exits with ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FedmodelError(Exception):
    """A failure caused by input, configuration or environment, not by a bug."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(FedmodelError):
    """A configuration file or flag is missing, malformed or invalid."""
