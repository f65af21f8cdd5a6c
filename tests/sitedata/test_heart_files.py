"""Four hospitals train on their own CSV files: a declared task, real files, real Flower.

The files come from the packaged heart data, split exactly as the packaged path splits it, then
written the way four hospital exports might differ: the columns in another order at each site,
a site-specific name for one column, a patient-id column declared an identifier, and missing
values written as ``?`` or left blank. A DP run from the files must reach the packaged path's
accuracy within seed noise, and no patient id may appear in any message, log or feature matrix.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmodel.config import SimSite
from fedmodel.data.heart import heart_task, write_heart_site_files
from fedmodel.data.local import site_splits_cached
from fedmodel.scenarios import apply_overrides, load_scenario
from tests.federation.helpers import run

ROUNDS = 5  # the scenario's own


def _rewrite_like_a_hospital(path: Path, index: int) -> None:
    """Shuffle columns, rename one, write missing cells as '?' (even sites) or blank (odd)."""
    frame = pd.read_csv(path)
    columns = list(frame.columns)
    random.Random(index).shuffle(columns)
    frame = frame[columns].rename(columns={"thalch": "max_heart_rate"})
    frame.to_csv(path, index=False, na_rep="?" if index % 2 == 0 else "")


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("hospitals")
    files = write_heart_site_files(folder)
    for index, (train, test) in enumerate(files.values()):
        _rewrite_like_a_hospital(train, index)
        _rewrite_like_a_hospital(test, index)
    return files


def _scenario(hospitals: dict[str, tuple[Path, Path]] | None):
    cfg = load_scenario("heart-hospitals")
    cfg = apply_overrides(cfg, {"federation.rounds": ROUNDS}, "test")
    if hospitals is None:
        return cfg
    sites = [
        SimSite(name=name, path=train, test_path=test, columns={"max_heart_rate": "thalch"})
        for name, (train, test) in hospitals.items()
    ]
    return cfg.model_copy(update={"task": heart_task(), "sites": sites})


@pytest.fixture(scope="module")
def runs(hospitals, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heart-runs")
    return {
        "files": run(_scenario(hospitals), root / "files"),
        "packaged": run(_scenario(None), root / "packaged"),
    }


def _accuracy(run_dir: Path) -> float:
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rounds if r["round"] == ROUNDS)["server"]["accuracy"]


@pytest.mark.slow  # four-hospital file runs (~40 s); make test keeps the image-folder run
def test_files_reach_the_packaged_accuracy(runs):
    files, packaged = _accuracy(runs["files"]), _accuracy(runs["packaged"])
    # 185 held-out patients: one seed's accuracy moves by about 0.035 (binomial sd), and the
    # packaged path's own seeds spread wider (0.62-0.75 seen at these settings). The declared
    # path must be no worse than the packaged one beyond that noise, and useful on its own.
    assert files > packaged - 0.1, (files, packaged)
    assert files > 0.6, (files, packaged)  # 0.65-0.76 seen over repeated runs


@pytest.mark.slow  # four-hospital file runs (~40 s); make test keeps the image-folder run
def test_no_patient_id_leaves_the_file(runs, hospitals):
    ids = [
        pid
        for train, test in hospitals.values()
        for pid in pd.concat([pd.read_csv(train), pd.read_csv(test)])["patient_id"]
    ]
    assert len(ids) > 900
    blobs = [p.read_bytes() for p in runs["files"].rglob("*") if p.is_file() and p.suffix != ".csv"]
    assert blobs
    for pid in ids[::7]:
        needle = pid.encode()
        assert not any(needle in blob for blob in blobs), pid


def test_the_feature_matrix_holds_no_identifier(hospitals):
    task = heart_task()
    for name, (train, test) in hospitals.items():
        site = SimSite(name=name, path=train, test_path=test, columns={"max_heart_rate": "thalch"})
        splits = site_splits_cached(task, site)
        x = splits.train.tensors[0].numpy()
        assert x.shape[1] == len(task.feature_names) and np.isfinite(x).all()
        assert not any("patient" in f for f in task.feature_names)


@pytest.mark.slow  # four-hospital file runs (~40 s); make test keeps the image-folder run
def test_the_report_states_the_task_and_what_each_site_fitted(runs, tmp_path):
    from fedmodel.report.build import build_report

    files = build_report(runs["files"], tmp_path / "report")
    report = json.loads(files.json.read_text())
    data = report["data"]
    assert data["title"].startswith("Data: a declared task")
    text = " ".join(data["bullets"])
    assert "patient_id" in text and "median of chol" in text
    assert "Data: a declared task" in files.html.read_text()
    packaged = build_report(runs["packaged"], tmp_path / "packaged")
    assert (
        "Packaged dataset 'heart'" in json.loads(packaged.json.read_text())["data"]["paragraphs"][0]
    )
