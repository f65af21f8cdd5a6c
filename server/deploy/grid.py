"""A Grid that notices replies sooner: Flower's deployment Grid checks for them every 3 s.

``flwr``'s deployment Grid implements ``send_and_receive`` as push, then pull-and-sleep(3) until
every reply is in, so each round ends up to 3 s after its last reply arrived. This wrapper keeps
Flower's own push and pull (the public ``Grid`` API) and only checks more often. Everything else
is delegated unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

DEFAULT_INTERVAL = 0.2
WAIT_REPORT_S = 5.0  # how often a round says whom it still waits for


class PromptGrid(Grid):
    """Delegates to ``inner``; ``send_and_receive`` polls every ``interval`` seconds."""

    def __init__(
        self,
        inner: Grid,
        interval: float = DEFAULT_INTERVAL,
        on_wait: Callable[[list[int]], None] | None = None,
        report_every: float = WAIT_REPORT_S,
    ) -> None:
        self.inner = inner
        self.interval = interval
        self.on_wait = on_wait
        self.report_every = report_every

    def set_run(self, run) -> None:  # run: flwr's Run
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's semantics (all replies, or what came before ``timeout``), checked sooner."""
        messages = list(messages)
        ids = list(self.push_messages(messages))
        # one id per message, in order (Flower's grids); only used to name whom a round awaits
        dst = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages, strict=False)}
        pending = set(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        reported = time.monotonic()
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if (
                pending
                and self.on_wait is not None
                and time.monotonic() - reported > self.report_every
            ):
                self.on_wait(sorted(dst[m] for m in pending if m in dst))
                reported = time.monotonic()
            if pending:
                time.sleep(self.interval)
        return replies
