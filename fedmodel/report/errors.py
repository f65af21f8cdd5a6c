"""The report package's error: a report that cannot be built or trusted is never written."""

from __future__ import annotations

from fedmodel.errors import FedmodelError


class ReportError(FedmodelError):
    """A broken ledger, a missing or malformed run file, or an unusable output folder."""
