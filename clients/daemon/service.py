"""``fedmodel node start``: a site's SuperNode and its ClientApp launcher, in the foreground.

Process tree (all stopped by PID; children die with the supervisor)::

    fedmodel node start            supervisor: log file, pid file, signals, exit status
      python -m clients.daemon.supernode_main   Flower's flower-supernode (--isolation process)
      python -m clients.daemon.launcher         ClientApp launcher: code gate, one fork per task

The SuperNode never starts a ClientApp itself (``--isolation process``): every task goes
through the launcher, which runs only this site's installed fedmodel ClientApp
(``clients/daemon/code_gate.py``), warm or not. The supervisor exits when either child does,
so systemd's ``Restart=on-failure`` brings the whole node back. A refused activation exits with
status 3, which the unit file excludes from restarts, because retrying cannot fix it: at once
when this SuperLink has never accepted the node's key (``link.json``: an unregistered key),
after ``activation_grace`` seconds when it has (a crashed instance of this node may still count
as online there, and Flower refuses both alike). Either way the message names the command the
coordinator runs to register the node.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from clients.daemon.checks import check_budget, check_port_free, load_deployed_node
from clients.daemon.link import Link, LinkWatch
from fedmodel.crypto.keys import public_path
from fedmodel.errors import FedmodelError
from fedmodel.node_config import NodeConfig, NodeDeployment
from server.deploy.flower import flower_bin, flower_env
from server.deploy.pidfile import claim_pid_file, record, release_pid_file, update_pid_file
from server.deploy.processes import (
    Child,
    ServiceError,
    close_log,
    flower_exit,
    install_stop_handlers,
    rotating_log,
    stop_all,
    supervise,
)

PID_FILE = "node.pid"
SECRET_FILE = "superexec.secret"
FLOWER_POLL = 3.0  # flower-supernode's own idle poll; at this value the stock binary runs
LAUNCHER_POLL = 0.1  # loopback AcquireTask calls to this node's own SuperNode (~1 ms each)
REFUSED_EXIT = 3
ACTIVATION_FAILED = "Failed to activate SuperNode"
RETRY_DELAY = 5.0
REGISTER = "fedmodel server register-node --config server.toml --name {name}"


class NodeRefused(FedmodelError):
    """The SuperLink would not accept this node: retrying cannot help (not restarted)."""

    exit_code = REFUSED_EXIT


def run_node(config: str | Path, say: Callable[[str], None]) -> None:
    """Claim the pid file, start, supervise until SIGTERM/SIGINT or a child exits, stop all."""
    node, dep, source = load_deployed_node(config)
    check_budget(node, source)
    dep.state_dir.mkdir(parents=True, exist_ok=True)
    dep.state_dir.chmod(0o700)
    pid_file = dep.state_dir / PID_FILE
    started = datetime.now(UTC).isoformat(timespec="seconds")
    info = {"node": node.name, "superlink": dep.superlink, "started": started}
    claim_pid_file(pid_file, info, f"node {node.name}")
    try:
        check_port_free(dep, source)  # after the claim: our own running node is named as such
        _serve(node, dep, source, say, info)
    finally:
        release_pid_file(pid_file)


def _serve(
    node: NodeConfig,
    dep: NodeDeployment,
    source: Path,
    say: Callable[[str], None],
    info: dict[str, object],
) -> None:
    state = _write_secret(dep)
    log = rotating_log(dep.log_file, max_bytes=dep.log_max_bytes, backups=dep.log_backups,
                       name=node.name)  # fmt: skip

    def tell(text: str) -> None:
        log.info("[fedmodel] %s", text)
        say(text)

    stop = threading.Event()
    install_stop_handlers(stop)
    env = flower_env(state / "flwr-home", {"PYTHONUNBUFFERED": "1"})
    watch = LinkWatch(dep)
    children: list[Child] = []

    def supernode() -> Child:
        child = Child("supernode", supernode_argv(node, dep, source, state), env=env, log=log,
                      on_line=watch.line)  # fmt: skip
        if children:  # a restart after a refusal: the pid file names the new one
            update_pid_file(state / PID_FILE, _with_children(info, [child, *children[1:]]))
        return child

    try:
        children.append(supernode())
        children.append(Child("launcher", launcher_argv(dep, state), env=env, log=log))
        update_pid_file(state / PID_FILE, _with_children(info, children))
        tell(f"node {node.name} started: SuperLink {dep.superlink}, log {dep.log_file}")
        _supervise(children, stop, supernode, tell, dep.activation_grace, watch,
                   lambda c: _explain_exit(c, node, dep, watch.accepted_before))  # fmt: skip
        tell("stopping")
    finally:
        stop_all(children)
        watch.stopped()
        close_log(log)


def _supervise(
    children: list[Child],
    stop: threading.Event,
    supernode: Callable[[], Child],
    tell: Callable[[str], None],
    grace: float,
    watch: LinkWatch,
    fail: Callable[[Child], NoReturn],
) -> None:
    """Until stopped. A refused activation ends the node at once if this SuperLink never
    accepted its key (unregistered: retrying cannot help); if it did, the refusal is retried
    for ``grace`` seconds, because the SuperLink counts a crashed instance of this node as
    online until two heartbeats (2 x 30 s) are missed, and refuses a second activation exactly
    as it refuses an unregistered key."""
    refused_since: float | None = None
    while (exited := supervise(children, stop)) is not None:
        if exited is not children[0] or not exited.saw(ACTIVATION_FAILED):
            fail(exited)
        accepted = watch.accepted_before
        refused_since = refused_since or time.monotonic()
        if accepted is None or time.monotonic() - refused_since >= grace:
            fail(exited)
        tell(f"SuperLink refused activation; retrying in {RETRY_DELAY:.0f}s (it accepted this "
             f"key before, as node id {accepted.node_id} at {accepted.accepted}: a crashed "
             "instance of this node may still count as online there)")  # fmt: skip
        if stop.wait(RETRY_DELAY):
            return
        children[0] = supernode()


def supernode_argv(node: NodeConfig, dep: NodeDeployment, source: Path, state: Path) -> list[str]:
    """flower-supernode's flags for this node (through the short-poll entry point if asked)."""
    args = ["--superlink", dep.superlink, "--host", "127.0.0.1", "--port", str(dep.runtime_port)]
    if dep.insecure:
        args.append("--insecure")
    else:
        args += ["--root-certificates", str(dep.root_certificates)]
        args += ["--auth-supernode-private-key", str(dep.auth_key)]
    args += ["--node-config", f'config="{source}"']
    args += ["--isolation", "process", "--superexec-auth-secret-file", str(state / SECRET_FILE)]
    if dep.poll_interval >= FLOWER_POLL:
        return [flower_bin("flower-supernode"), *args]
    return [sys.executable, "-m", "clients.daemon.supernode_main", str(dep.poll_interval), *args]


def launcher_argv(dep: NodeDeployment, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "clients.daemon.launcher",
        "--runtime-api-address", f"127.0.0.1:{dep.runtime_port}",
        "--secret-file", str(state / SECRET_FILE),
        "--poll", str(LAUNCHER_POLL),
        *([] if dep.warm_launcher else ["--cold"]),
    ]  # fmt: skip


def _write_secret(dep: NodeDeployment) -> Path:
    """A fresh SuperExec secret in the (0700) state folder: only our launcher may take tasks."""
    state = dep.state_dir
    secret = state / SECRET_FILE
    secret.unlink(missing_ok=True)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return state


def _with_children(info: dict[str, object], children: list[Child]) -> dict[str, object]:
    """The pid file's record with each child's PID and identity (``node stop`` kills leftovers)."""
    return {**info, "children": {c.name: record(c.pid) for c in children}}


def _explain_exit(
    child: Child, node: NodeConfig, dep: NodeDeployment, accepted: Link | None
) -> NoReturn:
    """A child ended on its own: say why in one line, and pick the exit status."""
    child.stop()
    if child.saw(ACTIVATION_FAILED):
        raise NodeRefused(_refusal(node, dep, flower_exit(child, ACTIVATION_FAILED), accepted))
    why = flower_exit(child) or f"exit status {child.proc.returncode}"
    raise ServiceError(f"{node.name}: {child.name} stopped ({why}); see {dep.log_file}")


def _refusal(
    node: NodeConfig, dep: NodeDeployment, flower: str | None, accepted: Link | None
) -> str:
    """One line: what the SuperLink did, and what the coordinator runs to let this node in."""
    key = public_path(dep.auth_key) if dep.auth_key else "this node's auth public key"
    said = flower or ACTIVATION_FAILED
    if accepted is None:
        what = f"refused this node: it has never accepted its auth key ({said})"
    else:
        what = (f"refused this node for {dep.activation_grace:.0f}s ({said}) although it accepted "
                f"its key before (node id {accepted.node_id}, {accepted.accepted}); the key may "
                "have been unregistered")  # fmt: skip
    return (f"{node.name}: the SuperLink at {dep.superlink} {what}. Send {key} to the "
            f'coordinator, who adds it to server.toml as a [[nodes]] entry named "{node.name}" '
            f"and runs: {REGISTER.format(name=node.name)}")  # fmt: skip
