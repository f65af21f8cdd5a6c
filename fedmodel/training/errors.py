"""The error the training package raises for combinations it refuses to run."""

from __future__ import annotations

from fedmodel.errors import FedmodelError


class TrainingError(FedmodelError):
    """A training request that cannot run as asked (bad DP combination, empty data, bad file)."""
