"""PID files and ``stop`` on real processes (no Flower): what is stopped, what is never touched.

Each "supervisor" here is a real Python process in its own session that writes its PID file
the way ``fedmodel server start`` / ``node start`` do (``claim_pid_file``); one ignores SIGTERM
to show the escalation to SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli.server_cmd import app as server_app
from server.deploy.pidfile import (
    PidFileError,
    claim_pid_file,
    inspect_pid_file,
    process_identity,
    stop_service,
)

SUPERVISOR = """
import signal, sys, time
from pathlib import Path
from server.deploy.pidfile import claim_pid_file
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
claim_pid_file(Path(sys.argv[1]), {"what": "test"}, "test service")
print("claimed", flush=True)
time.sleep(600)
"""


def supervisor(pid_file: Path, mode: str = "polite") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(pid_file), mode],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    return proc


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_stop_terminates_the_supervisor_and_removes_its_pid_file(tmp_path, procs):
    pid_file = tmp_path / "node.pid"
    procs.append(proc := supervisor(pid_file))
    said: list[str] = []
    stop_service(pid_file, "test service", said.append, timeout=10)
    assert proc.wait(timeout=5) != 0 and not pid_file.exists()
    assert said == [f"stopped test service (pid {proc.pid})"]


def test_a_supervisor_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path, procs):
    pid_file = tmp_path / "node.pid"
    procs.append(proc := supervisor(pid_file, "stubborn"))
    said: list[str] = []
    t0 = time.monotonic()
    stop_service(pid_file, "test service", said.append, timeout=1)
    assert proc.wait(timeout=5) == -9 and time.monotonic() - t0 < 8
    assert said == [f"stopped test service (pid {proc.pid}): no clean exit within 1s, killed"]
    assert not pid_file.exists()


def test_a_second_claim_is_refused_while_the_first_runs(tmp_path, procs):
    pid_file = tmp_path / "node.pid"
    procs.append(proc := supervisor(pid_file))
    with pytest.raises(PidFileError, match=f"already running \\(pid {proc.pid}\\)"):
        claim_pid_file(pid_file, {}, "test service")


def test_a_reused_pid_is_stale_and_never_signalled(tmp_path):
    """The file names this test's own process, but with another start time: as after a reboot
    that gave the PID to someone else. ``stop`` removes the file and signals nothing."""
    pid_file = tmp_path / "node.pid"
    pid_file.write_text(json.dumps({"pid": os.getpid(), "identity": "another-boot:1"}))
    said: list[str] = []
    stop_service(pid_file, "test service", said.append, timeout=1)
    assert said == [f"test service is not running (removed stale pid file {pid_file}: "
                    f"pid {os.getpid()} is now another process)"]  # fmt: skip
    assert not pid_file.exists()  # and this process is still here to check it


def test_a_stale_pid_file_does_not_block_a_start(tmp_path):
    pid_file = tmp_path / "node.pid"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid_file.write_text(json.dumps({"pid": int(gone.stdout), "identity": "x"}))
    claim_pid_file(pid_file, {"what": "test"}, "test service")
    info, why = inspect_pid_file(pid_file)
    assert why == "running" and info is not None and info["pid"] == os.getpid()
    assert info["identity"] == process_identity(os.getpid())


def test_stop_with_no_pid_file_says_not_running(tmp_path):
    said: list[str] = []
    stop_service(tmp_path / "node.pid", "test service", said.append, timeout=1)
    assert said == [f"test service is not running (no pid file {tmp_path / 'node.pid'})"]


@pytest.mark.parametrize("command", ["stop", "register-node"])
def test_a_bad_config_path_is_one_line_and_exit_2(tmp_path, command):
    extra = ["--name", "x"] if command == "register-node" else []
    result = CliRunner().invoke(server_app, [command, "--config", str(tmp_path / "nope.toml"),
                                             *extra])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {tmp_path / 'nope.toml'}: no such config file"
