"""A small, realistic run folder built the way a simulation writes one, for the report tests.

Three hospitals train for three rounds with DP-SGD (noise 1.1, clip 1.0, delta 1e-5, batch 64).
Each has its own signed ledger (the real ``Ledger`` class, a fresh Ed25519 key per node) and
``node.toml``; every spend goes through the node's own door (:mod:`fedmodel.privacy.spend`:
the cap and policy signed first, then the reservation and its commit), so node-2, whose cap of
3.8 is below what a third round would cost, refuses round 3 exactly as a node would. metrics.jsonl
carries what a node's reply carries (no loss or example count unless released), with the
epsilon each ledger entry recorded, so server and site records agree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmodel.config import PrivacyBudget
from fedmodel.crypto.keys import generate_signing_key, save_signing_key
from fedmodel.io import atomic_write_json, atomic_write_text
from fedmodel.node_config import SitePolicy
from fedmodel.privacy.ledger import NO_DP, Ledger
from fedmodel.privacy.spend import Denied, SiteRules, SpendPlan, commit, reserve

RUN_ID = "run-20250314-hospitals"
NOISE, CLIP, DELTA, BATCH, ROUNDS = 1.1, 1.0, 1e-5, 64, 3


@dataclass(frozen=True)
class Site:
    """One hospital: ``policy`` overrides its SitePolicy defaults, ``delta`` the run's delta
    at this site, ``no_dp_rounds`` the rounds its policy lets train without noise, and
    ``cap_from`` the first round its operator has set the cap by (none before)."""

    node: str
    records: int
    cap: float | None
    delta: float = DELTA
    policy: dict[str, Any] = field(default_factory=dict)
    no_dp_rounds: tuple[int, ...] = ()
    cap_from: int = 1

    def rules(self, rnd: int) -> SiteRules:
        """What the site's node.toml says in round ``rnd``; the door signs it when it changes."""
        capped = self.cap is not None and rnd >= self.cap_from
        cap = PrivacyBudget(epsilon=self.cap, delta=DELTA) if capped else None
        policy = SitePolicy(**self.policy).model_dump(mode="json")
        return SiteRules(cap=cap, policy=policy)

    @property
    def sample_rate(self) -> float:
        return BATCH / self.records

    @property
    def steps(self) -> int:
        return self.records // BATCH  # one local epoch per round


SITES = (Site("node-0", 1200, 3.0), Site("node-1", 800, None), Site("node-2", 500, 3.8))
ACCURACY = (0.712, 0.781, 0.806)


def build_run_dir(root: Path, sites: tuple[Site, ...] = SITES) -> Path:
    """Write RUN_DIR (run.json, metrics.jsonl, nodes/node-k/{node.toml,keys,ledger}) under root.

    ``sites`` may carry names a hostile or broken site would send: the folders stay
    ``node-<k>`` (the operator's), the names go into ledgers and metrics (the site's word).
    """
    run_dir = root / "run"
    ledgers = {
        site.node: _make_node(run_dir / "nodes" / f"node-{pid}", pid, site, len(sites))
        for pid, site in enumerate(sites)
    }
    rows = [_round(rnd, ledgers, sites) for rnd in range(1, ROUNDS + 1)]
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(run_dir / "run.json", _run_info())
    return run_dir


@dataclass(frozen=True)
class Node:
    """A built node: its ledger and the secret its noise seeds come from."""

    ledger: Ledger
    secret: bytes


def _make_node(folder: Path, pid: int, site: Site, parts: int) -> Node:
    lines = [f"name = {json.dumps(site.node)}", 'ledger_dir = "ledger"']
    lines.append('signing_key = "keys/signing.ed25519"')
    if site.cap is not None:
        lines += ["[budget]", f"epsilon = {site.cap}", f"delta = {DELTA}"]
    lines += ["[data]", f"partition_id = {pid}", f"num_partitions = {parts}"]
    atomic_write_text(folder / "node.toml", "\n".join(lines) + "\n")
    key = generate_signing_key()
    save_signing_key(key, folder / "keys" / "signing.ed25519")
    return Node(Ledger(folder / "ledger", key, node=site.node), key.private_bytes_raw())


def _round(rnd: int, ledgers: dict[str, Node], sites: tuple[Site, ...]) -> dict:
    clients = [_client(rnd, pid, site, ledgers[site.node]) for pid, site in enumerate(sites)]
    acc = ACCURACY[rnd - 1]
    server = {
        "loss": round(1.2 - acc, 4),
        "accuracy": acc,
        "precision": acc - 0.01,
        "recall": acc - 0.02,
        "f1": acc - 0.015,
    }
    return {
        "round": rnd,
        "time": f"2025-03-14T10:0{rnd}:00+00:00",
        "server": server,
        "clients": clients,
    }


def _client(rnd: int, pid: int, site: Site, node: Node) -> dict:
    ledger = node.ledger
    no_dp = rnd in site.no_dp_rounds
    plan = SpendPlan(
        run_id=RUN_ID,
        round=rnd,
        history=() if no_dp else ((NOISE, site.sample_rate, site.steps),),
        releases=("model-update",),
        noise_multiplier=0.0 if no_dp else NOISE,
        sample_rate=site.sample_rate,
        steps=site.steps,
        max_grad_norm=CLIP,
        delta=site.delta,
        dataset_size=site.records,
        mechanism=NO_DP if no_dp else "dp-sgd/poisson-gaussian",
        planned_rounds=ROUNDS,
    )
    decision = reserve(ledger, plan, site.rules(rnd), seed_secret=node.secret)
    if isinstance(decision, Denied):
        return {
            "node": site.node,
            "status": "refused",
            "reason": decision.reason,
            "projected_epsilon": decision.projected_epsilon,
            "ledger_head": ledger.head().as_dict(),
        }
    entry = decision.entry
    sent = hashlib.sha256(f"{site.node}/{rnd}".encode()).hexdigest()
    commit(ledger, decision, sent)
    row: dict[str, Any] = {
        "node": site.node,
        "partition_id": pid,
        "status": "ok",
        "reason": None,
        "ledger_head": {"hash": entry.hash, "count": entry.seq + 1},
        "released": ["model-update"],
    }
    if not no_dp:
        row |= {
            "epsilon": entry.epsilon if entry.epsilon is not None else float("inf"),
            "epsilon_rdp": entry.epsilon_rdp if entry.epsilon_rdp is not None else float("inf"),
            "delta": site.delta,
            "noise_multiplier": NOISE,
            "sample_rate": site.sample_rate,
            "steps": site.steps,
            "max_grad_norm": CLIP,
        }
    return row


def _run_info() -> dict:
    return {
        "run_id": RUN_ID,
        "scenario": "hospitals-heart",
        "config_hash": "9f2c" * 16,
        "model_hash": "41ab" * 16,
        "code_version": "0.1.0",
        "engine": "simulation",
        "started": "2025-03-14T10:00:00+00:00",
        "finished": "2025-03-14T10:04:00+00:00",
        "status": "finished",
        "transport": {
            "tls": True,
            "node_auth": True,
            "sealed_updates": True,
            "secure_aggregation": False,
        },
        "strategy": {"name": "fedavg", "fraction_train": 1.0, "min_train_nodes": 3},
        "dp": {
            "enabled": True,
            "noise_multiplier": NOISE,
            "delta": DELTA,
            "max_grad_norm": CLIP,
            "accountant": "prv",
        },
    }
