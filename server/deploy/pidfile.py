"""PID files of the fedmodel supervisors: claimed once, believed only for their writer.

``fedmodel server start`` and ``fedmodel node start`` each claim a PID file in their state
folder before they start anything; ``stop`` and ``status`` find the supervisor through it. A PID
alone is not an identity: after a crash and a reboot (or PID wrap-around) the number may belong
to an unrelated process, which ``stop`` must never signal and which must not keep ``start``
from running. So the file also records the process's identity (the kernel's boot id and the
process's start time in clock ticks, from ``/proc``): a file whose PID is gone, or now names a
process that started at another time, is stale. Linux only, like the rest of the supervisors
(``PR_SET_PDEATHSIG``).

``stop`` does what systemd's ``KillMode=mixed`` does (docs/systemd): SIGTERM to the supervisor
alone, which stops the launcher before the SuperNode (so the SuperNode leaves the federation
cleanly) and the SuperLink in its turn; after the timeout, SIGKILL to the supervisor's process
group (when it leads one) and to every child the file records. A SIGTERM to the whole group at
once would hit the ClientApp tasks and the SuperNode in no particular order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedmodel.errors import FedmodelError
from fedmodel.io import atomic_write_json

KILL_WAIT = 5.0


class PidFileError(FedmodelError):
    """Another live instance holds the PID file, or it cannot be read or written."""


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of a live process, None if it is gone or a zombie.

    The pair (PID, identity) names one process for the life of the machine.
    """
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of proc(5), the 20th after the name


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has exited, only unreaped)."""
    return process_identity(pid) is not None


def record(pid: int) -> dict[str, object]:
    """What a PID file says about one process: its PID and identity."""
    return {"pid": pid, "identity": process_identity(pid)}


def claim_pid_file(path: Path, info: dict[str, object], what: str) -> None:
    """Become the one running ``what`` for this state folder, or say who already is.

    A stale file (its process gone, or the PID reused by another process) is replaced. The new
    file appears whole and only if none exists (hard link of a finished temporary file), so of
    two starts at the same moment exactly one wins.
    """
    running, why = inspect_pid_file(path)
    if running is not None:
        raise PidFileError(f"{path.parent}: {what} is already running (pid {running['pid']})")
    if why != "absent":
        path.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({**record(os.getpid()), **info}, fh, indent=2, sort_keys=True, default=str)
        os.link(tmp, path)
    except FileExistsError:
        raise PidFileError(f"{path.parent}: another {what} started at the same moment") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def update_pid_file(path: Path, info: dict[str, object]) -> None:
    """The owner adds what it learnt since the claim (its children's PIDs, addresses)."""
    atomic_write_json(path, {**record(os.getpid()), **info})


def release_pid_file(path: Path) -> None:
    """Remove the file if it is still this process's own (a ``stop`` may have removed it)."""
    running, _ = inspect_pid_file(path)
    if running is not None and running["pid"] == os.getpid():
        path.unlink(missing_ok=True)


def inspect_pid_file(path: Path) -> tuple[dict[str, object] | None, str]:
    """``(record, "running")`` if the process the file names is alive and is the one that wrote
    it; otherwise ``(None, why)``: ``absent``, or a short reason the file is stale."""
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "absent"
    except (OSError, ValueError) as err:
        return None, f"unreadable ({err})"
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None, "no pid in it"
    return _check(info)


def read_pid_file(path: Path) -> dict[str, object] | None:
    """The running supervisor's record, or None (absent, unreadable or stale)."""
    return inspect_pid_file(path)[0]


def stop_service(path: Path, what: str, say: Callable[[str], object], timeout: float) -> None:
    """``fedmodel server stop`` / ``fedmodel node stop``: one rule for both services.

    Stops the supervisor ``path`` names and whatever it left behind, removes the PID file and
    says what happened; a stale file is removed and reported. Nothing else in the state folder
    (keys, ledger, database) is touched.
    """
    running, why = inspect_pid_file(path)
    if running is None:
        if why == "absent":
            say(f"{what} is not running (no pid file {path})")
        else:
            path.unlink(missing_ok=True)
            say(f"{what} is not running (removed stale pid file {path}: {why})")
        return
    pid = running["pid"]
    if _terminate(running, timeout):
        say(f"stopped {what} (pid {pid})")
    else:
        say(f"stopped {what} (pid {pid}): no clean exit within {timeout:.0f}s, killed")
    path.unlink(missing_ok=True)


def _check(info: dict[str, object]) -> tuple[dict[str, object] | None, str]:
    pid = int(info["pid"])  # type: ignore[call-overload]
    now = process_identity(pid)
    if now is None:
        return None, f"pid {pid} is not running"
    if now != info.get("identity"):
        return None, f"pid {pid} is now another process"
    return info, "running"


def _terminate(running: dict[str, object], timeout: float) -> bool:
    """SIGTERM the supervisor, wait; then SIGKILL its group and recorded children. True if it
    exited by itself within ``timeout``."""
    supervisor = [{"pid": running["pid"], "identity": running.get("identity")}]
    children = _children(running)
    _signal(supervisor, signal.SIGTERM)
    clean = _wait_gone(supervisor, timeout)
    if not clean:
        pid = int(running["pid"])  # type: ignore[call-overload]
        if _leads_group(supervisor[0]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _signal(supervisor, signal.SIGKILL)
    if not _wait_gone(children, KILL_WAIT):  # they die with the supervisor (PDEATHSIG)
        _signal(children, signal.SIGKILL)
    _wait_gone(supervisor + children, KILL_WAIT)
    return clean


def _children(running: dict[str, object]) -> list[dict[str, object]]:
    children = running.get("children")
    if not isinstance(children, dict):
        return []
    return [c for c in children.values() if isinstance(c, dict) and isinstance(c.get("pid"), int)]


def _signal(processes: list[dict[str, object]], signum: int) -> None:
    """Signal each process that is still the one recorded (never a reused PID)."""
    for proc in processes:
        if _check(proc)[0] is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc["pid"]), signum)  # type: ignore[call-overload]


def _wait_gone(processes: list[dict[str, object]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_check(p)[0] is not None for p in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _leads_group(proc: dict[str, object]) -> bool:
    pid = int(proc["pid"])  # type: ignore[call-overload]
    try:
        return _check(proc)[0] is not None and os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "no-boot-id"
