"""A strategy wrapper that records, validates and offsets rounds around any Flower strategy.

Composition, the way Flower's own DP wrappers work: ``configure_*`` and ``aggregate_*`` pass
through to the wrapped strategy, while this layer (1) shifts round numbers so a resumed run
continues at round k+1, (2) signs every request whole and opens every reply (a reply that is not
a registered node's signed envelope for this run and round, or a second reply of one node, is
rejected with the reason), (3) turns refusals, error replies and invalid updates into per-client
rows and keeps them out of aggregation, (4) weighs every accepted site once, and (5) hands the
rows to the end-of-round hook. The wrapped strategy only ever sees plain, validated replies, so
FedAvg's reply checks and the robust strategies work as is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmodel.crypto.seal import SealError
from fedmodel.errors import FedmodelError
from server import wire
from server.sealing import SignedTraffic, seal_reason
from server.validation import envelope_limit, norm_bound, update_check

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def with_dtypes_of(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """The aggregate in the global model's dtypes.

    Server optimisers such as Flower's FedAdam return float64 arrays; left as they are, the next
    round's updates (float32) would fail dtype validation against them and every node would
    spend its budget for nothing.
    """
    state = arrays.to_torch_state_dict()
    ref = reference.to_torch_state_dict()
    return ArrayRecord({k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()})


class RoundFailed(FedmodelError):
    """A round cannot go on: too few sites connected within the round timeout."""

    exit_code = 1


@dataclass
class SiteRoster:
    """Who the run expects and who answers to which Flower node id.

    Flower addresses nodes by number; every row, message and report line names the site. A
    number is named from the SuperLink's registration (``Grid.get_nodes``, deployment) or from
    the first reply that node signed with a registered key; only a node never seen either way
    stays ``flower-<id>``. ``given_up``: sites a round already stopped waiting for, so later
    rounds do not wait for them again until they reconnect.
    """

    expected: list[str] = field(default_factory=list)
    min_nodes: int = 1
    connect_timeout: float = 3600.0
    names: dict[int, str] = field(default_factory=dict)
    given_up: set[str] = field(default_factory=set)
    on_progress: Callable[[dict[str, Any]], None] | None = None
    poll_s: float = 1.0
    round: int = 0

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"flower-{node_id}")

    def learn(self, grid: Grid) -> None:
        """Names the SuperLink registered (``flwr supernode register --name``), if it has."""
        try:
            nodes = list(grid.get_nodes())
        except Exception:
            return
        for node in nodes:
            name = getattr(node, "name", "")
            if name:
                self.names[int(node.node_id)] = str(name)

    def connected(self, grid: Grid) -> list[str]:
        self.learn(grid)
        return [self.name(i) for i in grid.get_node_ids()]

    def await_sites(self, grid: Grid, rnd: int) -> None:
        """Wait for every expected site (but those already given up on) for at most the
        connect timeout; then go on with the connected ones if there are enough, or fail
        naming the missing ones. Progress names who the round waits for.

        A connected node not yet named (simulation, before its first reply) counts as one of
        the missing: only numbers are compared for it.
        """
        self.round = rnd
        start = time.monotonic()
        while True:
            connected = self.connected(grid)
            known = {c for c in connected if not c.startswith("flower-")}
            self.given_up.difference_update(known)  # back again: waited for once more
            missing = [s for s in self.expected if s not in known]
            elapsed = time.monotonic() - start
            wanted = len(self.expected) - len(self.given_up)
            if len(connected) >= max(wanted, self.min_nodes):
                return
            if elapsed >= self.connect_timeout:
                break
            self._progress(rnd, "connecting", [s for s in missing if s not in self.given_up])
            time.sleep(self.poll_s)
        if len(connected) < self.min_nodes:
            raise RoundFailed(
                f"round {rnd}: {len(connected)} of {len(self.expected)} sites connected after "
                f"{self.connect_timeout:.0f}s, fewer than the {self.min_nodes} it needs; missing: "
                f"{', '.join(missing) or 'none'}"
            )
        log.warning("round %d goes on without %s (not connected after %.0fs)", rnd,
                    ", ".join(missing), self.connect_timeout)  # fmt: skip
        self.given_up.update(missing)
        self._progress(rnd, "without", missing)

    def waiting_for(self, node_ids: Iterable[int]) -> None:
        """A round's requests are out and these nodes have not answered yet."""
        self._progress(self.round, "training", sorted(self.name(i) for i in node_ids))

    def _progress(self, rnd: int, phase: str, sites: list[str]) -> None:
        if self.on_progress is not None:
            self.on_progress({"round": rnd, "phase": phase, "sites": sites})


POLL_S_PER_REQUEST = 0.001
MIN_POLL_S = 0.1  # Flower's default


def pace_polling(grid: Grid, outstanding: int) -> None:
    """Poll for replies less often the more requests are out.

    Flower's in-memory grid (simulation) checks every outstanding request on each poll, every
    ``pull_interval`` (0.1 s): with a thousand requests out that took a large share of a core
    the virtual nodes train on. One millisecond per request (one second for a thousand) keeps
    the polling small and ends a round at most that much after its last reply. Other grids
    (deployment) are left as they are.
    """
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = max(MIN_POLL_S, outstanding * POLL_S_PER_REQUEST)


class RecordingStrategy(Strategy):
    def __init__(
        self,
        inner: Strategy,
        *,
        traffic: SignedTraffic,
        round_offset: int = 0,
        max_update_norm: float | str | None = "auto",
        sim_nodes_dir: str | None = None,
        last_round: int = 0,
        federated_evaluation: bool = True,
        evaluate_last_only: bool = False,
        roster: SiteRoster | None = None,
    ) -> None:
        self.inner = inner
        self.roster = roster or SiteRoster()
        self.aggregated_rounds = 0
        self.last_outcome = "no round ran"
        self.round_offset = round_offset
        self.max_update_norm = max_update_norm
        self.traffic = traffic
        self.sim_nodes_dir = sim_nodes_dir
        self.last_round = last_round
        self.federated_evaluation = federated_evaluation
        self.evaluate_last_only = evaluate_last_only
        self.pending_rows: dict[int, list[dict[str, Any]]] = {}
        self.pending_eval: dict[int, dict[str, Any]] = {}
        self._global: ArrayRecord | None = None
        self._reference_state: dict[str, torch.Tensor] | None = None
        self._limit = 0
        self._requests: dict[tuple[str, int], list[Message]] = {}
        self._senders: dict[str, int] = {}  # request message id -> the node it went to

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.round_offset
        self._global, self._limit = arrays, envelope_limit(arrays)
        self._reference_state = None
        self.roster.round = rnd
        if self.roster.expected:
            self.roster.await_sites(grid, rnd)
        messages = self.inner.configure_train(rnd, arrays, config, grid)
        signed = list(self.traffic.sign_requests(messages, arrays, rnd, self.sim_nodes_dir))
        self._requests[("train", rnd)] = signed  # Flower sets their message ids as it pushes
        pace_polling(grid, len(signed))
        return signed

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        replies = list(replies)
        asked = self._learn_senders("train", rnd)
        accepted, rows = self.screen(rnd, replies)
        rows += self._silent(asked, replies)
        self.pending_rows[rnd] = rows
        self.last_outcome = outcome_line(rows)
        if accepted:
            self.aggregated_rounds += 1
        else:
            log.warning("round %d: no site trained (%s)", rnd, self.last_outcome)
        wire.weigh_uniformly(accepted)
        arrays, metrics = self.inner.aggregate_train(rnd, accepted)
        if arrays is not None and self._global is not None:
            arrays = with_dtypes_of(arrays, self._global)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation requests, signed like training ones (task ``evaluate``); none when
        the run does not evaluate at the sites, or not in this round."""
        rnd = server_round + self.round_offset
        if not self.federated_evaluation or (self.evaluate_last_only and rnd != self.last_round):
            return []
        messages = self.inner.configure_evaluate(rnd, arrays, config, grid)
        signed = list(
            self.traffic.sign_requests(messages, arrays, rnd, self.sim_nodes_dir, "evaluate")
        )
        self._requests[("evaluate", rnd)] = signed
        pace_polling(grid, len(signed))
        return signed

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Sum the sites' noised counts: accuracy and loss over every site's held-out rows.

        Each site's counts are a Gaussian release it charged to its own ledger; the sums and
        ratios here are post-processing of those releases and cost nothing more.
        """
        rnd = server_round + self.round_offset
        replies = list(replies)
        self._learn_senders("evaluate", rnd)
        rows = [self._named(msg, self._screen_one(rnd, msg, "evaluate")) for msg in replies]
        summary = federated_summary(rows)
        self.pending_eval[rnd] = {**summary, "sites": rows} if rows else {}
        if not summary:
            return None
        numbers = {k: v for k, v in summary.items() if type(v) in (int, float)}
        return MetricRecord(numbers)

    def take_rows(self, rnd: int) -> list[dict[str, Any]]:
        return self.pending_rows.pop(rnd, [])

    def take_evaluation(self, rnd: int) -> dict[str, Any]:
        return self.pending_eval.pop(rnd, {})

    def screen(
        self, rnd: int, replies: list[Message]
    ) -> tuple[list[Message], list[dict[str, Any]]]:
        """Split replies into those the wrapped strategy may aggregate and a row for each."""
        rows = [self._named(msg, self._screen_one(rnd, msg)) for msg in replies]
        self._bound_norms(rows, replies)
        accepted = [msg for msg, row in zip(replies, rows, strict=True) if row["status"] == "ok"]
        for row in rows:
            if row["status"] != "ok":
                log.warning("%s reply from %s: %s", row["status"], row["node"], row["reason"])
            row.pop("_norm", None)
        return accepted, rows

    def _learn_senders(self, task: str, rnd: int) -> list[int]:
        """The nodes this round's requests went to, remembered by request id: an error reply
        the SuperLink writes for a node (e.g. "Node Unavailable") comes from the SuperLink,
        not the node, so only the request it answers names the site."""
        requests = self._requests.pop((task, rnd), [])
        self._senders = {m.metadata.message_id: m.metadata.dst_node_id for m in requests}
        return [m.metadata.dst_node_id for m in requests]

    def _sender(self, msg: Message) -> int:
        return self._senders.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)

    def _silent(self, asked: list[int], replies: list[Message]) -> list[dict[str, Any]]:
        """A row for each site asked this round that never answered (one site, one row), and
        the next round does not wait for it to reconnect: it joins again when it does."""
        answered = {self._sender(m) for m in replies}
        rows = []
        for node_id in asked:
            if node_id not in answered:
                name = self.roster.name(node_id)
                rows.append({"node": name, "status": "error",
                             "reason": "no reply within the round timeout"})  # fmt: skip
                self.roster.given_up.add(name)
        return rows

    def _named(self, msg: Message, row: dict[str, Any]) -> dict[str, Any]:
        """One site, one name: a verified reply teaches the roster its node's name; a reply
        that could not be verified is named by what the roster knows, not by its claim."""
        src = self._sender(msg)
        verified = row["status"] in ("ok", "refused")  # opened, or a checked signed refusal
        if verified and not str(row["node"]).startswith("flower-"):
            self.roster.names.setdefault(src, str(row["node"]))
        elif src in self.roster.names:
            row["node"] = self.roster.names[src]
        return row

    def _screen_one(self, rnd: int, msg: Message, task: str = "train") -> dict[str, Any]:
        """The reply's row; an accepted reply is replaced by its opened plain form."""
        src = msg.metadata.src_node_id
        if msg.has_error():
            reason = wire.short_reason(msg.error.reason)
            return {"node": self.roster.name(self._sender(msg)), "status": "error",
                    "reason": reason}  # fmt: skip
        claimed = wire.claimed_node(msg.content, src)
        if wire.REFUSAL in msg.content:
            try:
                self.traffic.check_refusal(msg, rnd, task)
            except SealError as err:
                return {"node": claimed, "status": "rejected", "reason": seal_reason(err)}
            return _row_or_rejection(msg, claimed)
        if (problem := self._oversized(msg)) is not None:
            return {"node": claimed, "status": "rejected", "reason": problem}
        sent = _envelope_size(msg)
        try:
            opened = self.traffic.open_reply(msg, rnd, task, self._reference(task))
        except SealError as err:
            return {"node": claimed, "status": "rejected", "reason": seal_reason(err)}
        msg.content = opened.content
        row = _row_or_rejection(msg, claimed)
        if row["status"] != "ok":
            return row
        row["message_id"] = opened.message_id
        row["bytes_sent"] = sent
        if task == "evaluate":
            return row
        if wire.ARRAYS not in msg.content.array_records or self._global is None:
            row.update(status="rejected", reason="no model update in reply")
            return row
        check = update_check(msg.content[wire.ARRAYS], self._global)
        if check.problem is None:  # safetensors sorts names; strategies zip lists in model order
            arrays = msg.content[wire.ARRAYS]
            msg.content[wire.ARRAYS] = ArrayRecord({k: arrays[k] for k in self._global})
        if check.problem is not None:
            row.update(status="rejected", reason=check.problem)
        row["_norm"] = check.norm
        return row

    def _reference(self, task: str) -> dict[str, torch.Tensor] | None:
        """The global model a compressed training update is decoded against, as the request
        carried it (converted once per round)."""
        if task != "train" or self._global is None:
            return None
        if self._reference_state is None:
            self._reference_state = self._global.to_torch_state_dict()
        return self._reference_state

    def _oversized(self, msg: Message) -> str | None:
        """A reply larger than the model plus its envelope is refused before it is parsed."""
        size = _envelope_size(msg)
        if self._limit and size is not None and size > self._limit:
            return f"update of {size} bytes exceeds the model's {self._limit}"
        return None

    def _bound_norms(self, rows: list[dict[str, Any]], replies: list[Message]) -> None:
        """Reject updates past the round's norm bound (a number, or 'auto': 10x the median)."""
        norms = [row["_norm"] for row in rows if row["status"] == "ok" and "_norm" in row]
        bound = norm_bound(self.max_update_norm, norms)
        if bound is None:
            return
        for row in rows:
            if row["status"] == "ok" and row.get("_norm", 0.0) > bound:
                row.update(
                    status="rejected",
                    reason=f"update norm {row['_norm']:.4g} exceeds bound {bound:.4g}",
                )


def outcome_line(rows: list[dict[str, Any]]) -> str:
    """``hospital-a ok; hospital-b refused: <reason>``: each site by name, with its reason."""
    parts = []
    for row in rows:
        reason = row.get("reason")
        parts.append(f"{row['node']} {row['status']}" + (f": {reason}" if reason else ""))
    return "; ".join(parts) or "no replies"


def federated_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and mean loss from the accepted sites' noised sums (empty if none answered)."""
    ok = [r for r in rows if r["status"] == "ok" and "eval_count" in r]
    count = sum(float(r["eval_count"]) for r in ok)
    if not ok or count < 1.0:
        return {}
    correct = sum(float(r["eval_correct"]) for r in ok)
    loss = sum(float(r["eval_loss_sum"]) for r in ok)
    return {
        "accuracy": min(1.0, max(0.0, correct / count)),
        "loss": max(0.0, loss / count),
        "count": count,
        "num_sites": len(ok),
        "noised": True,
    }


def _envelope_size(msg: Message) -> int | None:
    """Bytes of a reply's envelope as it arrived: what left the site for this update."""
    record = msg.content.config_records.get(wire.UPDATE)
    envelope = record.get(wire.ENVELOPE) if record is not None else None
    return len(envelope) if isinstance(envelope, bytes) else None


def _row_or_rejection(msg: Message, claimed: str) -> dict[str, Any]:
    """A reply missing its metrics must cost the sender its update, never the server its run."""
    try:
        return wire.client_row(msg.content)
    except (KeyError, TypeError, ValueError) as err:
        return {"node": claimed, "status": "rejected", "reason": f"malformed reply: {err!r}"}
