"""Scenarios and app bundles for the deployment tests.

``small_scenario`` is a seconds-long DP-SGD run. ``bundle`` lays out a copy of the fedmodel app
(its three packages and pyproject.toml) that ``flwr run`` packs as a FAB, with the changes a
hostile or mismatched coordinator would make: another ``clientapp`` component, an extra package,
an edited module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedmodel.config import ScenarioConfig
from fedmodel.scenarios import apply_overrides
from server.deploy.submit import app_root

CLIENTAPP = 'clientapp = "clients.client_app:app"'
PACKAGES = ("fedmodel", "server", "clients", "simulations")


def small_scenario(dp: bool, sealed: bool = False, nodes: int = 2) -> ScenarioConfig:
    """Seconds-long: scikit-learn's breast-cancer table, a 16-unit MLP, fixed noise."""
    overrides = {
        "name": "deploy-dp" if dp else "deploy-nodp",
        "security.sealed_updates": sealed,
        "data.dataset": "breast-cancer",
        "model.name": "mlp",
        "model.hidden_sizes": [16],
        "optimizer.lr": 0.05,
        "dp.enabled": dp,
        "dp.noise_multiplier": 1.0,
        "train.batch_size": 32,
        "strategy.min_train_nodes": nodes,
        "federation.num_clients": nodes,
    }
    return apply_overrides(ScenarioConfig(), overrides, "test")


def bundle(
    dest: Path,
    *,
    clientapp: str | None = None,
    extra: dict[str, str] | None = None,
    edit: tuple[str, str] | None = None,
) -> Path:
    """A copy of the fedmodel app in ``dest``: ``clientapp`` replaces the component, ``extra``
    adds files (``path -> text``, packed into the FAB), ``edit`` appends text to one module."""
    src = app_root()
    for name in PACKAGES:
        shutil.copytree(src / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(src / ".gitignore", dest / ".gitignore")
    pyproject = (src / "pyproject.toml").read_text()
    assert CLIENTAPP in pyproject
    if clientapp is not None:
        pyproject = pyproject.replace(CLIENTAPP, f'clientapp = "{clientapp}"')
    for rel, text in (extra or {}).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
        top = rel.split("/", 1)[0]
        pyproject = pyproject.replace("fab-include = [", f'fab-include = ["{top}/**/*.py", ', 1)
    if edit is not None:
        rel, text = edit
        with open(dest / rel, "a", encoding="utf-8") as fh:
            fh.write(text)
    (dest / "pyproject.toml").write_text(pyproject)
    return dest


def rogue_clientapp(marker: Path) -> str:
    """A bundle's own ClientApp package: importing it is running the coordinator's code."""
    return (
        '"""Not the site\'s code: its import is the proof that it ran."""\n\n'
        "from pathlib import Path\n\n"
        "from flwr.clientapp import ClientApp\n\n"
        f'Path({str(marker)!r}).write_text("the bundle\'s own code ran on the site\\n")\n'
        "app = ClientApp()\n"
    )
