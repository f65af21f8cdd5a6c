"""A strategy wrapper that records, validates and offsets rounds around any Flower strategy.

Composition, the way Flower's own DP wrappers work: ``configure_*`` and ``aggregate_*`` pass
through to the wrapped strategy, while this layer (1) shifts round numbers so a resumed run
continues at round k+1, (2) when updates are sealed, signs the global model it sends and opens
every sealed reply (a reply that fails to open is rejected with the seal's reason), (3) turns
refusals, error replies and invalid updates into per-client rows and keeps them out of
aggregation, (4) lets the caller adjust the accepted replies (central DP weighs each site
once), and (5) hands the rows to the end-of-round hook. The wrapped strategy only ever
sees plain, validated replies, so FedAvg's reply checks and the robust strategies work as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmodel.crypto.seal import SealError
from server import wire
from server.sealing import SealedTraffic, seal_reason
from server.validation import update_problem

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
        round_offset: int = 0,
        max_update_norm: float | None = None,
        sealing: SealedTraffic | None = None,
        before_aggregate: Callable[[list[Message]], None] | None = None,
    ) -> None:
        self.inner = inner
        self.before_aggregate = before_aggregate
        self.round_offset = round_offset
        self.max_update_norm = max_update_norm
        self.sealing = sealing
        self.pending_rows: dict[int, list[dict[str, Any]]] = {}
        self._global: ArrayRecord | None = None

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.round_offset
        self._global = arrays
        messages = self.inner.configure_train(rnd, arrays, config, grid)
        if self.sealing is None:
            return messages
        return self.sealing.sign_requests(messages, arrays, rnd)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        accepted, rows = self.screen(rnd, list(replies))
        self.pending_rows[rnd] = rows
        if self.before_aggregate is not None:
            self.before_aggregate(accepted)
        arrays, metrics = self.inner.aggregate_train(rnd, accepted)
        if arrays is not None and self._global is not None:
            arrays = with_dtypes_of(arrays, self._global)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_evaluate(server_round + self.round_offset, replies)

    def take_rows(self, rnd: int) -> list[dict[str, Any]]:
        return self.pending_rows.pop(rnd, [])

    def screen(
        self, rnd: int, replies: list[Message]
    ) -> tuple[list[Message], list[dict[str, Any]]]:
        """Split replies into those the wrapped strategy may aggregate and a row for each."""
        accepted: list[Message] = []
        rows: list[dict[str, Any]] = []
        for msg in replies:
            row = self._screen_one(rnd, msg)
            if row["status"] == "ok":
                accepted.append(msg)
            else:
                log.warning("%s reply from %s: %s", row["status"], row["node"], row["reason"])
            rows.append(row)
        return accepted, rows

    def _screen_one(self, rnd: int, msg: Message) -> dict[str, Any]:
        """The reply's row; an accepted sealed reply is replaced by its opened plain form."""
        src = msg.metadata.src_node_id
        if msg.has_error():
            reason = wire.short_reason(msg.error.reason)
            return {"node": f"flower-{src}", "status": "error", "reason": reason}
        claimed = wire.claimed_node(msg.content, src)
        if wire.REFUSAL in msg.content:
            if self.sealing is not None:
                try:
                    self.sealing.check_refusal(msg.content, rnd)
                except SealError as err:
                    return {"node": claimed, "status": "rejected", "reason": seal_reason(err)}
            return _row_or_rejection(msg, claimed)
        message_id = None
        if self.sealing is not None:
            try:
                opened = self.sealing.open_reply(msg.content, rnd)
            except SealError as err:
                return {"node": claimed, "status": "rejected", "reason": seal_reason(err)}
            msg.content, message_id = opened.content, opened.message_id
        row = _row_or_rejection(msg, claimed)
        if row["status"] != "ok":
            return row
        if message_id is not None:
            row["message_id"] = message_id
        problem = self._problem(msg)
        if problem is not None:
            row.update(status="rejected", reason=problem)
        return row

    def _problem(self, msg: Message) -> str | None:
        if wire.ARRAYS not in msg.content.array_records or self._global is None:
            return "no model update in reply"
        return update_problem(msg.content[wire.ARRAYS], self._global, self.max_update_norm)


def _row_or_rejection(msg: Message, claimed: str) -> dict[str, Any]:
    """A reply missing its metrics must cost the sender its update, never the server its run."""
    try:
        return wire.client_row(msg.content)
    except (KeyError, TypeError, ValueError) as err:
        return {"node": claimed, "status": "rejected", "reason": f"malformed reply: {err!r}"}
