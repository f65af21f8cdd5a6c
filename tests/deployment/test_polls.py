"""The two shortened polls: the ServerApp's reply poll (PromptGrid) and the SuperNode's sleeps.

PromptGrid keeps Flower's send-and-receive semantics with replies noticed within its interval;
CappedSleep shortens only the sleeps of ``flwr.supernode.start_client_internal``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from clients.daemon.supernode_main import BUSY_CAP, CappedSleep
from server.deploy.grid import PromptGrid


class FakeGrid:
    """Push returns ids; each id's reply becomes pullable ``delay`` seconds later."""

    def __init__(self, delays: dict[str, float]) -> None:
        self.delays = delays
        self.pushed_at = 0.0
        self.pulls = 0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return list(self.delays)

    def pull_messages(self, message_ids):
        self.pulls += 1
        elapsed = time.monotonic() - self.pushed_at
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in message_ids
            if self.delays[i] <= elapsed
        ]


def test_returns_soon_after_the_last_reply():
    inner = FakeGrid({"a": 0.1, "b": 0.3})
    grid = PromptGrid(inner, interval=0.05)  # type: ignore[arg-type]
    t0 = time.monotonic()
    replies = list(grid.send_and_receive([], timeout=10))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert time.monotonic() - t0 < 1.0  # Flower's own Grid would take 3 s here


def test_gives_up_at_the_timeout_with_what_arrived():
    grid = PromptGrid(FakeGrid({"a": 0.05, "dead": 1e9}), interval=0.05)  # type: ignore[arg-type]
    t0 = time.monotonic()
    replies = list(grid.send_and_receive([], timeout=0.5))
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.5 <= time.monotonic() - t0 < 1.5


def test_a_waiting_round_names_the_nodes_it_still_waits_for():
    waited: list[list[int]] = []
    grid = PromptGrid(
        FakeGrid({"a": 0.05, "dead": 1e9}),  # type: ignore[arg-type]
        interval=0.05,
        on_wait=waited.append,
        report_every=0.1,
    )
    messages = [SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n)) for n in (7, 8)]
    list(grid.send_and_receive(messages, timeout=0.5))  # type: ignore[arg-type]
    assert waited and all(ids == [8] for ids in waited)  # "a" answered before the first report


class Clock:
    """A ``time`` module that records sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def monotonic(self) -> float:
        return 42.0


def test_supernode_sleeps_are_capped_and_the_rest_delegates():
    clock = Clock()
    shim = CappedSleep(0.5, real=clock)  # type: ignore[arg-type]
    shim.sleep(3)  # idle: no message for this node
    shim.sleep(0.5)  # waiting for a ClientApp's reply
    shim.sleep(0.05)
    assert clock.slept == [0.5, BUSY_CAP, 0.05]
    assert shim.monotonic() == 42.0
