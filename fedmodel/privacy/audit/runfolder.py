"""Both privacy audits of one site of a finished run, written to ``RUN_DIR/privacy-audit.json``.

What is read, and from where:

* ``scenario.toml``: the run's data, partitioning, model, optimiser, training and DP settings.
* ``metrics.jsonl``: each round the site trained, as the server recorded it: the noise
  multiplier actually used (calibrated when the scenario named a target epsilon), sample rate,
  steps, clipping norm and delta - the mechanism the canary audit replays and the accountant's
  claim it tests.
* ``model/``: the final model, the one the federation released, for membership inference.
* the site's records: the rows its ClientApp trains on (``fedmodel.data.local``, the same code),
  and held-out rows of the dataset's test split, which no site trains on. This needs the data
  on this machine, as in a simulation; in a deployment a site runs it on its own rows.

Membership inference is cheap (one small reference model and a few forward passes); the canary
audit trains the site's model once more and is asked for with ``canaries``. Re-running keeps the
canary results already in the file for the same run, site and model, except one of the same kind
(configured noise or noise off), which the new one replaces.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fedmodel import __version__
from fedmodel.config import ConfigError, ScenarioConfig, load_toml
from fedmodel.data import DatasetSplits
from fedmodel.device import resolve_device
from fedmodel.io import atomic_write_json
from fedmodel.models import build_model
from fedmodel.privacy.audit import PRIVACY_AUDIT_FILE
from fedmodel.privacy.audit.bound import DEFAULT_CONFIDENCE
from fedmodel.privacy.audit.canary import (
    Mechanism,
    check_guess_plan,
    epochs_of,
    materialise,
    run_canary_audit,
)
from fedmodel.privacy.audit.errors import PrivacyAuditError
from fedmodel.privacy.audit.mia import DEFAULT_FPR, matched_rows, membership_inference
from fedmodel.runlog import METRICS_FILE, read_metrics
from fedmodel.training import load_exported, train

SCHEMA_VERSION = "1"
MECHANISM_KEYS = ("noise_multiplier", "sample_rate", "max_grad_norm", "delta")


@dataclass(frozen=True)
class AuditOptions:
    """What to audit. ``canaries=None`` runs membership inference only."""

    node: str | None = None  # default: the first site (by name) that trained
    canaries: int | None = None
    k_plus: int | None = None  # default: a fifth of the canaries
    k_minus: int = 0
    noise_off: bool = False
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE
    fpr: float = DEFAULT_FPR


@dataclass(frozen=True)
class Site:
    """One site as metrics.jsonl recorded it; ``mechanism`` is None when it trained without DP."""

    node: str
    partition_id: int
    rounds: list[int]
    mechanism: Mechanism | None
    epsilon_recorded: float | None


def audit_run(run_dir: Path, options: AuditOptions) -> dict[str, Any]:
    """Audit one site of ``run_dir`` and write ``privacy-audit.json`` (atomically); return it."""
    run_dir = Path(run_dir)
    if options.canaries is not None:
        check_guess_plan(options.canaries, _k_plus(options), options.k_minus)
    scenario = load_scenario(run_dir)
    info = _run_info(run_dir)
    site = find_site(_rounds(run_dir), scenario, options.node)
    final, _ = _final_model(run_dir)
    members, held_out, splits = _site_data(scenario, site)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generator": f"fedmodel {__version__}",
        "run_id": info.get("run_id"),
        "model_hash": info.get("model_hash"),
        "site": {
            "node": site.node,
            "partition_id": site.partition_id,
            "records": len(members),
            "rounds": site.rounds,
            "epsilon_recorded": site.epsilon_recorded,
        },
        "mechanism": _mechanism_record(site.mechanism),
        "membership_inference": _membership(
            scenario, site, final, members, held_out, splits, options
        ),
        "canary_audits": _kept_canaries(run_dir, info, site, options),
    }
    if options.canaries is not None:
        audit = _canary(scenario, site, members, splits, options)
        record["canary_audits"].append(audit)
    atomic_write_json(run_dir / PRIVACY_AUDIT_FILE, record)
    return record


# --- the run folder ---------------------------------------------------------------------------


def load_scenario(run_dir: Path) -> ScenarioConfig:
    if not run_dir.is_dir():
        raise PrivacyAuditError(f"{run_dir}: no such run folder")
    path = run_dir / "scenario.toml"
    if not path.is_file():
        raise PrivacyAuditError(f"{run_dir}: not a run folder (no scenario.toml)")
    return load_toml(ScenarioConfig, path)


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrivacyAuditError(f"{run_dir}: not a run folder (no run.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PrivacyAuditError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(info, dict):
        raise PrivacyAuditError(f"{path}: not a JSON object")
    if info.get("status") != "finished":
        raise PrivacyAuditError(
            f"{path}: run status is {info.get('status')!r}; audit a finished run"
        )
    return info


def _rounds(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / METRICS_FILE).is_file():
        raise PrivacyAuditError(f"{run_dir}: no {METRICS_FILE}")
    return read_metrics(run_dir)


def find_site(rounds: Sequence[dict[str, Any]], scenario: ScenarioConfig, node: str | None) -> Site:
    """The named site (default: the first by name that trained) and the mechanism it ran."""
    trained: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for row in rounds:
        for client in row.get("clients", []):
            if isinstance(client, dict) and client.get("status") == "ok":
                trained.setdefault(str(client.get("node")), []).append((row["round"], client))
    if not trained:
        raise PrivacyAuditError(f"{METRICS_FILE}: no site trained in this run")
    name = node if node is not None else sorted(trained)[0]
    if name not in trained:
        raise PrivacyAuditError(
            f"--node {name}: no such site trained in this run ({', '.join(sorted(trained))})"
        )
    rows = trained[name]
    last = rows[-1][1]
    try:
        partition_id = int(last["partition_id"])
    except (KeyError, TypeError, ValueError):
        raise PrivacyAuditError(f"{METRICS_FILE}: {name} has no partition_id") from None
    return Site(
        node=name,
        partition_id=partition_id,
        rounds=[rnd for rnd, _ in rows],
        mechanism=_mechanism(name, [c for _, c in rows], scenario),
        epsilon_recorded=_float(last.get("epsilon")),
    )


def _mechanism(
    node: str, clients: list[dict[str, Any]], scenario: ScenarioConfig
) -> Mechanism | None:
    """One noise level, rate, clipping norm and delta over every round, or no DP at all."""
    if not scenario.dp.enabled:
        return None
    try:
        settings = {tuple(float(c[k]) for k in MECHANISM_KEYS) for c in clients}
        steps = sum(int(c["steps"]) for c in clients)
    except (KeyError, TypeError, ValueError):
        raise PrivacyAuditError(f"{METRICS_FILE}: {node}'s rounds lack DP-SGD settings") from None
    if len(settings) != 1:
        raise PrivacyAuditError(
            f"{METRICS_FILE}: {node} changed noise, sampling rate, clipping or delta between "
            "rounds; the audit replays one mechanism"
        )
    noise, rate, clip, delta = settings.pop()
    if noise <= 0 or delta <= 0:
        return None
    return Mechanism(noise, rate, steps, clip, delta, scenario.dp.accountant, scenario.dp.clipping)


def _final_model(run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise PrivacyAuditError(f"{model_dir}: no final model (did the run finish?)")
    return load_exported(model_dir)


def _site_data(scenario: ScenarioConfig, site: Site) -> tuple[Dataset, Dataset, DatasetSplits]:
    """The site's training rows and the held-out rows, loaded as the ClientApp loads them."""
    from fedmodel.data.local import client_train_set, dataset_splits  # the node's own loader

    try:
        members = client_train_set(scenario, site.partition_id)
    except ValueError as err:  # a partition id the scenario does not have
        raise ConfigError(f"{site.node}: {err}") from None
    splits = dataset_splits(scenario)
    return members, splits.test, splits


# --- the two audits ---------------------------------------------------------------------------


def _membership(
    scenario: ScenarioConfig,
    site: Site,
    final: nn.Module,
    members: Dataset,
    held_out: Dataset,
    splits: DatasetSplits,
    options: AuditOptions,
) -> dict[str, Any]:
    """Loss and calibrated attacks on label-matched members and held-out rows.

    The held-out rows are split in two: one half trains the reference model, as the site
    trained (model, optimiser, DP-SGD noise, epochs); the other half supplies the non-members,
    drawn class by class to match the site's label mix (``matched_rows``).
    """
    started = time.perf_counter()
    rng = np.random.default_rng(options.seed)
    out_cols = materialise(held_out)
    order = torch.from_numpy(rng.permutation(out_cols[-1].shape[0]))
    half = order.shape[0] // 2
    reference_rows, pool = order[:half], order[half:]
    in_cols = materialise(members)
    member_idx, pool_idx = matched_rows(in_cols[-1].numpy(), out_cols[-1][pool].numpy(), rng)
    if member_idx.shape[0] < 2:
        raise PrivacyAuditError(
            f"{site.node}: too few label-matched rows for membership inference "
            f"({in_cols[-1].shape[0]} members, {pool.shape[0]} held-out)"
        )
    reference = _reference_model(scenario, site, [c[reference_rows] for c in out_cols], splits)
    non_member_idx = pool[torch.from_numpy(pool_idx)]
    result = membership_inference(
        final,
        reference,
        [c[torch.from_numpy(member_idx)] for c in in_cols],
        [c[non_member_idx] for c in out_cols],
        batch_size=scenario.train.eval_batch_size,
        device=resolve_device(scenario.train.device),
        fpr=options.fpr,
    )
    return {
        **result.as_dict(),
        "fpr": options.fpr,
        "matched_on": "label",
        "reference": {
            "rows": int(reference_rows.shape[0]),
            "source": "held-out rows (test split), disjoint from the attacked rows",
            "epochs": _site_epochs(scenario, site),
            "noise_multiplier": site.mechanism.noise_multiplier if site.mechanism else None,
        },
        "seed": options.seed,
        "seconds": time.perf_counter() - started,
    }


def _reference_model(
    scenario: ScenarioConfig, site: Site, columns: list[Tensor], splits: DatasetSplits
) -> nn.Module:
    model = fresh_model(scenario, splits, scenario.train.seed + 1)
    dp = scenario.dp
    if site.mechanism is None:
        dp = dp.model_copy(update={"enabled": False})
    else:  # RDP: the reference's own epsilon is never reported, and RDP is instant
        m = site.mechanism
        dp = dp.model_copy(
            update={"noise_multiplier": m.noise_multiplier, "target_epsilon": None,
                    "max_grad_norm": m.max_grad_norm, "accountant": "rdp"}
        )  # fmt: skip
    train(
        model,
        TensorDataset(*columns),
        train_cfg=scenario.train.model_copy(update={"epochs": _site_epochs(scenario, site)}),
        optim_cfg=scenario.optimizer,
        dp_cfg=dp,
    )
    return model


def _canary(
    scenario: ScenarioConfig,
    site: Site,
    members: Dataset,
    splits: DatasetSplits,
    options: AuditOptions,
) -> dict[str, Any]:
    if site.mechanism is None:
        raise PrivacyAuditError(
            f"{site.node} trained without DP-SGD: there is no accounted epsilon for a canary "
            "audit to test (use --mia-only)"
        )
    audit = run_canary_audit(
        fresh_model(scenario, splits, scenario.train.seed),
        members,
        site.mechanism,
        num_classes=splits.num_classes,
        train_cfg=scenario.train,
        optim_cfg=scenario.optimizer,
        dp_cfg=scenario.dp,
        canaries=int(options.canaries or 0),
        k_plus=_k_plus(options),
        k_minus=options.k_minus,
        seed=options.seed,
        noise_off=options.noise_off,
        confidence=options.confidence,
    )
    return audit.as_dict()


def _k_plus(options: AuditOptions) -> int:
    """Default: guess "in" for the top fifth, well inside the members Poisson sampling picks."""
    if options.k_plus is not None:
        return options.k_plus
    return int(options.canaries or 0) // 5


def fresh_model(scenario: ScenarioConfig, splits: DatasetSplits, seed: int) -> nn.Module:
    """An untrained model of the run's architecture (seeded; the caller's RNG untouched)."""
    model = scenario.model
    return build_model(
        model,
        splits.input_shape,
        splits.num_classes,
        seed=seed,
        factory_sha256=model.factory_sha256,
    )


def _site_epochs(scenario: ScenarioConfig, site: Site) -> int:
    if site.mechanism is not None:
        return epochs_of(site.mechanism)
    return scenario.train.epochs * len(site.rounds)


def _mechanism_record(mechanism: Mechanism | None) -> dict[str, Any] | None:
    if mechanism is None:
        return None
    return {
        "kind": "dp-sgd/poisson-gaussian",
        "noise_multiplier": mechanism.noise_multiplier,
        "sample_rate": mechanism.sample_rate,
        "steps": mechanism.steps,
        "max_grad_norm": mechanism.max_grad_norm,
        "delta": mechanism.delta,
        "accountant": mechanism.accountant,
        "clipping": mechanism.clipping,
        "epsilon_accounted": mechanism.epsilon(),
    }


def _kept_canaries(
    run_dir: Path, info: dict[str, Any], site: Site, options: AuditOptions
) -> list[dict[str, Any]]:
    """Canary results of an earlier audit of this run, site and model that this one keeps."""
    try:
        previous = json.loads((run_dir / PRIVACY_AUDIT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    if not isinstance(previous, dict) or (
        previous.get("run_id"),
        previous.get("model_hash"),
        (previous.get("site") or {}).get("node"),
    ) != (info.get("run_id"), info.get("model_hash"), site.node):
        return []
    kept = [a for a in previous.get("canary_audits") or [] if isinstance(a, dict)]
    if options.canaries is None:
        return kept
    return [a for a in kept if bool(a.get("noise_off")) != options.noise_off]


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
