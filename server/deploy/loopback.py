"""A whole federation on one machine (127.0.0.1): for the tests, the benchmark, a dry run.

``make_federation`` lays out what the operator guide tells a coordinator and each site to
make, with fedmodel's own tools (``fedmodel.crypto.pki`` for the CA and the SuperLink
certificate, ``fedmodel.crypto.keys`` for each node's keys), on free ports. ``start`` runs a
``fedmodel`` command in its own session, and ``kill_group`` stops that session by the leader's
PID, so nothing started here outlives its caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmodel.crypto.keys import generate_node_identity
from fedmodel.crypto.pki import init_ca, issue_server_cert
from fedmodel.scenarios import _dump_toml
from server.deploy.processes import free_port

FEDMODEL = [sys.executable, "-m", "fedmodel.cli.main"]


@dataclass
class Federation:
    root: Path
    port: int
    nodes: list[str]
    registered: list[str]
    insecure: bool = False
    round_timeout: float = 30.0
    budget: float = 50.0
    unbudgeted: list[str] = field(default_factory=list)  # nodes with no cap (no-DP sites)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployment: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # a site's own files, [data]

    @property
    def server_toml(self) -> Path:
        return self.root / "coordinator" / "server.toml"

    def node_toml(self, name: str) -> Path:
        return self.root / name / "node.toml"


def make_federation(fed: Federation) -> Federation:
    """Coordinator folder + one folder per node; only ``registered`` nodes are in server.toml.

    ``deployment[name]`` adds to (or overrides) a node's ``[deployment]`` table, ``"*"`` to all.
    """
    pki = fed.root / "coordinator" / "pki"
    init_ca(pki)
    issue_server_cert(pki, ["localhost"], ["127.0.0.1"])
    for index, name in enumerate(fed.nodes):
        _make_node(fed, name, index)
    _write_server_toml(fed)
    return fed


def loopback(root: Path, nodes: list[str], registered: list[str], **kwargs: Any) -> Federation:
    return make_federation(Federation(root, free_port(), nodes, registered, **kwargs))


def _make_node(fed: Federation, name: str, index: int) -> None:
    folder = fed.root / name
    generate_node_identity(name, folder / "keys")
    (folder / "pki").mkdir(parents=True)
    (folder / "pki" / "ca.crt").write_bytes((fed.root / "coordinator/pki/ca.crt").read_bytes())
    deployment: dict[str, Any] = {"superlink": f"127.0.0.1:{fed.port}", "runtime_port": free_port()}
    if fed.insecure:
        deployment["insecure"] = True
    else:
        deployment |= {"root_certificates": "pki/ca.crt", "auth_key": f"keys/{name}.auth"}
    deployment |= fed.deployment.get("*", {}) | fed.deployment.get(name, {})
    cfg: dict[str, Any] = {  # no [data]: the coordinator assigns each its packaged partition
        "name": name,
        "ledger_dir": "ledger",
        "signing_key": f"keys/{name}.ed25519",
        "policy": fed.policies.get(name, {}),
        "deployment": deployment,
    }
    if name in fed.data:
        cfg["data"] = fed.data[name]
    if name not in fed.unbudgeted:
        cfg["budget"] = {"epsilon": fed.budget, "delta": 1e-5}
    fed.node_toml(name).write_text(_dump_toml(cfg))


def _write_server_toml(fed: Federation) -> None:
    cfg: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": fed.port,
        "control_port": free_port(),
        "run": {"out_dir": "runs", "round_timeout": fed.round_timeout},
    }
    if fed.insecure:
        cfg["insecure"] = True
    else:
        cfg["tls"] = {"ca": "pki/ca.crt", "cert": "pki/server.pem", "key": "pki/server.key"}
    text = _dump_toml(cfg)
    for index, name in enumerate(fed.registered):
        keys = fed.root / name / "keys"
        text += (
            f'\n[[nodes]]\nname = "{name}"\npartition_id = {index}\n'
            f'auth_public_key = "{keys / f"{name}.auth.pub"}"\n'
            f'ledger_public_key = "{keys / f"{name}.ed25519.pub"}"\n'
        )
    fed.server_toml.write_text(text)


def start(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """``fedmodel ARGS`` in its own session, output appended to ``log``; ``cwd`` is the folder
    an operator would run it in (relative paths in ARGS are relative to it)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*FEDMODEL, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal the session's process group by its leader's PID, then SIGKILL, then reap.

    Only while the leader is unreaped: after that its PID (= the group id) may be reused. Our
    supervisors' children die with them (PR_SET_PDEATHSIG), so nothing is left behind.
    """
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def wait_for_count(
    path: Path, text: str, count: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    """Poll a log until ``text`` appears ``count`` times; fail fast if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = path.read_text(errors="replace") if path.is_file() else ""
        if seen.count(text) >= count:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}) before {text!r}:\n{seen[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} x{count} not in {path} after {timeout}s:\n{seen[-3000:]}")
