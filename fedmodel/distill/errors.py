"""The error distillation raises for a request it cannot carry out as asked."""

from __future__ import annotations

from fedmodel.errors import FedmodelError


class DistillError(FedmodelError):
    """Bad distillation input: no teacher model, an unfit student, unusable public data."""
