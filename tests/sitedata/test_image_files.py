"""Two sites train on their own image folders: a declared image task, real PNG files, real
Flower, DP-SGD.

The files are MNIST digits written by the test as ``<class>/<n>.png`` folders (600 training and
200 test images per site). A DP run from the folders must learn; the same digits written as
32x32 RGB images and declared 3x28x28 must be resized into the declared shape; and every kind
of bad folder is one line naming the file (exit 2, nothing written), or in a run a signed
refusal that names no file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.config import ScenarioConfig, SimSite
from fedmodel.data import dataset_labels
from fedmodel.data.errors import SiteDataError
from fedmodel.data.local import coordinator_splits
from fedmodel.data.mnist import load_mnist_arrays
from fedmodel.data.site import check_site, site_splits
from fedmodel.data.site_images import ImageFolderDataset, image_tensor
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import _dump_toml, apply_overrides
from fedmodel.task import ImageSpec, SiteFiles, TaskConfig
from server import wire
from tests.federation.helpers import run, small_mnist
from tests.nodebench import NodeBench, reply_kind

runner = CliRunner()
DIGITS = [str(d) for d in range(10)]
TRAIN, TEST = 600, 200  # images per site
ROUNDS = 3


def _task(channels: int = 1, size: int = 28, resize: str = "stretch") -> TaskConfig:
    spec = {"channels": channels, "height": size, "width": size, "resize": resize}
    return TaskConfig.model_validate(
        {"name": "digits", "kind": "image", "classes": DIGITS, "image": spec}
    )


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, mode: str = "L") -> Path:
    """``root/<digit>/<n>.png``; ``mode`` "RGB" writes 32x32 colour copies (resize needed)."""
    for n, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        image = Image.fromarray(pixels)
        if mode == "RGB":
            image = image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{n:05d}.png")
    return root


def _uint8(x: np.ndarray) -> np.ndarray:
    """The packaged float [0, 1] (N, 1, 28, 28) digits as the 8-bit pixels of a PNG."""
    return np.round(x[:, 0] * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def digits():
    a = load_mnist_arrays()
    n, m = 2 * TRAIN, 2 * TEST
    return _uint8(a.x_train[:n]), a.y_train[:n], _uint8(a.x_test[:m]), a.y_test[:m]


@pytest.fixture(scope="module")
def sites(digits, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two sites, each with its own disjoint training and test digits."""
    x_train, y_train, x_test, y_test = digits
    root = tmp_path_factory.mktemp("image-sites")
    out = {}
    for k, name in enumerate(["site-a", "site-b"]):
        tr, te = slice(k * TRAIN, (k + 1) * TRAIN), slice(k * TEST, (k + 1) * TEST)
        out[name] = (
            write_folder(root / name / "train", x_train[tr], y_train[tr]),
            write_folder(root / name / "test", x_test[te], y_test[te]),
        )
    return out


def _scenario(task: TaskConfig, sites: dict[str, tuple[Path, Path]], rounds: int = ROUNDS):
    # 600 images a site at noise 1.0 spend more per round than 1,000: a cap that lets 3 rounds run
    overrides = {"evaluation.server": "oracle", "budget.epsilon": 8.0, "optimizer.lr": 0.3}
    cfg = small_mnist(rounds=rounds, clients=len(sites), **overrides)
    folders = [SimSite(name=n, path=tr, test_path=te) for n, (tr, te) in sites.items()]
    data = cfg.model_dump(mode="json") | {"task": task.model_dump(mode="json")}
    data["sites"] = [s.model_dump(mode="json") for s in folders]
    return ScenarioConfig.model_validate(data)


def _accuracies(run_dir: Path) -> list[float]:
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["server"]["accuracy"] for r in rounds if r.get("server")]


def test_the_lazy_dataset_reads_the_declared_shape_and_scale(sites):
    train, test = sites["site-a"]
    splits = site_splits(_task(), SiteFiles(path=train, test_path=test))
    assert isinstance(splits.train, ImageFolderDataset) and len(splits.train) == TRAIN
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # black background is -1
    assert np.bincount(dataset_labels(splits.test), minlength=10).sum() == TEST


def test_a_held_out_fraction_is_stratified_and_seeded(sites):
    train, _ = sites["site-a"]
    files = SiteFiles(path=train, test_fraction=0.25, seed=3)
    first, again = site_splits(_task(), files), site_splits(_task(), files)
    assert len(first.test) == TRAIN // 4 and len(first.train) == TRAIN - TRAIN // 4
    assert first.test.files == again.test.files  # type: ignore[attr-defined]
    assert not set(first.test.files) & set(first.train.files)  # type: ignore[attr-defined]
    everyone = np.bincount(dataset_labels(first.train), minlength=10) + np.bincount(
        dataset_labels(first.test), minlength=10
    )
    share = np.bincount(dataset_labels(first.test), minlength=10) / np.maximum(everyone, 1)
    assert np.all(np.abs(share[everyone > 8] - 0.25) < 0.1)


@pytest.mark.parametrize("resize", ["stretch", "fit", "crop"])
def test_each_resize_rule_gives_the_declared_size(resize):
    wide = Image.new("L", (40, 20), 255)  # white, 2:1
    x = image_tensor(wide, ImageSpec(channels=1, height=10, width=10, resize=resize))
    assert x.shape == (1, 10, 10)
    if resize == "fit":  # keeps the aspect ratio: black bars above and below
        assert x[0, 0].max() == -1 and x[0, 5].min() == 1
    else:
        assert x.min() == 1


def test_a_federated_dp_run_from_image_folders_learns(sites, tmp_path):
    run_dir = run(_scenario(_task(), sites), tmp_path / "run")
    accuracy = _accuracies(run_dir)
    print("accuracy by round", accuracy)
    # 10 classes, chance 0.1; measured 0.515 and 0.54 after 3 rounds (0.07 before training).
    assert accuracy[-1] > 0.35, accuracy
    info = json.loads((run_dir / "run.json").read_text())
    assert "oracle" in json.dumps(info.get("evaluation", {}))


@pytest.mark.slow  # a second image-folder run (~16 s)
def test_colour_images_are_resized_into_a_three_channel_task(digits, tmp_path):
    x_train, y_train, x_test, y_test = digits
    site = {
        "rgb": (
            write_folder(tmp_path / "train", x_train[:200], y_train[:200], mode="RGB"),
            write_folder(tmp_path / "test", x_test[:60], y_test[:60], mode="RGB"),
        )
    }
    task = _task(channels=3, size=28, resize="crop")
    splits = site_splits(task, SiteFiles(path=site["rgb"][0], test_path=site["rgb"][1]))
    x, _ = splits.train[5]
    assert x.shape == (3, 28, 28) and torch.equal(x[0], x[1])  # gray digits, three channels
    oracle = coordinator_splits(_scenario(task, site, rounds=1), oracle=True)
    assert len(oracle.test) == 60 and oracle.test[59][0].shape == (3, 28, 28)
    counts = np.bincount(dataset_labels(oracle.test), minlength=10)
    assert np.array_equal(counts, np.bincount(y_test[:60], minlength=10))
    run_dir = run(_scenario(task, site, rounds=1), tmp_path / "run")
    assert len(_accuracies(run_dir)) == 2  # round 0 and round 1, evaluated on the folder


# ---------------------------------------------------------------------------- bad folders


def _good(root: Path, digits, n: int = 20) -> Path:
    x_train, y_train, *_ = digits
    return write_folder(root, x_train[:n], y_train[:n])


def _unreadable(root: Path) -> Path:
    bad = root / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return bad


def _cmyk(root: Path) -> Path:
    bad = root / "4" / "print.jpg"
    Image.new("CMYK", (28, 28)).save(bad)
    return bad


def _stranger(root: Path) -> Path:
    folder = root / "cat"
    folder.mkdir()
    Image.new("L", (28, 28)).save(folder / "0.png")
    return folder


def _stray(root: Path) -> Path:
    bad = root / "loose.png"
    Image.new("L", (28, 28)).save(bad)
    return bad


def _colour(root: Path) -> Path:
    bad = root / "5" / "colour.png"
    Image.new("RGB", (28, 28)).save(bad)
    return bad


# (what is wrong, how to break a good folder, what the line says, channels of the task)
BAD = [
    ("unreadable image", _unreadable, "not a readable image", 1),
    ("CMYK image", _cmyk, "image mode CMYK is not supported", 1),
    ("class folder outside the classes", _stranger, "class folder not in the task's classes", 1),
    ("image outside the class folders", _stray, "file outside the class folders", 1),
    ("colour image in a gray task", _colour, "colour image (mode RGB) in a 1-channel task", 1),
    ("gray image in a colour task", None, "grayscale image (mode L) in a 3-channel task", 3),
]


def _node(folder: Path, data: Path) -> Path:
    node = folder / "node.toml"
    node.write_text(_dump_toml({"name": "lab-a", "data": {"path": str(data)}}))
    return node


def _task_file(folder: Path, task: TaskConfig) -> Path:
    path = folder / "task.toml"
    path.write_text(_dump_toml({"task": task.model_dump(mode="json", exclude_none=True)}))
    return path


def _check(node: Path, task: Path):
    return runner.invoke(app, ["data", "check", "--config", str(node), "--task", str(task)])


def test_a_good_folder_passes_the_check_with_counts_per_class(digits, tmp_path):
    root = _good(tmp_path / "images", digits)
    result = _check(_node(tmp_path, root), _task_file(tmp_path, _task()))
    assert result.exit_code == 0, result.output
    assert "match task 'digits'" in " ".join(result.output.split())  # rich wraps long paths
    assert "images" in result.output
    check = check_site(_task(), SiteFiles(path=root))
    assert check.rows == {"train": 20} and check.problems == []
    assert check.label_counts["train"] == np.bincount(digits[1][:20], minlength=10).tolist()


@pytest.mark.parametrize(("what", "breaker", "says", "channels"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_folder_is_one_line_naming_the_file(
    digits, tmp_path, what, breaker, says, channels
):
    root = _good(tmp_path / "images", digits, n=8 if channels == 3 else 20)
    culprit = breaker(root) if breaker is not None else root / "0" / "00001.png"
    node, task = _node(tmp_path, root), _task_file(tmp_path, _task(channels=channels))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = _check(node, task)
    assert result.exit_code == 2, (what, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, (what, lines)
    assert lines[0].startswith(f"error: {culprit}: "), lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # the check writes nothing


def test_an_empty_folder_and_a_missing_one(tmp_path):
    (tmp_path / "images" / "7").mkdir(parents=True)
    task = _task_file(tmp_path, _task())
    result = _check(_node(tmp_path, tmp_path / "images"), task)
    assert result.exit_code == 2 and "no images in the class folders" in result.output
    result = _check(_node(tmp_path, tmp_path / "gone"), task)
    assert result.exit_code == 2 and "no such folder" in result.output


def test_every_kind_of_problem_is_listed_once(digits, tmp_path):
    root = _good(tmp_path / "images", digits)
    _unreadable(root), _cmyk(root), _stray(root)
    (root / "3" / "broken2.png").write_bytes(b"junk")  # a second unreadable file: not listed
    result = _check(_node(tmp_path, root), _task_file(tmp_path, _task()))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 3, lines


def test_a_file_that_breaks_after_the_check_is_named_not_traced(digits, tmp_path):
    root = _good(tmp_path / "images", digits)
    splits = site_splits(_task(), SiteFiles(path=root, test_fraction=0.25))
    victim = splits.train.files[0]  # type: ignore[attr-defined]
    victim.write_bytes(b"gone bad")
    with pytest.raises(SiteDataError, match="unreadable image"):
        splits.train[0]


def test_in_a_run_a_bad_folder_is_a_signed_refusal_naming_no_file(digits, tmp_path):
    task = _task()
    few_rows = {"dp.noise_multiplier": 4.0}  # 60 training images: within the node's cap
    scenario = small_mnist(rounds=1, clients=1, **few_rows).model_copy(update={"task": task})
    scenario = apply_overrides(scenario, {"security.sealed_updates": True}, "t")
    bench = NodeBench.create(tmp_path, scenario, input_shape=task.input_shape, num_classes=10)
    root = _good(tmp_path / "images", digits, n=80)
    bad = _cmyk(root)
    node_file = bench.node_file(0)
    cfg = tomllib.loads(node_file.read_text())
    cfg["data"] = {"path": str(root), "test_fraction": 0.25}
    node_file.write_text(_dump_toml(cfg))
    reply = bench.run(bench.request("run-bad", 1))
    assert reply_kind(reply) == "refusal"
    reason = reply[wire.REFUSAL]["reason"]
    assert reason.startswith("site data does not match task 'digits'"), reason
    assert str(tmp_path) not in reason and "print.jpg" not in reason and "CMYK" not in reason
    assert bench.spends() == []
    ledger = verify_ledger(bench.nodes / "node-0" / "ledger")
    assert ledger.ok and ledger.entries[-1].kind == "refusal"

    bad.unlink()  # the site removes the file
    reply = bench.run(bench.request("run-good", 1))
    assert reply_kind(reply) == "update", reply.get(wire.REFUSAL, {}).get("reason")
