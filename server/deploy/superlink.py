"""``fedmodel server start``: the coordinator's SuperLink, supervised in the foreground.

Starts Flower's SuperLink (through ``superlink_main``: the Fleet API alone on the public port,
the Control and Runtime APIs on 127.0.0.1:<control_port>) with TLS, SuperNode authentication
and a persistent database (so registrations and run history survive restarts), runtime
dependency installation off; waits for both ports; registers the auth key of every node in
server.toml over the loopback control port (idempotent: a key registered on a previous start
is reported as such); makes the ServerApp's sealing keys once (their fingerprints are what
sites pin, docs/operator-guide.md section 5); then waits until SIGTERM/SIGINT or until the
SuperLink exits, and stops it by PID. Its output, and that of the ServerApps it launches, goes
to a size-rotated log file.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from fedmodel.config import ConfigError
from server.deploy.config import CONTROL_HOST, ServerConfig
from server.deploy.flower import flower_env, register_supernode, write_connection
from server.deploy.pidfile import (
    claim_pid_file,
    read_pid_file,
    record,
    release_pid_file,
    update_pid_file,
)
from server.deploy.processes import (
    Child,
    ServiceError,
    close_log,
    flower_exit,
    install_stop_handlers,
    port_in_use,
    rotating_log,
    stop_all,
    supervise,
    wait_for_port,
)
from server.sealing import ensure_server_keys

READY_TIMEOUT = 60.0
# the SuperLink's own SuperExec checks for a new run every second by default; runs start sooner
SUPEREXEC_POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}


def superlink_argv(cfg: ServerConfig) -> list[str]:
    """Flower's SuperLink flags, run by ``superlink_main`` (public Fleet, loopback control)."""
    argv = [sys.executable, "-m", "server.deploy.superlink_main"]
    argv += ["--control-port", str(cfg.control_port), "--host", cfg.host, "--port", str(cfg.port)]
    argv += ["--database", str(cfg.database), "--disable-runtime-dependency-installation"]
    if cfg.tls is None:
        return [*argv, "--insecure"]
    argv += ["--ssl-ca-certfile", str(cfg.tls.ca), "--ssl-certfile", str(cfg.tls.cert)]
    return [*argv, "--ssl-keyfile", str(cfg.tls.key), "--enable-supernode-auth"]


def run_superlink(cfg: ServerConfig, say: Callable[[str], None]) -> None:
    """Claim the pid file, start, register the nodes, supervise until stopped; every failure
    is one line. The pid file exists from the first moment, so ``server stop`` works while the
    SuperLink is still starting."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.chmod(0o700)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    info: dict[str, object] = {"address": cfg.public_address, "control": cfg.control_address,
                               "started": started}  # fmt: skip
    claim_pid_file(cfg.pid_file, info, "the SuperLink")
    try:
        _check_ports(cfg)
        _serve(cfg, say, info)
    finally:
        release_pid_file(cfg.pid_file)


def _serve(cfg: ServerConfig, say: Callable[[str], None], info: dict[str, object]) -> None:
    log = rotating_log(cfg.log_file, max_bytes=cfg.log_max_bytes, backups=cfg.log_backups,
                       name="superlink")  # fmt: skip

    def tell(text: str) -> None:
        log.info("[fedmodel] %s", text)
        say(text)

    stop = threading.Event()
    install_stop_handlers(stop)
    env = flower_env(cfg.flwr_home, SUPEREXEC_POLL)
    children: list[Child] = []
    try:
        children.append(Child("superlink", superlink_argv(cfg), env=env, log=log))
        info["children"] = {"superlink": record(children[0].pid)}
        update_pid_file(cfg.pid_file, info)
        _wait_ready(cfg, children[0])
        write_connection(cfg.flwr_home, cfg.control_address)
        for line in register_nodes(cfg, env):
            tell(line)
        keys = ensure_server_keys(cfg.server_keys_dir)
        tell(f"ServerApp keys in {cfg.server_keys_dir}: sites pin exchange key "
             f"{keys.exchange_fingerprint} and verify key {keys.verify_key_path}")  # fmt: skip
        tell(f"SuperLink ready on {cfg.public_address} (Fleet API only; control on "
             f"{cfg.control_address}, this host only) (log {cfg.log_file})")  # fmt: skip
        exited = supervise(children, stop)
        if exited is not None:
            why = flower_exit(exited) or f"exit status {exited.proc.returncode}"
            raise ServiceError(f"the SuperLink stopped ({why}); see {cfg.log_file}")
        tell("stopping")
    finally:
        stop_all(children)
        close_log(log)


def register_nodes(cfg: ServerConfig, env: dict[str, str]) -> list[str]:
    """Register every node's auth key, concurrently (each `flwr` call costs ~2 s of start-up)."""
    nodes = [n for n in cfg.nodes if n.auth_public_key is not None]
    if not cfg.node_auth or not nodes:
        return []
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = pool.map(lambda n: register_supernode(n.auth_public_key, n.name, env), nodes)
        return [f"node {n.name}: {o}" for n, o in zip(nodes, outcomes, strict=True)]


def _wait_ready(cfg: ServerConfig, child: Child) -> None:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    for where, port in ((CONTROL_HOST, cfg.control_port), (host, cfg.port)):
        if not wait_for_port(where, port, timeout=READY_TIMEOUT, alive=child.alive):
            child.stop()
            why = flower_exit(child) or (child.tail[-1] if child.tail else "no output")
            raise ServiceError(f"the SuperLink did not start: {why}; see {cfg.log_file}")


def _check_ports(cfg: ServerConfig) -> None:
    for host, port in ((cfg.host or "127.0.0.1", cfg.port), (CONTROL_HOST, cfg.control_port)):
        if port_in_use(host, port):
            raise ServiceError(f"{host}:{port} is already in use")


def register_node(cfg: ServerConfig, source: Path, name: str) -> str:
    """``fedmodel server register-node``: let one ``[[nodes]]`` entry's auth key in now, on the
    running SuperLink, without a restart (a start registers every entry anyway). This is the
    command a refused node's message names."""
    node = next((n for n in cfg.nodes if n.name == name), None)
    if node is None:
        raise ConfigError(
            f"{source}: no [[nodes]] entry named {name!r}: add one with name, "
            "auth_public_key and ledger_public_key (the files the site sent), then run this again"
        )
    if not cfg.node_auth or node.auth_public_key is None:
        raise ConfigError(f"{source}: node {name!r}: no auth_public_key (node auth is off)")
    if read_pid_file(cfg.pid_file) is None:
        raise ServiceError(
            f"the SuperLink for {source} is not running: `fedmodel server start` registers "
            f"every [[nodes]] entry, {name!r} included"
        )
    outcome = register_supernode(node.auth_public_key, name, flower_env(cfg.flwr_home))
    return f"node {name}: {outcome}"
