"""The error the model package raises for configurations it cannot build."""

from __future__ import annotations

from fedmodel.errors import FedmodelError


class ModelError(FedmodelError):
    """Unknown model name, an input shape the model cannot take, or missing pre-trained weights."""
