"""Students distilled from the run's final model (``RUN_DIR/students/*/model.json``).

``fedmodel distill`` writes them; the report only reads their ``distillation`` records. A
student is evidence about what the run's model can be compressed to, not a privacy record: an
unreadable one is a warning, one taught by another model is shown and flagged, and neither
stops the report. Distillation is post-processing of the DP model, so it adds no spend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmodel.report.model import StudentModel

STUDENTS_DIR = "students"


def read_students(run_dir: Path, model_hash: str | None) -> tuple[list[StudentModel], list[str]]:
    """The students found (sorted by name) and a warning for each that cannot be shown."""
    root = Path(run_dir) / STUDENTS_DIR
    if not root.is_dir():
        return [], []
    students, warnings = [], []
    for sidecar in sorted(root.glob("*/model.json")):
        name = sidecar.parent.name
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            if "quantization" in meta:  # an int8 copy of a student: the student is listed
                continue
            students.append(_student(name, meta, model_hash))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            warnings.append(f"{STUDENTS_DIR}/{name}: unreadable distillation record ({err!r})")
            continue
        if not students[-1].matches_model:
            warnings.append(f"{STUDENTS_DIR}/{name} was distilled from another model")
    return students, warnings


def _student(name: str, meta: dict[str, Any], model_hash: str | None) -> StudentModel:
    record = meta["distillation"]
    s, t, data = record["student_size"], record["teacher_size"], record["public_data"]
    return StudentModel(
        name=name,
        architecture=str(meta["model"]["name"]),
        public_data=str(data["description"]),
        distill_rows=int(data["distill_rows"]),
        eval_rows=int(data["eval_rows"]),
        accuracy=record["student_accuracy"],
        teacher_accuracy=record["teacher_accuracy"],
        agreement=float(record["agreement"]),
        parameters=int(s["parameters"]),
        teacher_parameters=int(t["parameters"]),
        bytes_on_disk=int(s["bytes_on_disk"]),
        teacher_bytes_on_disk=int(t["bytes_on_disk"]),
        ms_per_batch=float(s["ms_per_batch"]),
        teacher_ms_per_batch=float(t["ms_per_batch"]),
        batch_size=int(s["batch_size"]),
        matches_model=model_hash is not None and record["teacher_weights_sha256"] == model_hash,
        privacy=str(record["privacy"]),
    )
