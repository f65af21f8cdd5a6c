"""``fedmodel node start``: a site's SuperNode and its ClientApp launcher, in the foreground.

Process tree (all stopped by PID; children die with the supervisor)::

    fedmodel node start            supervisor: log file, pid file, signals, exit status
      python -m clients.daemon.supernode_main   Flower's flower-supernode (--isolation process)
      python -m clients.daemon.launcher         ClientApp launcher: code gate, one fork per task

The SuperNode never starts a ClientApp itself (``--isolation process``): every task goes
through the launcher, which runs only this site's installed fedmodel ClientApp
(``clients/daemon/code_gate.py``), warm or not. The supervisor exits when either child does,
so systemd's ``Restart=on-failure`` brings the whole node back; a node the SuperLink keeps
refusing for longer than a crashed instance can hold its place (unregistered key) exits with
status 3, which the unit file excludes from restarts, because retrying cannot fix it.
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
from fedmodel.errors import FedmodelError
from fedmodel.node_config import NodeConfig, NodeDeployment
from server.deploy.flower import flower_bin, flower_env
from server.deploy.processes import (
    Child,
    ServiceError,
    close_log,
    flower_exit,
    install_stop_handlers,
    read_pid_file,
    rotating_log,
    stop_all,
    supervise,
    write_pid_file,
)

PID_FILE = "node.pid"
SECRET_FILE = "superexec.secret"
FLOWER_POLL = 3.0  # flower-supernode's own idle poll; at this value the stock binary runs
LAUNCHER_POLL = 0.1  # loopback AcquireTask calls to this node's own SuperNode (~1 ms each)
REFUSED_EXIT = 3
ACTIVATION_FAILED = "Failed to activate SuperNode"
RETRY_DELAY = 5.0


class NodeRefused(FedmodelError):
    """The SuperLink would not accept this node: retrying cannot help (not restarted)."""

    exit_code = REFUSED_EXIT


def run_node(config: str | Path, say: Callable[[str], None]) -> None:
    """Start, supervise until SIGTERM/SIGINT or a child exits, stop everything."""
    node, dep, source = load_deployed_node(config)
    check_budget(node, source)
    check_port_free(dep, source)
    _refuse_second_instance(dep)
    state = _prepare_state(dep)
    log = rotating_log(dep.log_file, max_bytes=dep.log_max_bytes, backups=dep.log_backups,
                       name=node.name)  # fmt: skip

    def tell(text: str) -> None:
        log.info("[fedmodel] %s", text)
        say(text)

    stop = threading.Event()
    install_stop_handlers(stop)
    env = flower_env(state / "flwr-home", {"PYTHONUNBUFFERED": "1"})

    def supernode() -> Child:
        return Child("supernode", supernode_argv(node, dep, source, state), env=env, log=log)

    children: list[Child] = []
    try:
        children.append(supernode())
        children.append(Child("launcher", launcher_argv(dep, state), env=env, log=log))
        write_pid_file(state / PID_FILE, _pid_info(node, dep, children))
        tell(f"node {node.name} started: SuperLink {dep.superlink}, log {dep.log_file}")
        _supervise(children, stop, supernode, tell, dep.activation_grace,
                   lambda c: _explain_exit(c, node, dep))  # fmt: skip
        tell("stopping")
    finally:
        stop_all(children)
        (state / PID_FILE).unlink(missing_ok=True)
        close_log(log)


def _supervise(
    children: list[Child],
    stop: threading.Event,
    supernode: Callable[[], Child],
    tell: Callable[[str], None],
    grace: float,
    fail: Callable[[Child], NoReturn],
) -> None:
    """Until stopped; a refused activation is retried for ``grace`` seconds, because the
    SuperLink counts a crashed instance of this node as online until two heartbeats (2 x 30 s)
    are missed, and refuses a second activation exactly as it refuses an unregistered key."""
    refused_since: float | None = None
    while (exited := supervise(children, stop)) is not None:
        if exited is not children[0] or not exited.saw(ACTIVATION_FAILED):
            fail(exited)
        refused_since = refused_since or time.monotonic()
        if time.monotonic() - refused_since >= grace:
            fail(exited)
        tell(f"SuperLink refused activation; retrying in {RETRY_DELAY:.0f}s (a crashed "
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


def _prepare_state(dep: NodeDeployment) -> Path:
    """State folder (0700) and a fresh SuperExec secret: only our launcher may take tasks."""
    state = dep.state_dir
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    secret = state / SECRET_FILE
    secret.unlink(missing_ok=True)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return state


def _refuse_second_instance(dep: NodeDeployment) -> None:
    running = read_pid_file(dep.state_dir / PID_FILE)
    if running is not None:
        raise ServiceError(f"{dep.state_dir}: this node is already running (pid {running['pid']})")


def _pid_info(node: NodeConfig, dep: NodeDeployment, children: list[Child]) -> dict[str, object]:
    return {
        "node": node.name,
        "superlink": dep.superlink,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "children": {c.name: c.pid for c in children},
    }


def _explain_exit(child: Child, node: NodeConfig, dep: NodeDeployment) -> NoReturn:
    """A child ended on its own: say why in one line, and pick the exit status."""
    child.stop()
    if child.saw(ACTIVATION_FAILED):
        key = f"{dep.auth_key}.pub" if dep.auth_key else "its auth public key"
        raise NodeRefused(
            f"{node.name}: the SuperLink at {dep.superlink} refused this node "
            f"({flower_exit(child, ACTIVATION_FAILED)}; retried {dep.activation_grace:.0f}s); "
            f"ask the coordinator to register {key}"
        )
    why = flower_exit(child) or f"exit status {child.proc.returncode}"
    raise ServiceError(f"{node.name}: {child.name} stopped ({why}); see {dep.log_file}")
