"""Find, load and override scenario files (``simulations/*.toml``).

A scenario is named by a built-in name (``mnist-cnn``) or a path to a TOML file. Command-line
overrides are applied to the validated model and re-validated, so ``--clients 0`` fails with the
same one-line error as a bad file would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedmodel.config import ConfigError, ScenarioConfig, load_toml, parse_config

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "simulations"


def builtin_scenarios() -> dict[str, Path]:
    """Scenario files shipped in ``simulations/``, by name (file stem)."""
    if not SCENARIO_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.toml"))}


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    builtins = builtin_scenarios()
    if str(name_or_path) in builtins:
        return builtins[str(name_or_path)]
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = ", ".join(builtins) or "none found"
    raise ConfigError(f"scenario {name_or_path!r}: not a file and not a built-in ({known})")


def load_scenario(name_or_path: str | Path) -> ScenarioConfig:
    """A scenario file; its sites' relative paths are relative to the file, not the cwd."""
    path = resolve_scenario_path(name_or_path)
    cfg = load_toml(ScenarioConfig, path)
    if not cfg.sites:
        return cfg
    sites = [site.resolved(path.parent.absolute()) for site in cfg.sites]
    return cfg.model_copy(update={"sites": sites})


def apply_overrides(
    cfg: ScenarioConfig, overrides: dict[str, Any], source: str, clear: tuple[str, ...] = ()
) -> ScenarioConfig:
    """Apply dotted-key overrides (``federation.rounds``), skipping ``None`` values, unset the
    ``clear`` keys, and re-validate the whole scenario so a bad value names its field."""
    data = cfg.model_dump(mode="json")
    for dotted, value in [*((k, v) for k, v in overrides.items() if v is not None),
                          *((k, None) for k in clear)]:  # fmt: skip
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(ScenarioConfig, data, source)


def tiny_tabular(
    name: str, nodes: int, source: str, overrides: dict[str, Any] | None = None
) -> ScenarioConfig:
    """A seconds-long DP scenario: scikit-learn's bundled breast-cancer table, a 16-unit MLP,
    fixed noise 1.0, every one of ``nodes`` nodes in every round.

    The one small workload shared by tests and the deployment benchmark, where what the
    federation runtime does should dominate, not the training. ``overrides`` are dotted keys
    applied on top, as in :func:`apply_overrides`.
    """
    return apply_overrides(
        ScenarioConfig(),
        {
            "name": name,
            "data.dataset": "breast-cancer",
            "model.name": "mlp",
            "model.hidden_sizes": [16],
            "optimizer.lr": 0.4,
            "dp.noise_multiplier": 1.0,
            "train.batch_size": 32,
            "strategy.min_train_nodes": nodes,
            "federation.num_clients": nodes,
            **(overrides or {}),
        },
        source,
    )


def scenario_to_toml(cfg: ScenarioConfig) -> str:
    """Serialise a resolved scenario so a run folder can be reloaded (``--resume``)."""
    return _dump_toml(cfg.model_dump(mode="json", exclude_none=True))


def _dump_toml(data: dict[str, Any]) -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for name, table in tables.items():
        lines.extend(_dump_table(name, table))
    return "\n".join(lines) + "\n"


def _dump_table(name: str, table: dict[str, Any]) -> list[str]:
    lines = ["", f"[{name}]"]
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
    for key, sub in nested.items():
        lines.extend(_dump_table(f'{name}."{key}"', sub))
    return lines


def _toml_key(key: str) -> str:
    """A bare key where TOML allows one, else quoted (``"pkg.mod:make" = ...`` in a policy)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # inline table: a list of tables ([[sites]]) or one inside it
        return (
            "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
        )
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")
