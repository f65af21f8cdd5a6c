"""A site's cap and policy as it signed them: the ledger's ``policy`` entries, and what follows.

A node signs its cap and its whole ``[policy]`` table into its ledger, inside the spend
transaction, whenever either differs from the last signed one, so a policy entry precedes every
decision taken under it. The report reads caps and policies from these entries alone:

* the policy *in force* for a spend is the latest policy entry before it; it decides whether the
  spend was allowed (its cap, its ``max_delta``);
* the *current* policy is the ledger's last one; its cap is the one "budget exceeded" is judged
  against, over the site's whole signed history (so a cap lowered below what was already spent
  reads as exceeded, whatever a later ``node.toml`` says);
* a ledger without any policy entry has no signed cap, and none is reported.

A ``node.toml`` that disagrees with the last signed entry is named in a warning, never used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from fedmodel.privacy.budget import cumulative_epsilon, default_delta_limit
from fedmodel.privacy.ledger import NO_DP, LedgerEntry, unbounded
from fedmodel.report import fmt
from fedmodel.report.ledgers import NodeFile
from fedmodel.report.model import Budget, DeltaFlag, SignedPolicy

CAP_SLACK = 1e-9  # relative: the node's own check allows a spend that lands exactly on its cap
SIGNED, UNCAPPED, UNSIGNED = "signed", "uncapped", "unsigned"


def signed_policies(entries: Sequence[LedgerEntry]) -> list[SignedPolicy]:
    """Every ``policy`` entry of a verified ledger, in chain order."""
    return [
        SignedPolicy(
            entry=e.seq,
            time=e.time,
            run_id=e.run_id,
            cap_epsilon=e.cap_epsilon,
            cap_delta=e.cap_delta,
            policy=dict(e.policy or {}),
            policy_sha256=e.policy_sha256,
        )
        for e in entries
        if e.kind == "policy"
    ]


def policy_in_force(policies: Sequence[SignedPolicy], seq: int) -> SignedPolicy | None:
    """The policy a decision at ledger position ``seq`` was taken under (the last one before)."""
    return next((p for p in reversed(policies) if p.entry < seq), None)


def signed_cap(policy: SignedPolicy | None) -> Budget | None:
    if policy is None or policy.cap_epsilon is None or policy.cap_delta is None:
        return None
    return Budget(
        epsilon=policy.cap_epsilon,
        delta=policy.cap_delta,
        source=f"signed policy, ledger entry {policy.entry} ({policy.time})",
        entry=policy.entry,
    )


def cap_status(policy: SignedPolicy | None) -> str:
    """``signed`` (a signed cap), ``uncapped`` (signed: no cap), ``unsigned`` (nothing signed)."""
    if policy is None:
        return UNSIGNED
    return SIGNED if signed_cap(policy) is not None else UNCAPPED


def spent_against(entries: Sequence[LedgerEntry], delta: float, accountant: str) -> float:
    """Epsilon of every spend in ``entries`` at ``delta``; ``inf`` once any spend had no DP."""
    if unbounded(entries):
        return math.inf
    history = [h for e in entries if e.spends for h in e.history]
    return cumulative_epsilon(history, delta, accountant)  # type: ignore[arg-type]


def exceeds(spent: float, cap: Budget) -> bool:
    return spent > cap.epsilon * (1 + CAP_SLACK)


def spends_past_cap_in_force(
    entries: Sequence[LedgerEntry], policies: Sequence[SignedPolicy], accountant: str
) -> list[int]:
    """Spends that took the site past the cap signed when each was decided.

    A node refuses such a spend, so any found here means the site's software did not enforce its
    own cap. Epsilon only grows, so within one policy's time only the last spends need checking:
    walk back from the last until one is within the cap.
    """
    found: list[int] = []
    spends = [e for e in entries if e.spends]
    by_policy: dict[int, list[LedgerEntry]] = {}
    for spend in spends:
        policy = policy_in_force(policies, spend.seq)
        if signed_cap(policy) is not None:
            by_policy.setdefault(policy.entry, []).append(spend)  # type: ignore[union-attr]
    for entry_no, group in by_policy.items():
        cap = signed_cap(next(p for p in policies if p.entry == entry_no))
        assert cap is not None
        for spend in reversed(group):
            upto = [e for e in entries if e.seq <= spend.seq]
            if not exceeds(spent_against(upto, cap.delta, accountant), cap):
                break
            found.append(spend.seq)
    return sorted(found)


def delta_flags(
    entries: Sequence[LedgerEntry], policies: Sequence[SignedPolicy]
) -> list[DeltaFlag]:
    """Every DP spend whose delta is above ``1/(10 n)`` for its own ``n`` rows.

    A delta above that is allowed only where the signed policy in force set ``max_delta`` at or
    above it (said so, with the entry); ``delta >= 1/n`` is flagged whatever allowed it.
    """
    out: list[DeltaFlag] = []
    for e in entries:
        if not e.spends or e.mechanism == NO_DP or not e.dataset_size or e.delta is None:
            continue
        limit = default_delta_limit(e.dataset_size)
        if e.delta <= limit:
            continue
        policy = policy_in_force(policies, e.seq)
        allowed_by = _allowed_by(policy, e.delta)
        out.append(
            DeltaFlag(
                entry=e.seq,
                run_id=e.run_id,
                round=e.round,
                kind=e.kind,
                delta=e.delta,
                dataset_size=e.dataset_size,
                limit=limit,
                allowed_by=allowed_by,
                at_least_one_over_n=e.delta >= 1.0 / e.dataset_size,
            )
        )
    return out


def _allowed_by(policy: SignedPolicy | None, delta: float) -> str | None:
    if policy is None:
        return None
    max_delta = _number(policy.policy.get("max_delta"))
    if max_delta is None or delta > max_delta:
        return None
    return f"signed max_delta {fmt.num(max_delta)} (ledger entry {policy.entry})"


def node_file_warnings(
    node: str, node_file: NodeFile | None, current: SignedPolicy | None
) -> list[str]:
    """A ``node.toml`` beside the ledger that says something other than the last signed entry.

    The file may have been edited after the run (or before a run that never came); the signed
    entry is what the site decided under, so it counts and the file is only named.
    """
    if node_file is None:
        return []
    out = []
    signed = None if current is None else _pair(current.cap_epsilon, current.cap_delta)
    where = (
        "no signed policy" if current is None else f"signed policy, ledger entry {current.entry}"
    )
    if node_file.unsigned_cap != signed:
        out.append(
            f"{node}: {node_file.path} states cap {_cap_text(node_file.unsigned_cap)}, the last "
            f"{where} has {_cap_text(signed)}; the report uses the signed one"
        )
    if current is not None:
        differing = sorted(
            k for k, v in node_file.unsigned_policy.items() if not _same(current.policy.get(k), v)
        )
        if differing:
            out.append(
                f"{node}: {node_file.path} states policy {', '.join(differing)} other than the "
                f"last {where}; the report uses the signed policy"
            )
    return out


def _pair(epsilon: float | None, delta: float | None) -> tuple[float, float] | None:
    return None if epsilon is None or delta is None else (float(epsilon), float(delta))


def _cap_text(cap: tuple[float, float] | None) -> str:
    return "none" if cap is None else f"ε {fmt.num(cap[0])} at δ {fmt.num(cap[1])}"


def _same(signed: Any, stated: Any) -> bool:
    """Equal as JSON values (TOML integers and JSON floats compare by value)."""
    return json.dumps(signed, sort_keys=True) == json.dumps(stated, sort_keys=True) or (
        _number(signed) is not None and _number(signed) == _number(stated)
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
