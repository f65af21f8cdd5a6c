"""Rotten Tomatoes as CSV files at three sites, trained with MiniLM: a declared text task.

Each site's export names its columns its own way (one calls the text ``review_text``) and keeps
a review id, declared an identifier: never read. The federated DP run from the files must
complete at every site with the packaged MiniLM (offline), and the run folder must hold no id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmodel.config import SimSite
from fedmodel.data.rotten_tomatoes import RT_CLASSES, load_rotten_tomatoes
from fedmodel.data.site import check_site
from fedmodel.runlog import read_metrics
from fedmodel.scenarios import apply_overrides, load_scenario
from fedmodel.task import TaskConfig
from tests.federation.helpers import run

PER_SITE = 160
TEST_PER_SITE = 40
TASK = TaskConfig(
    name="reviews",
    kind="text",
    label="sentiment",
    classes=list(RT_CLASSES),
    identifiers=["review_id"],
    text_column="review",
    max_length=32,
)


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[SimSite]:
    folder = tmp_path_factory.mktemp("reviews")
    texts, labels = load_rotten_tomatoes()
    rows = np.random.default_rng(0).permutation(len(texts))
    out = []
    for k in range(3):
        name = f"cinema-{k}"
        paths = []
        for kind, size, offset in (("train", PER_SITE, 0), ("test", TEST_PER_SITE, PER_SITE)):
            start = k * (PER_SITE + TEST_PER_SITE) + offset
            chosen = rows[start : start + size]
            frame = pd.DataFrame(
                {
                    "review_id": [f"{name}-rev-{i:06d}" for i in range(size)],
                    "sentiment": [RT_CLASSES[int(y)] for y in labels[chosen]],
                    "review_text" if k == 1 else "review": list(texts[chosen]),
                }
            )
            path = folder / f"{name}-{kind}.csv"
            frame.to_csv(path, index=False)
            paths.append(path)
        columns = {"review_text": "review"} if k == 1 else {}
        out.append(SimSite(name=name, path=paths[0], test_path=paths[1], columns=columns))
    return out


@pytest.fixture(scope="module")
def run_dir(sites, tmp_path_factory) -> Path:
    cfg = load_scenario("text-minilm")
    cfg = apply_overrides(
        cfg,
        {"federation.num_clients": 3, "strategy.min_train_nodes": 3, "federation.rounds": 1,
         "evaluation.server": "oracle"},
        "test",
    )  # fmt: skip
    cfg = cfg.model_copy(update={"task": TASK, "sites": sites})
    return run(cfg, tmp_path_factory.mktemp("text-run") / "run")


def test_each_site_checks_its_own_file(sites):
    for site in sites:
        result = check_site(TASK, site)
        assert result.problems == [] and result.rows == {"train": PER_SITE, "test": TEST_PER_SITE}


@pytest.mark.slow  # a MiniLM federation: make test-all; the file checks below stay in make test
def test_three_sites_train_minilm_on_their_csv(run_dir):
    final = read_metrics(run_dir)[-1]
    assert final["round"] == 1
    statuses = [c["status"] for c in final["clients"]]
    assert statuses == ["ok"] * 3, final["clients"]
    assert 0.0 <= final["server"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_no_review_id_leaves_a_site(run_dir):
    blobs = [p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".csv"]
    assert blobs and not any(b"-rev-0" in blob for blob in blobs)


def test_a_missing_text_is_one_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("review_id,sentiment,review\nr1,fresh,good film\nr2,rotten,\n")
    problems = check_site(TASK, SimSite(name="x", path=path, test_fraction=0.5)).problems
    assert [p.line() for p in problems] == [f"{path}, column 'review', row 2: missing text"]
