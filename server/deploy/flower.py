"""Flower's command-line tools, run the same way everywhere in the deployment code.

Every Flower process gets fedmodel's Flower environment (no telemetry, no update check, no
runtime ``uv sync``), a private ``FLWR_HOME``, and this interpreter's ``bin`` first on ``PATH``:
``flower-superlink`` and ``flower-supernode`` start their helpers (``flower-superexec``,
``flwr-serverapp``) by name, and they must come from the same environment as fedmodel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fedmodel.io import atomic_write_text
from fedmodel.simulation import FLOWER_ENV
from server.deploy.processes import ServiceError

CONNECTION = "fedmodel"


def flower_bin(name: str) -> str:
    """``name`` from this interpreter's environment, else from ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name}: not found; install fedmodel's requirements (flwr 1.41)")
    return found


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **FLOWER_ENV, **(extra or {})}
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def write_connection(flwr_home: Path, address: str, ca: Path | None = None) -> None:
    """The ``fedmodel`` connection in ``$FLWR_HOME/config.toml`` that ``flwr`` commands use.

    The coordinator's own connection is its loopback control port (plain HTTP, never leaves
    the host: no ``ca``); ``ca`` is for a connection over TLS.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca}"' if ca is not None else "insecure = true"
    atomic_write_text(
        flwr_home / "config.toml",
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n',
    )


def flwr(args: list[str], env: dict[str, str], *, timeout: float = 120) -> str:
    """Run ``flwr ARGS`` to completion; its output, or a ServiceError quoting its last line."""
    try:
        done = subprocess.run(
            [flower_bin("flwr"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"flwr {args[0]} {args[1]}: no answer in {timeout:.0f}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ServiceError(f"flwr {' '.join(args[:2])} failed: {last}")
    return done.stdout


def register_supernode(public_key: Path, name: str, env: dict[str, str]) -> str:
    """Allow one node's auth key; "registered" or "already registered". Idempotent."""
    out = flwr(
        ["supernode", "register", str(public_key), CONNECTION, "--name", name, "--format", "json"],
        env,
    )
    try:
        answer = json.loads(out[out.index("{") :])
    except ValueError:
        raise ServiceError(f"flwr supernode register {name}: unexpected output {out!r}") from None
    if answer.get("success"):
        return "registered"
    message = " ".join(str(answer.get("error-message", "")).split())
    if "already in use" in message:
        return "already registered"
    raise ServiceError(f"registering node {name}: {message}")
