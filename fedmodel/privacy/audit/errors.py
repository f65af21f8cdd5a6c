"""The privacy audit's own error: bad input (not a run folder, impossible settings), exit 2."""

from __future__ import annotations

from fedmodel.errors import FedmodelError


class PrivacyAuditError(FedmodelError):
    """A privacy audit cannot run on this input; the message names the file, field or option."""
