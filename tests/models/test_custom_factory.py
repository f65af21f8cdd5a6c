"""``model.name = "custom"``: a factory is imported only when its sources hash to the digest the
caller trusts; it must pass Opacus' validation (fixed when the task allows it)."""

from __future__ import annotations

import itertools
import os
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.config import ConfigError, ModelConfig, ScenarioConfig, parse_config
from fedmodel.models import ModelError, build_model
from fedmodel.models.custom import factory_digest, factory_source_files, load_factory

_COUNTER = itertools.count()

LINEAR = """
def make(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))
"""

BATCHNORM = """
def make(input_shape, num_classes):
    half = input_shape[0] // 2
    return nn.Sequential(
        nn.Unflatten(1, (2, half)), nn.BatchNorm1d(2), nn.Flatten(),
        nn.Linear(2 * half, num_classes),
    )
"""


def write_factory(root: Path, body: str = LINEAR, name: str | None = None) -> tuple[str, Path]:
    """A package ``<unique>/models.py`` under ``root`` whose import writes a marker file.

    Unique names keep every test clear of modules an earlier test left in ``sys.modules``.
    Returns the module's dotted name and the marker's path.
    """
    package = name or f"sitemodels_{os.getpid()}_{next(_COUNTER)}"
    marker = root / f"{package}.imported"
    folder = root / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "models.py").write_text(
        f"from pathlib import Path\nfrom torch import nn\n\nPath({str(marker)!r}).write_text('x')\n"
        + textwrap.dedent(body)
    )
    return f"{package}.models", marker


def custom(spec: str, **extra) -> ModelConfig:
    return ModelConfig(name="custom", factory=spec, **extra)


def test_listed_digest_builds_the_model(tmp_path, monkeypatch, dp_step):
    monkeypatch.syspath_prepend(str(tmp_path))
    module, marker = write_factory(tmp_path)
    spec = f"{module}:make"
    digest = factory_digest(spec)
    assert not marker.exists()  # hashing imports nothing
    model = build_model(custom(spec), (30,), 2, seed=0, factory_sha256=digest)
    assert marker.exists()
    assert isinstance(model[1], nn.Linear) and model[1].in_features == 30
    dp_step(model, torch.randn(8, 30), torch.randint(0, 2, (8,)))


def test_a_changed_module_is_refused_before_import(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module, marker = write_factory(tmp_path)
    spec = f"{module}:make"
    approved = factory_digest(spec)
    source = tmp_path / module.split(".")[0] / "models.py"
    source.write_text(source.read_text() + "\n# one more line\n")
    with pytest.raises(ModelError, match="source changed") as err:
        build_model(custom(spec), (30,), 2, factory_sha256=approved)
    assert "\n" not in str(err.value) and spec in str(err.value)
    assert not marker.exists()


def test_a_changed_parent_package_is_refused_before_import(tmp_path, monkeypatch):
    """``pkg/__init__.py`` runs on import too: it is part of what the site approved."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module, marker = write_factory(tmp_path)
    spec = f"{module}:make"
    approved = factory_digest(spec)
    init = tmp_path / module.split(".")[0] / "__init__.py"
    init.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('init')\n")
    with pytest.raises(ModelError, match="source changed"):
        load_factory(spec, approved)
    assert not marker.exists()


def test_a_module_imported_earlier_is_still_checked_on_disk(tmp_path, monkeypatch):
    """A cached module does not vouch for the file: the digest is read again on every load."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module, _ = write_factory(tmp_path)
    spec = f"{module}:make"
    approved = factory_digest(spec)
    assert callable(load_factory(spec, approved))
    source = tmp_path / module.split(".")[0] / "models.py"
    source.write_text(source.read_text().replace("num_classes))", "num_classes * 2))"))
    with pytest.raises(ModelError, match="source changed"):
        load_factory(spec, approved)
    with pytest.raises(ModelError, match="imported another version"):
        load_factory(spec, factory_digest(spec))  # approving the new file needs a fresh process


def test_digest_covers_parents_and_is_independent_of_location(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    module, _ = write_factory(tmp_path / "a", name="samepkg_location")
    spec = f"{module}:make"
    files = factory_source_files(spec)
    assert [p.relative_to(tmp_path / "a").as_posix() for p in files] == [
        "samepkg_location/__init__.py",
        "samepkg_location/models.py",
    ]
    first = factory_digest(spec)
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "samepkg_location").mkdir()
    for path in files:
        (tmp_path / "b" / "samepkg_location" / path.name).write_bytes(path.read_bytes())
    assert factory_source_files(spec)[0].is_relative_to(tmp_path / "b")
    assert factory_digest(spec) == first


def test_a_single_file_module_and_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"single_{os.getpid()}_{next(_COUNTER)}"
    (tmp_path / f"{name}.py").write_text("from torch import nn\n" + textwrap.dedent(LINEAR))
    assert factory_source_files(f"{name}:make") == [tmp_path / f"{name}.py"]
    with pytest.raises(ModelError, match="not found") as err:
        factory_digest(f"{name}_absent.models:make")
    assert "\n" not in str(err.value)


def test_batchnorm_is_refused_unless_the_task_allows_the_fix(tmp_path, monkeypatch, dp_step):
    monkeypatch.syspath_prepend(str(tmp_path))
    module, _ = write_factory(tmp_path, BATCHNORM)
    spec = f"{module}:make"
    digest = factory_digest(spec)
    with pytest.raises(ModelError, match=r"not trainable under DP-SGD.*fix_for_dp") as err:
        build_model(custom(spec), (30,), 2, factory_sha256=digest)
    assert "\n" not in str(err.value)
    model = build_model(custom(spec, fix_for_dp=True), (30,), 2, seed=0, factory_sha256=digest)
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    dp_step(model, torch.randn(8, 30), torch.randint(0, 2, (8,)))


def test_not_a_module_or_a_missing_function_is_one_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module, _ = write_factory(
        tmp_path,
        LINEAR + "\ndef numbers(input_shape, num_classes):\n    return [1, 2]\n"
        "\nNOT_CALLABLE = 3\n",
    )
    digest = factory_digest(f"{module}:make")
    cases = {
        "numbers": "returned list, not a torch.nn.Module",
        "absent": "has no 'absent'",
        "NOT_CALLABLE": "is not callable",
    }
    for function, message in cases.items():
        with pytest.raises(ModelError, match=message) as err:
            build_model(custom(f"{module}:{function}"), (30,), 2, factory_sha256=digest)
        assert "\n" not in str(err.value)


def test_model_hash_command_prints_the_digest(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module, marker = write_factory(tmp_path)
    spec = f"{module}:make"
    result = CliRunner().invoke(app, ["model", "hash", spec])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == factory_digest(spec)
    assert str(tmp_path / module.split(".")[0] / "models.py") in result.output
    assert f'"{spec}" = "{lines[0]}"' in result.output
    assert not marker.exists()

    bad = CliRunner().invoke(app, ["model", "hash", "no-colon-here"])
    assert bad.exit_code == 2
    assert len(bad.output.strip().splitlines()) == 1 and bad.output.startswith("error: ")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "custom"}, 'name "custom" needs model.factory'),
        ({"name": "cnn", "factory": "pkg.mod:make"}, 'need name "custom"'),
        ({"name": "custom", "factory": "pkg.mod"}, "model.factory"),
    ],
)
def test_config_errors_are_one_line(model, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(ScenarioConfig, {"model": model}, "t")
    assert "\n" not in str(err.value)
