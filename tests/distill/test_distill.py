"""``fedmodel distill``: a smaller student from the teacher's soft labels, on public rows only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fedmodel.distill import DistillConfig, load_public
from fedmodel.distill.public import rows_sha256
from fedmodel.models import ModelError
from fedmodel.models.registry import student_config
from fedmodel.report.students import read_students
from fedmodel.report.view import students_table
from fedmodel.training.export import load_exported
from tests.distill.conftest import invoke, one_error_line
from tests.distill.teacher import image_digests

LIMIT, EPOCHS = 600, 10


@pytest.fixture(scope="module")
def distilled(teacher) -> dict:
    result = invoke(
        "distill", str(teacher.run_dir), "--student", "cnn-small", "--data", "mnist-test",
        "--limit", str(LIMIT), "--epochs", str(EPOCHS), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_student_is_smaller_and_its_accuracy_is_recorded(teacher, distilled):
    student, meta = load_exported(teacher.run_dir / "students" / "cnn-small")
    record = meta["distillation"]
    assert record == distilled
    assert 0.5 < record["student_accuracy"] <= 1 and 0.5 < record["teacher_accuracy"] <= 1
    assert record["student_size"]["parameters"] * 4 <= record["teacher_size"]["parameters"]
    assert record["student_size"]["bytes_on_disk"] < record["teacher_size"]["bytes_on_disk"]
    assert record["teacher_weights_sha256"] == teacher.model_hash
    assert "no privacy spent" in record["privacy"]
    assert sum(p.numel() for p in student.parameters()) == record["student_size"]["parameters"]


def test_student_learns_from_public_rows_only(teacher, distilled):
    """The distillation rows are MNIST test rows, none a site's, none evaluated on."""
    data = distilled["public_data"]
    assert data["source"] == "mnist-test" and not data["labels_used_for_training"]
    cfg = DistillConfig(**distilled["settings"])
    meta = {"class_names": [str(d) for d in range(10)], "input_shape": [1, 28, 28]}
    public = load_public("mnist-test", meta, cfg)
    assert rows_sha256(public.distill_rows) == data["distill_rows_sha256"]
    assert rows_sha256(public.eval_rows) == data["eval_rows_sha256"]
    assert not set(public.distill_rows.tolist()) & set(public.eval_rows.tolist())
    assert not image_digests(public.distill[0]) & image_digests(teacher.site_images)
    assert not image_digests(public.distill[0]) & image_digests(public.evaluate[0])


def test_report_lists_the_student(teacher, distilled):
    students, warnings = read_students(teacher.run_dir, teacher.model_hash)
    assert warnings == [] and [s.name for s in students] == ["cnn-small"]
    assert students[0].accuracy == distilled["student_accuracy"] and students[0].matches_model
    report = type("R", (), {"students": students})()
    row = students_table(report).rows[0]
    assert row[0] == "cnn-small (cnn)" and row[3] == (
        f"{students[0].parameters:,} / {students[0].teacher_parameters:,}"
    )


def test_unlabelled_file_reports_agreement_only(teacher, tmp_path):
    rows = tmp_path / "public.npy"
    np.save(rows, torch.rand(40, 1, 28, 28).numpy())
    run_dir = shutil.copytree(teacher.run_dir, tmp_path / "run")  # keep the shared student
    result = invoke(
        "distill", str(run_dir), "--student", "cnn-small", "--data", str(rows),
        "--epochs", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["student_accuracy"] is None and 0 <= record["agreement"] <= 1
    assert record["public_data"]["distill_rows"] + record["eval_rows"] == 40


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-model", "no exported model"),
        ("unknown-student", "unknown student 'cnn-huge'"),
        ("wrong-kind", "needs a teacher on tabular inputs"),
        ("unreadable", "not a plain .npy array"),
        ("no-such-data", "neither a public set"),
        ("bad-epochs", "--epochs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(teacher, tmp_path, case, message):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array")
    run, student, data, extra = str(teacher.run_dir), "cnn-small", "mnist-test", []
    if case == "no-model":
        run = str(tmp_path)
    elif case == "unknown-student":
        student = "cnn-huge"
    elif case == "wrong-kind":
        student = "mlp-small"
    elif case == "unreadable":
        data = str(garbage)
    elif case == "no-such-data":
        data = str(tmp_path / "missing.npy")
    else:
        extra = ["--epochs", "0"]
    one_error_line(invoke("distill", run, "--student", student, "--data", data, *extra), message)
    assert not (teacher.run_dir / "students" / "cnn-huge").exists()


def test_students_are_registered_per_input_kind():
    assert student_config("cnn-small", "image").cnn_channels == [4, 8]
    assert student_config("mlp-small", "tabular").hidden_sizes == [16]
    text = student_config("minilm-2l", "text")
    assert (text.name, text.bert_layers, text.bert_trainable) == (
        "minilm",
        2,
        "all-but-embeddings",
    )
    with pytest.raises(ModelError, match="needs a teacher on text inputs"):
        student_config("minilm-2l", "image")
