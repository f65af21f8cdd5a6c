"""Flower's in-memory link state, indexed by node, for simulations with many virtual nodes.

Flower 1.41's Simulation Engine hands each virtual node its messages from one thread that asks
the link state, every 0.1 s, for every node's next message (``vce_api.add_messages_to_queue``),
and ``InMemoryLinkState.get_message_ins`` answers each question by checking every stored
message. One sweep is nodes x messages: with 10,000 nodes and a round's 1,000 requests out,
ten million checks, all under the state's lock. Measured on the 10,000-node benchmark before
this module: the simulation's main process used 300 CPU seconds while the two Ray actors that
train used 47 each, and py-spy put 89 % of its samples in that thread.

:class:`IndexedLinkState` keeps, per destination node, the ids of its stored messages, and
answers ``get_message_ins`` from that node's ids only, with Flower's own checks in Flower's
order (expiry and federation via ``_check_stored_messages``, run, not yet delivered, limit); a
node with nothing stored is answered at once, without the lock or a clock read (after the index,
py-spy found half of that thread in ``now().isoformat()``, called for each node each sweep).
:func:`indexed_link_state` makes the Simulation Engine create it for the duration of a
simulation: ``LinkStateFactory`` offers no hook, so the class it instantiates is swapped and put
back, and only where this Flower's state class still has the methods the index relies on.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import Message
from flwr.server.superlink.linkstate import linkstate_factory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

_RELIED_ON = {
    "store_message_ins": ["self", "message"],
    "delete_messages": ["self", "message_ins_ids"],
    "get_message_ins": ["self", "node_id", "limit", "run_id"],
    "_check_stored_messages": ["self", "message_ids", "run_id"],
}


class IndexedLinkState(InMemoryLinkState):
    """``InMemoryLinkState`` whose ``get_message_ins`` looks at one node's messages only."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ins_by_node: dict[int, dict[str, None]] = {}  # insertion-ordered ids per node

    def store_message_ins(self, message: Message) -> str | None:
        with self.lock:
            message_id = super().store_message_ins(message)
            if message_id is not None and message_id in self.message_ins_store:
                node = self.message_ins_store[message_id].metadata.dst_node_id
                self._ins_by_node.setdefault(node, {})[message_id] = None
        return message_id

    def delete_messages(self, message_ins_ids: set[str]) -> None:
        with self.lock:
            gone = {
                m: self.message_ins_store[m]
                for m in message_ins_ids or ()
                if m in self.message_ins_store
            }
            super().delete_messages(message_ins_ids)
            for message_id, message in gone.items():
                ids = self._ins_by_node.get(message.metadata.dst_node_id)
                if ids is not None and message_id not in self.message_ins_store:
                    ids.pop(message_id, None)

    def get_message_ins(
        self, node_id: int, limit: int | None, *, run_id: int | None = None
    ) -> list[Message]:
        """Flower's ``get_message_ins`` over this node's stored messages only."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        if not self._ins_by_node.get(node_id):  # most nodes, most sweeps: nothing stored
            return []
        found: list[Message] = []
        with self.lock:
            for msg_id in list(self._ins_by_node.get(node_id, ())):
                self._check_stored_messages({msg_id})
                msg_ins = self.message_ins_store.get(msg_id)
                if (
                    msg_ins is not None
                    and msg_ins.metadata.dst_node_id == node_id
                    and (run_id is None or msg_ins.metadata.run_id == run_id)
                    and msg_ins.metadata.delivered_at == ""
                ):
                    found.append(msg_ins)
                if limit and len(found) == limit:
                    break
        if not found:
            return found
        delivered_at = now().isoformat()  # a clock read per node per sweep cost more than the rest
        for msg_ins in found:
            msg_ins.metadata.delivered_at = delivered_at
        return found


def index_applies() -> bool:
    """This Flower's state class still has the methods, with the parameters, the index uses."""
    if getattr(linkstate_factory, "InMemoryLinkState", None) is not InMemoryLinkState:
        return False
    for name, params in _RELIED_ON.items():
        method = getattr(InMemoryLinkState, name, None)
        if method is None or list(inspect.signature(method).parameters) != params:
            return False
    return True


@contextmanager
def indexed_link_state() -> Iterator[bool]:
    """Within the block, Flower's in-memory link states are :class:`IndexedLinkState`; yields
    whether the index is in use (``False``: this Flower differs, nothing is changed)."""
    if not index_applies():
        yield False
        return
    linkstate_factory.InMemoryLinkState = IndexedLinkState
    try:
        yield True
    finally:
        linkstate_factory.InMemoryLinkState = InMemoryLinkState
