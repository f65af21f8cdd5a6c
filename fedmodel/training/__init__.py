"""Local training: optimisers, schedules, DP-SGD, ``train``/``evaluate``, metrics, weights I/O.

``train`` / ``evaluate`` (``loop``) are the entry points; ``dp`` wraps Opacus, ``clipping``
holds the fast per-sample clipping, ``checkpoint`` / ``export`` / ``inference`` move weights
to and from disk and predict with them.
"""

from fedmodel.training.checkpoint import load_weights, save_weights
from fedmodel.training.errors import TrainingError
from fedmodel.training.export import export_model, load_exported
from fedmodel.training.inference import predict
from fedmodel.training.loop import TrainProgress, TrainResult, evaluate, train
from fedmodel.training.metrics import EvalMetrics

__all__ = [
    "EvalMetrics",
    "TrainProgress",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "export_model",
    "load_exported",
    "load_weights",
    "predict",
    "save_weights",
    "train",
]
