"""The data layer's one error type.

Every bad input the data layer can meet (unknown dataset, missing carrier package, tampered file,
malformed table) raises ``DataError`` with one line naming the dataset, file or field, so the CLI
can print it without a traceback and exit 2.
"""

from __future__ import annotations

from fedmodel.errors import FedmodelError


class DataError(FedmodelError):
    """A dataset, carrier package or data file is missing, unknown, tampered with or malformed."""


class SiteDataError(DataError):
    """A site's own file does not match the declared task. ``column`` is the task's name for
    the column at fault (public: the task declares it), so a refusal can name it without
    naming a row or a value."""

    def __init__(self, message: str, *, column: str | None) -> None:
        super().__init__(message)
        self.column = column
