"""The empirical privacy audit (``RUN_DIR/privacy-audit.json``) as the report shows it.

``fedmodel audit privacy`` writes the file; the report only reads it, next to the epsilon it
recomputed itself for the same site. The file is evidence about the run, not a record the
privacy figures rest on: a missing one is a note, a malformed one or one made for another run or
model is a warning, and neither stops the report. A canary lower bound above the accounted
epsilon is a warning too: the accounting, or the code it describes, does not hold.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fedmodel.privacy.audit import PRIVACY_AUDIT_FILE
from fedmodel.report.model import (
    CanaryFigures,
    ClientReport,
    MembershipAttack,
    PrivacyAuditSummary,
)
from fedmodel.report.narrative import membership_tpr_bound


def read_privacy_audit(
    run_dir: Path, run_id: str, model_hash: str | None, clients: list[ClientReport]
) -> tuple[PrivacyAuditSummary | None, list[str]]:
    """The summary (``None`` without a file) and the warnings it raises."""
    path = Path(run_dir) / PRIVACY_AUDIT_FILE
    if not path.is_file():
        return None, []
    try:
        summary = _summary(json.loads(path.read_text(encoding="utf-8")), run_id, model_hash)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None, [f"{PRIVACY_AUDIT_FILE} is unreadable or malformed; its audit is not shown"]
    summary = _with_site_epsilon(summary, clients)
    return summary, privacy_audit_warnings(summary)


def privacy_audit_warnings(summary: PrivacyAuditSummary) -> list[str]:
    out = []
    if not summary.matches_run:
        out.append(f"{PRIVACY_AUDIT_FILE} was made for another run or final model; shown as found")
    out += [
        f"canary audit of {summary.node}: epsilon >= {c.epsilon_lower_bound:.4g} at "
        f"{c.confidence:.0%} confidence exceeds the accounted {c.epsilon_accounted:.4g}: the "
        "DP-SGD implementation or its accounting does not hold"
        for c in summary.canaries
        if c.refutes_claim and not c.noise_off
    ]
    return out


def _summary(data: dict[str, Any], run_id: str, model_hash: str | None) -> PrivacyAuditSummary:
    mia = data["membership_inference"]
    return PrivacyAuditSummary(
        node=str(data["site"]["node"]),
        generated_at=data.get("generated_at"),
        matches_run=data.get("run_id") == run_id and data.get("model_hash") == model_hash,
        members=int(mia["members"]),
        non_members=int(mia["non_members"]),
        attacks=[
            MembershipAttack(
                str(a["attack"]), float(a["auc"]), float(a["tpr_at_fpr"]), float(a["fpr"])
            )
            for a in mia["attacks"]
        ],
        epsilon_site=None,
        delta_site=None,
        tpr_bound=None,
        canaries=[_canary(c) for c in data.get("canary_audits") or []],
    )


def _canary(c: dict[str, Any]) -> CanaryFigures:
    return CanaryFigures(
        noise_off=bool(c["noise_off"]),
        canaries=int(c["canaries"]),
        guesses=int(c["guesses"]),
        correct=int(c["correct"]),
        confidence=float(c["confidence"]),
        delta=float(c["delta"]),
        epsilon_lower_bound=float(c["epsilon_lower_bound"]),
        epsilon_ceiling=float(c["epsilon_ceiling"]),
        epsilon_accounted=float(c["epsilon_accounted"]),
        noise_multiplier_trained=float(c["noise_multiplier_trained"]),
        seed=int(c["seed"]),
    )


def _with_site_epsilon(
    summary: PrivacyAuditSummary, clients: list[ClientReport]
) -> PrivacyAuditSummary:
    """Add the report's epsilon for the audited site and the TPR bound it implies."""
    site = next((c for c in clients if c.node == summary.node), None)
    if site is None or not summary.attacks:
        return summary
    bound = membership_tpr_bound(site.epsilon, site.delta, summary.attacks[0].fpr)
    return dataclasses.replace(
        summary, epsilon_site=site.epsilon, delta_site=site.delta, tpr_bound=bound
    )
