"""A strategy wrapper that records, validates and offsets rounds around any Flower strategy.

Composition, the way Flower's own DP wrappers work: ``configure_*`` and ``aggregate_*`` pass
through to the wrapped strategy, while this layer (1) shifts round numbers so a resumed run
continues at round k+1, (2) turns refusals, error replies and invalid updates into per-client
rows and keeps them out of aggregation, and (3) hands the rows to the end-of-round hook.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server import wire
from server.validation import update_problem

log = logging.getLogger(__name__)


class RecordingStrategy(Strategy):
    def __init__(
        self, inner: Strategy, *, round_offset: int = 0, max_update_norm: float | None = None
    ) -> None:
        self.inner = inner
        self.round_offset = round_offset
        self.max_update_norm = max_update_norm
        self.pending_rows: dict[int, list[dict[str, Any]]] = {}
        self._global: ArrayRecord | None = None

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return self.inner.configure_train(server_round + self.round_offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        accepted, rows = self._screen(list(replies))
        self.pending_rows[rnd] = rows
        return self.inner.aggregate_train(rnd, accepted)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_evaluate(server_round + self.round_offset, replies)

    def take_rows(self, rnd: int) -> list[dict[str, Any]]:
        return self.pending_rows.pop(rnd, [])

    def _screen(self, replies: list[Message]) -> tuple[list[Message], list[dict[str, Any]]]:
        accepted: list[Message] = []
        rows: list[dict[str, Any]] = []
        for msg in replies:
            src = msg.metadata.src_node_id
            if msg.has_error():
                rows.append(
                    {"node": f"flower-{src}", "status": "error", "reason": msg.error.reason}
                )
                continue
            row = wire.client_row(msg.content)
            if row["status"] == "ok":
                problem = self._problem(msg)
                if problem is not None:
                    row.update(status="rejected", reason=problem)
                    log.warning("rejected update from %s: %s", row["node"], problem)
                else:
                    accepted.append(msg)
            rows.append(row)
        return accepted, rows

    def _problem(self, msg: Message) -> str | None:
        if wire.ARRAYS not in msg.content.array_records or self._global is None:
            return "no model update in reply"
        return update_problem(msg.content[wire.ARRAYS], self._global, self.max_update_norm)
