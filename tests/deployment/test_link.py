"""``link.json`` from the SuperNode's own lines (as Flower 1.41 prints them in ``node.log``):
the state follows the latest line that changes the link, so a reconnection after a SuperLink
restart reads "connected" again, and a new key or SuperLink address starts a fresh record."""

from __future__ import annotations

from clients.daemon import link as lk
from fedmodel.node_config import NodeDeployment

STARTING = "INFO :      Starting Flower SuperNode"
NODE_ID = "INFO :      SuperNode ID: 1439486021737048666"
LOST = "WARNING :   Connection attempt failed, retrying in 5.23 seconds"
BACK = "INFO :      Connection successful after 33.30 seconds and 7 tries."
REFUSED = "Failed to activate SuperNode."


def dep(tmp_path, superlink: str = "127.0.0.1:9092") -> NodeDeployment:
    return NodeDeployment(superlink=superlink, insecure=True, state_dir=tmp_path)


def feed(watch: lk.LinkWatch, *lines: str) -> None:
    for line in lines:
        watch.line(line)


def test_a_reconnection_after_failures_reads_connected_again(tmp_path):
    watch = lk.LinkWatch(dep(tmp_path))
    feed(watch, STARTING, NODE_ID)
    assert lk.read_link(dep(tmp_path)).state == lk.STATE_CONNECTED
    feed(watch, LOST, LOST)
    down = lk.read_link(dep(tmp_path))
    assert down.state == lk.STATE_UNREACHABLE and "retrying in 5.23" in down.detail
    feed(watch, BACK)
    back = lk.read_link(dep(tmp_path))
    assert back.state == lk.STATE_CONNECTED and back.node_id == "1439486021737048666"


def test_a_success_before_activation_is_not_connected(tmp_path):
    watch = lk.LinkWatch(dep(tmp_path))
    feed(watch, STARTING, LOST, BACK)
    assert lk.read_link(dep(tmp_path)).state == lk.STATE_STARTING


def test_acceptance_is_remembered_across_starts_and_forgotten_for_another_superlink(tmp_path):
    first = lk.LinkWatch(dep(tmp_path))
    assert first.accepted_before is None
    feed(first, STARTING, REFUSED)
    first.stopped()  # a refusal stays the last word
    assert lk.read_link(dep(tmp_path)).state == lk.STATE_REFUSED
    feed(lk.LinkWatch(dep(tmp_path)), STARTING, NODE_ID)
    again = lk.LinkWatch(dep(tmp_path))
    assert again.accepted_before is not None  # a later refusal may be a crashed self
    assert lk.read_link(dep(tmp_path)).state == lk.STATE_STARTING  # not the last run's state
    assert lk.LinkWatch(dep(tmp_path, "127.0.0.2:9092")).accepted_before is None
