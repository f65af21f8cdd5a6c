"""Models fedmodel trains under DP-SGD: an image CNN, a tabular MLP and a MiniLM classifier.

Every model is called as ``model(*inputs)`` with the inputs a ``fedmodel.data`` dataset yields
before its label, returns logits, and passes ``opacus.validators.ModuleValidator.validate``.
"""

from fedmodel.models.errors import ModelError
from fedmodel.models.registry import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "ModelError", "build_model"]
