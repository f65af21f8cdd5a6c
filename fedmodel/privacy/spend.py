"""The one door through which a node spends privacy: reserve, then commit.

Every value that costs privacy (a DP-SGD round and what it releases, noised evaluation counts)
passes :func:`reserve` before it is computed and :func:`commit` after it left. ``reserve`` is one
transaction under the ledger's lock:

1. read and verify the ledger, and check it against the node's high-water mark;
2. sign the node's current cap and policy if they changed since the last ``policy`` entry;
3. refuse a second spend for the same run, round and kind (a replayed or duplicated request),
   a round past the run's plan, a spend that would take the node past its own cap, or the run
   past its target epsilon;
4. otherwise append the spending entry *now*, with the history it will add, and derive the seed
   of its sampling and noise streams from the node's secret and the entry's position.

Because the reservation is written before anything is computed, two requests racing on one node
are decided one after the other, each seeing the other's spend; a crash between reserve and commit
leaves the spend counted; and no two spends share a position, so no two share a noise stream
(two updates with the same noise let whoever sees both subtract it away). ``commit`` then records
the SHA-256 of what left the node, so a reviewer can match the ledger to the server's records.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedmodel.errors import FedmodelError
from fedmodel.privacy.accountant import AccountantName, HistoryEntry, normalise_history
from fedmodel.privacy.budget import Cap, check_spend, cumulative_epsilon
from fedmodel.privacy.ledger import MECHANISM, NO_DP, Ledger, LedgerEntry, unbounded

SpendKind = Literal["round", "release"]
_SEED_LABEL = b"fedmodel/dp-seed/v3\x00"


class SpendError(FedmodelError):
    """A spend plan that cannot be evaluated (it is malformed, not refused)."""


@dataclass(frozen=True)
class SpendPlan:
    """What one spend will add, computed by the node from its own data and the signed request.

    ``history`` is everything the spend adds to the accountant: the DP-SGD steps
    ``(noise_multiplier, sample_rate, steps)`` and, for each Gaussian release, ``(sigma, 1, 1)``.
    ``releases`` names what will leave the node (``model-update``, ``train-metrics``, ...).
    ``run_target_epsilon`` (the run's ``dp.target_epsilon``) caps every spend of this run together
    at ``delta``; ``planned_rounds`` refuses rounds past the run's signed plan.
    """

    run_id: str
    round: int
    history: tuple[HistoryEntry, ...]
    releases: tuple[str, ...]
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    dataset_size: int
    kind: SpendKind = "round"
    mechanism: str = MECHANISM
    planned_rounds: int | None = None
    run_target_epsilon: float | None = None
    accountant: AccountantName = "prv"
    request_digest: bytes = b""  # SHA-256 of the signed request this spend answers


@dataclass(frozen=True)
class SiteRules:
    """What the node's own ``node.toml`` says now: its cap and its policy (as plain data)."""

    cap: Cap | None
    policy: Mapping[str, Any] = field(default_factory=dict)
    quiet: bool = False  # the site keeps its row count private: refusals carry no figures

    def cap_pair(self) -> tuple[float, float] | None:
        return None if self.cap is None else (float(self.cap.epsilon), float(self.cap.delta))


@dataclass(frozen=True)
class Reserved:
    """The spend is in the ledger; ``seed`` drives its sampling and noise streams."""

    entry: LedgerEntry
    seed: int


@dataclass(frozen=True)
class Denied:
    """The node declined; ``entry`` is the signed refusal it will send."""

    entry: LedgerEntry
    reason: str
    projected_epsilon: float | None


def reserve(
    ledger: Ledger, plan: SpendPlan, site: SiteRules, *, seed_secret: bytes
) -> Reserved | Denied:
    """Decide and record the spend in one hold of the ledger's lock (see the module docstring)."""
    history = _plan_history(plan)
    outcome: dict[str, Any] = {}

    def decide(entries: list[LedgerEntry]) -> list[dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        policy = _policy_update(ledger, entries, plan, site)
        if policy is not None:
            bodies.append(policy)
        reason, projected = _refusal(entries, plan, history, site)
        if reason is not None and site.quiet:  # epsilons are functions of the site's n
            reason, projected = _quiet(reason), None
        if reason is not None:
            outcome.update(reason=reason, projected=projected)
            return [*bodies, ledger.refusal_body(plan.run_id, plan.round, reason, projected)]
        position = len(entries) + len(bodies)
        previous = entries[-1].hash if entries else ""
        outcome["seed"] = derive_seed(seed_secret, position, previous, plan.request_digest)
        spend = ledger.spend_body(
            plan.kind, plan.run_id, plan.round,
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            steps=plan.steps, max_grad_norm=plan.max_grad_norm, delta=plan.delta,
            dataset_size=plan.dataset_size, history=history, releases=plan.releases,
            mechanism=plan.mechanism,
        )  # fmt: skip
        return [*bodies, spend(entries)]

    written = ledger.append_decided(decide)
    last = written[-1]
    if "reason" in outcome:
        return Denied(last, outcome["reason"], outcome["projected"])
    return Reserved(last, outcome["seed"])


def commit(ledger: Ledger, reserved: Reserved, sent_sha256: str | None) -> LedgerEntry:
    """Record that the reserved spend finished and what left the node (``None``: nothing did)."""
    return ledger.append_commit(reserved.entry, sent_sha256)


def refuse(
    ledger: Ledger,
    run_id: str,
    round: int,
    reason: str,
    site: SiteRules,
    projected_epsilon: float | None = None,
) -> LedgerEntry:
    """A refusal decided before any spend was planned (policy, untrusted request), signed with
    the node's current cap and policy like every other decision."""
    plan_stub = _Stub(run_id, round)

    def decide(entries: list[LedgerEntry]) -> list[dict[str, Any]]:
        policy = _policy_update(ledger, entries, plan_stub, site)
        refusal = ledger.refusal_body(run_id, round, reason, projected_epsilon)
        return [refusal] if policy is None else [policy, refusal]

    return ledger.append_decided(decide)[-1]


def derive_seed(secret: bytes, position: int, previous: str, request: bytes) -> int:
    """The seed of a spend: from the node's key, the ledger state it follows and the request.

    From the node's private key, so the server, which chooses ``train.seed``, cannot regenerate
    the noise (with ``dp.secure_mode`` Opacus draws from a CSPRNG instead). From the ledger
    position and the hash before it, so no two spends of one ledger share a stream. From the
    request's digest, so that even a ledger put back to an earlier state (a restored backup)
    can only ever repeat a stream for the very same request, model included, whose answer is
    then the very same update: nothing to subtract.
    """
    material = b"".join(
        (_SEED_LABEL, secret, position.to_bytes(8, "big"), previous.encode(), request)
    )
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1


# --- the decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stub:
    run_id: str
    round: int


def _plan_history(plan: SpendPlan) -> list[HistoryEntry]:
    if plan.mechanism == NO_DP:
        return []
    try:
        history = normalise_history(plan.history)
    except (ValueError, TypeError) as err:
        raise SpendError(f"spend plan: {err}") from None
    if not history:
        raise SpendError("spend plan: nothing to spend")
    return history


def _refusal(
    entries: list[LedgerEntry],
    plan: SpendPlan,
    history: list[HistoryEntry],
    site: SiteRules,
) -> tuple[str | None, float | None]:
    """The first reason to refuse this spend, with the epsilon it would have reached."""
    done = _same_spend(entries, plan)
    if done is not None:
        return (
            f"already spent for round {plan.round} of run {plan.run_id} (ledger entry "
            f"{done.seq}); a request is answered once",
            None,
        )
    if plan.planned_rounds is not None and plan.round > plan.planned_rounds:
        return (f"round {plan.round} is past the run's plan of {plan.planned_rounds} rounds", None)
    past = [h for e in entries if e.spends for h in e.history]
    projected = None
    if site.cap is not None and (plan.mechanism == NO_DP or unbounded(entries)):
        return (
            "this site's epsilon would be unbounded (a release without DP noise), past its cap "
            f"{site.cap.epsilon:g}",
            math.inf,
        )
    if site.cap is not None:
        decision = check_spend(past, history, site.cap, plan.accountant, delta=plan.delta)
        projected = decision.projected_epsilon
        if not decision.allowed:
            return decision.reason, projected
    if plan.run_target_epsilon is not None and plan.mechanism != NO_DP:
        reason = _past_run_target(entries, plan, history)
        if reason is not None:
            return reason, projected
    return None, projected


def _quiet(reason: str) -> str:
    """The kind of a refusal without its figures."""
    for marker, kind in (
        ("already spent", "a request is answered once"),
        ("past the run's plan", "round past the run's plan"),
        ("cap", "this round would pass the site's cap"),
        ("target", "this round would pass the run's target epsilon"),
    ):
        if marker in reason:
            return kind
    return "refused by the site's budget"


def _same_spend(entries: list[LedgerEntry], plan: SpendPlan) -> LedgerEntry | None:
    return next(
        (
            e
            for e in entries
            if e.kind == plan.kind and e.run_id == plan.run_id and e.round == plan.round
        ),
        None,
    )


def _past_run_target(
    entries: list[LedgerEntry], plan: SpendPlan, history: list[HistoryEntry]
) -> str | None:
    """The run's target epsilon is a cap on the run: every spend of this run, plus this one."""
    assert plan.run_target_epsilon is not None
    this_run = [h for e in entries if e.spends and e.run_id == plan.run_id for h in e.history]
    eps = cumulative_epsilon([*this_run, *history], plan.delta, plan.accountant)
    # calibration stops its search within 0.2 % above the exact noise, so it lands at or under
    # the target; the slack only absorbs float noise, never a real overshoot
    if math.isinf(eps) or eps > plan.run_target_epsilon * (1 + 1e-9):
        return (
            f"this round would take run {plan.run_id} to epsilon {eps:.4f}, past its target "
            f"{plan.run_target_epsilon:g}"
        )
    return None


def _policy_update(
    ledger: Ledger, entries: Sequence[LedgerEntry], plan: Any, site: SiteRules
) -> dict[str, Any] | None:
    """A ``policy`` body when the node's cap or policy differs from its last signed one."""
    body = ledger.policy_body(plan.run_id, plan.round, site.cap_pair(), site.policy)
    last = next((e for e in reversed(entries) if e.kind == "policy"), None)
    if last is not None and (
        last.policy_sha256 == body["policy_sha256"]
        and last.cap_epsilon == body["cap_epsilon"]
        and last.cap_delta == body["cap_delta"]
    ):
        return None
    return body
