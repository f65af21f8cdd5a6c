"""Child processes of the fedmodel services: started, logged, watched and stopped by PID.

``fedmodel server start`` and ``fedmodel node start`` are foreground supervisors (what systemd
expects): they own their Flower children, copy the children's output into a size-rotated log
file, and stop them by PID, never by name (other Flower processes may share the host). Children
ask the kernel for SIGTERM when the supervisor dies, so a supervisor killed with SIGKILL does not
leave a SuperLink or SuperNode holding its port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path

from fedmodel.errors import FedmodelError
from server.deploy.pidfile import pid_alive
from server.deploy.pidfile import read_pid_file as read_pid_file  # the rules live in pidfile

_PR_SET_PDEATHSIG = 1
TAIL_LINES = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ServiceError(FedmodelError):
    """A Flower service could not be started, or stopped on its own."""


def rotating_log(path: Path, *, max_bytes: int, backups: int, name: str) -> logging.Logger:
    """A logger that writes plain lines to ``path``, rotated by size (``path.1`` ... ``.N``).

    A private logger (``propagate`` off) so nothing else in the process writes into the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"fedmodel.service.{name}.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def close_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


class Child:
    """One supervised child: its output goes, line by line, to a log and a short in-memory tail.

    The tail lets the supervisor explain a failure (e.g. Flower's ``Exit Code: 305``) without
    re-reading a file that may just have rotated; ``on_line`` sees every line as it arrives
    (the node's link state is kept from its SuperNode's lines).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: logging.Logger,
        on_line: Callable[[str], object] | None = None,
    ) -> None:
        self.name = name
        self._on_line = on_line
        self.argv = list(argv)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._log = log
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            raise ServiceError(f"cannot start {name} ({self.argv[0]}): {err.strerror}") from None
        self._pump = threading.Thread(target=self._copy_output, name=f"log-{name}", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.tail))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:  # once reaped, its PID may belong to someone else
            terminate_pid(self.proc.pid, timeout=timeout, wait=self.proc.wait)
        self._pump.join(timeout=2)
        return self.proc.returncode

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = _strip_ansi(raw.decode("utf-8", "replace").rstrip())
            self.tail.append(line)
            if self._on_line is not None:  # first: whoever reads the log sees its effect
                self._on_line(line)
            self._log.info("[%s] %s", self.name, line)
        self.proc.stdout.close()


def terminate_pid(
    pid: int, *, timeout: float = 10.0, wait: Callable[[float], object] | None = None
) -> None:
    """Stop one process by PID: SIGTERM, wait, then SIGKILL. Never matches processes by name.

    ``wait`` is ``Popen.wait`` for our own children (it also reaps them); other processes
    (a supervisor found through its pid file) are polled.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _gone(pid, timeout, wait):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _gone(pid, 5.0, wait)


def _gone(pid: int, timeout: float, wait: Callable[[float], object] | None) -> bool:
    if wait is not None:
        try:
            wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for_port(host: str, port: int, *, timeout: float, alive: Callable[[], bool]) -> bool:
    """Poll until something accepts TCP connections on ``host:port``; False if ``alive`` fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just had free: bind port 0, read it back, release it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def supervise(children: list[Child], stop: threading.Event, poll: float = 0.5) -> Child | None:
    """Block until ``stop`` is set (None) or one child exits (that child)."""
    while not stop.wait(poll):
        for child in children:
            if not child.alive():
                return child
    return None


def stop_all(children: list[Child]) -> None:
    """Stop in reverse start order: helpers before the service they talk to."""
    for child in reversed(children):
        child.stop()


def flower_exit(child: Child, detail: str | None = None) -> str | None:
    """Flower's own reason for exiting: ``Exit Code: N`` and the line after it (or ``detail``)."""
    lines = list(child.tail)
    for i in range(len(lines) - 1, -1, -1):
        if "Exit Code:" in lines[i]:
            code = lines[i].split("Exit Code:", 1)[1].strip()
            after = next((li.strip() for li in lines[i + 1 :] if li.strip()), "")
            return f"Flower exit code {code}: {(detail or after).rstrip('.')}".rstrip(": ")
    return None


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM (systemd stop) and SIGINT (Ctrl-C) ask the supervisor loop to shut down."""

    def _handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the supervisor thread that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _strip_ansi(text: str) -> str:
    """Flower colours its log level names; a log file wants plain text."""
    return _ANSI.sub("", text)
