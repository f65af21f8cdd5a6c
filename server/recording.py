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
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmodel.crypto.seal import SealError
from server import wire
from server.sealing import SignedTraffic, seal_reason
from server.validation import envelope_limit, norm_bound, update_check

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
        evaluate_last_only: bool = False,
    ) -> None:
        self.inner = inner
        self.round_offset = round_offset
        self.max_update_norm = max_update_norm
        self.traffic = traffic
        self.sim_nodes_dir = sim_nodes_dir
        self.last_round = last_round
        self.evaluate_last_only = evaluate_last_only
        self.pending_rows: dict[int, list[dict[str, Any]]] = {}
        self.pending_eval: dict[int, dict[str, Any]] = {}
        self._global: ArrayRecord | None = None
        self._limit = 0

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.round_offset
        self._global, self._limit = arrays, envelope_limit(arrays)
        messages = self.inner.configure_train(rnd, arrays, config, grid)
        return self.traffic.sign_requests(messages, arrays, rnd, self.sim_nodes_dir)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        accepted, rows = self.screen(rnd, list(replies))
        self.pending_rows[rnd] = rows
        wire.weigh_uniformly(accepted)
        arrays, metrics = self.inner.aggregate_train(rnd, accepted)
        if arrays is not None and self._global is not None:
            arrays = with_dtypes_of(arrays, self._global)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation requests, signed like training ones (task ``evaluate``)."""
        rnd = server_round + self.round_offset
        if self.evaluate_last_only and rnd != self.last_round:
            return []
        messages = self.inner.configure_evaluate(rnd, arrays, config, grid)
        return self.traffic.sign_requests(messages, arrays, rnd, self.sim_nodes_dir, "evaluate")

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Sum the sites' noised counts: accuracy and loss over every site's held-out rows.

        Each site's counts are a Gaussian release it charged to its own ledger; the sums and
        ratios here are post-processing of those releases and cost nothing more.
        """
        rnd = server_round + self.round_offset
        rows = [self._screen_one(rnd, msg, "evaluate") for msg in replies]
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
        rows = [self._screen_one(rnd, msg) for msg in replies]
        self._bound_norms(rows, replies)
        accepted = [msg for msg, row in zip(replies, rows, strict=True) if row["status"] == "ok"]
        for row in rows:
            if row["status"] != "ok":
                log.warning("%s reply from %s: %s", row["status"], row["node"], row["reason"])
            row.pop("_norm", None)
        return accepted, rows

    def _screen_one(self, rnd: int, msg: Message, task: str = "train") -> dict[str, Any]:
        """The reply's row; an accepted reply is replaced by its opened plain form."""
        src = msg.metadata.src_node_id
        if msg.has_error():
            reason = wire.short_reason(msg.error.reason)
            return {"node": f"flower-{src}", "status": "error", "reason": reason}
        claimed = wire.claimed_node(msg.content, src)
        if wire.REFUSAL in msg.content:
            try:
                self.traffic.check_refusal(msg, rnd, task)
            except SealError as err:
                return {"node": claimed, "status": "rejected", "reason": seal_reason(err)}
            return _row_or_rejection(msg, claimed)
        if (problem := self._oversized(msg)) is not None:
            return {"node": claimed, "status": "rejected", "reason": problem}
        try:
            opened = self.traffic.open_reply(msg, rnd, task)
        except SealError as err:
            return {"node": claimed, "status": "rejected", "reason": seal_reason(err)}
        msg.content = opened.content
        row = _row_or_rejection(msg, claimed)
        if row["status"] != "ok":
            return row
        row["message_id"] = opened.message_id
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

    def _oversized(self, msg: Message) -> str | None:
        """A reply larger than the model plus its envelope is refused before it is parsed."""
        record = msg.content.config_records.get(wire.UPDATE)
        envelope = record.get(wire.ENVELOPE) if record is not None else None
        if self._limit and isinstance(envelope, bytes) and len(envelope) > self._limit:
            return f"update of {len(envelope)} bytes exceeds the model's {self._limit}"
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


def _row_or_rejection(msg: Message, claimed: str) -> dict[str, Any]:
    """A reply missing its metrics must cost the sender its update, never the server its run."""
    try:
        return wire.client_row(msg.content)
    except (KeyError, TypeError, ValueError) as err:
        return {"node": claimed, "status": "rejected", "reason": f"malformed reply: {err!r}"}
