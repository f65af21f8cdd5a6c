"""``distill_run``: teacher from the run folder, student trained and measured, both recorded.

The student is written like any exported model (``RUN_DIR/students/NAME/model.safetensors`` +
``model.json``), so ``fedmodel predict`` and ``fedmodel export --quantize`` take it as they take
the global model. Its sidecar's ``distillation`` record holds what the report lists: accuracy of
student and teacher on the same evaluation rows (disjoint from the distillation rows), how often
they agree, parameters, bytes on disk and CPU milliseconds per batch of both, the public rows'
source and index digests, and that no privacy was spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fedmodel.config import ModelConfig
from fedmodel.distill.errors import DistillError
from fedmodel.distill.kd import DistillConfig, distill_student
from fedmodel.distill.public import PublicRows, load_public
from fedmodel.models import ModelError, build_model
from fedmodel.models.registry import student_config
from fedmodel.training.export import RUN_MODEL_DIR, export_model, load_exported, model_dir_of
from fedmodel.training.footprint import bytes_on_disk, footprint
from fedmodel.training.inference import predict

STUDENTS_DIR = "students"
PRIVACY_NOTE = (
    "post-processing of the DP global model on the server's public rows: no privacy spent, "
    "no site row read"
)
_TASK_OF_MODEL = {"cnn": "image", "scatternet": "image", "mlp": "tabular", "minilm": "text"}


@dataclass(frozen=True)
class DistilledStudent:
    """Where the student went and its ``distillation`` record (also in its sidecar)."""

    model_dir: Path
    record: dict[str, Any]


def distill_run(
    run_dir: Path, student_name: str, data: str, cfg: DistillConfig
) -> DistilledStudent:
    """Distil the run's final model into ``student_name`` on the public set ``data``."""
    teacher_dir = model_dir_of(run_dir)
    if teacher_dir != Path(run_dir) / RUN_MODEL_DIR:
        raise DistillError(f"{run_dir}: not a run folder (its model is {RUN_MODEL_DIR}/)")
    teacher, meta = load_exported(teacher_dir)
    if "quantization" in meta:
        raise DistillError(f"{teacher_dir}: a quantised model cannot teach; use the float model")
    task = str(meta.get("task") or _TASK_OF_MODEL.get(meta["model"]["name"], "unknown"))
    student_cfg = _student_config(student_name, task)
    public = load_public(data, meta, cfg)
    student = _build_student(student_cfg, meta, cfg.seed)
    losses = distill_student(teacher, student, public.distill, cfg)
    quality = _quality(teacher, student, public)
    record = {
        "student": student_name,
        "teacher_weights_sha256": meta.get("weights_sha256"),
        "privacy": PRIVACY_NOTE,
        "public_data": public.record(),
        "settings": cfg.model_dump(mode="json"),
        "epoch_losses": losses,
        **quality,
        "student_size": footprint(student, public.evaluate).as_dict(),
        "teacher_size": footprint(
            teacher, public.evaluate, size_bytes=bytes_on_disk(teacher_dir)
        ).as_dict(),
    }
    out_dir = Path(run_dir) / STUDENTS_DIR / student_name
    export_model(
        out_dir,
        student,
        model_cfg=student_cfg,
        input_shape=meta["input_shape"],
        num_classes=int(meta["num_classes"]),
        class_names=meta.get("class_names"),
        metrics={"test": {"accuracy": quality["student_accuracy"]}},
        extra={"task": task, "data": meta.get("data"), "distillation": record},
    )
    return DistilledStudent(out_dir, record)


def _student_config(name: str, task: str) -> ModelConfig:
    try:
        return student_config(name, task)
    except ModelError as err:
        raise DistillError(str(err)) from None


def _build_student(cfg: ModelConfig, meta: dict[str, Any], seed: int) -> nn.Module:
    return build_model(cfg, meta["input_shape"], int(meta["num_classes"]), seed=seed)


def _quality(teacher: nn.Module, student: nn.Module, public: PublicRows) -> dict[str, Any]:
    """Accuracy of both on the evaluation rows (if labelled) and how often they agree."""
    teacher_pred, _ = predict(teacher, public.evaluate)
    student_pred, _ = predict(student, public.evaluate)
    return {
        "student_accuracy": _accuracy(student_pred, public.eval_labels),
        "teacher_accuracy": _accuracy(teacher_pred, public.eval_labels),
        "agreement": float((student_pred == teacher_pred).float().mean()),
        "eval_rows": len(public.eval_rows),
    }


def _accuracy(predicted: Tensor, labels: Tensor | None) -> float | None:
    if labels is None:
        return None
    return float((predicted == labels.to(torch.int64)).float().mean())
