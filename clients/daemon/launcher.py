"""The node's ClientApp launcher: Flower's SuperExec job, with a code gate and warm imports.

The SuperNode runs with ``--isolation process``: it does not start ClientApps itself but hands
each task to whoever holds the SuperExec secret and asks its local Runtime API. This launcher is
that process. It asks every ``poll`` seconds and forks one child per task (a crash or a leak
ends with its task). The child does what Flower's ``run_clientapp`` does, with Flower's own
functions in Flower's order (pull the message, context, run and bundle; heartbeat; push the
reply, then the task's final status and context), except for one step: where Flower installs the
run's bundle (FAB) and imports the ``clientapp`` it names, the child checks the bundle's bytes
(``code_gate``) and calls the ClientApp this site installed. A bundle that names another
ClientApp, or ships Python code that differs from the installed fedmodel, is answered with
Flower's ``INVALID_FAB`` error and a one-line reason; nothing from it is written or imported.
Whoever submits a run can ask; only the site's own code decides.

Warm (the default): torch, Opacus and fedmodel are imported once, before the first fork, so a
task does not pay 4-10 s of imports. ``warm_launcher = false`` in node.toml (``--cold``) skips
that: each task imports in its own child, as a fresh ``flwr-clientapp`` would, through the same
gate.

Built on flwr 1.41 internals (``RuntimeHttpClient``, ``AcquireTask``, the helpers of
``flwr.supernode.runtime.run_clientapp``); the version is pinned in requirements.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.daemon.code_gate import BundleRefused, InstalledCode, check_bundle, installed_code

AUTH_METHOD = "/flwr.proto.Runtime/AcquireTask"


def preload() -> None:
    """Import what every task needs, once, before the first fork, and run it once in small.

    Importing is not enough: torch imports ~190 more modules (``torch._dynamo`` and friends)
    on the first optimiser step, Opacus and the PRV accountant initialise on first use, 2-3 s
    that every forked task would pay again. One tiny DP-SGD step and one accountant call here
    pay them once; the parent stays single-threaded (``torch.set_num_threads(1)``, set by the
    ClientApp module), so forking after it is safe.
    """
    import flwr.supernode.runtime.run_clientapp  # noqa: F401

    import clients.client_app  # noqa: F401  (torch, opacus, fedmodel, the ClientApp itself)

    warm_up()


def warm_up() -> None:
    import torch
    from torch.utils.data import TensorDataset

    from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
    from fedmodel.models import build_model
    from fedmodel.privacy.accountant import epsilon_from_history
    from fedmodel.training import train

    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    model = build_model(ModelConfig(name="mlp", hidden_sizes=[4]), (4,), 2)
    train(model, data, train_cfg=TrainConfig(batch_size=16, device="cpu"),
          optim_cfg=OptimizerConfig(), dp_cfg=DPConfig(noise_multiplier=1.0))  # fmt: skip
    for accountant in ("prv", "rdp"):
        epsilon_from_history([(1.0, 0.25, 4)], 1e-5, accountant)


def runtime_client(address: str, interceptors: Sequence[Any], retry_invoker: Any) -> Any:
    """Client for this node's own Runtime API: plain HTTP on 127.0.0.1, as Flower's SuperExec
    and ``flwr-clientapp`` use it (see the operator guide); returns a ``RuntimeHttpClient``."""
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=list(interceptors), retry_invoker=retry_invoker,
    )  # fmt: skip


def superexec_client(address: str, secret: bytes) -> Any:
    """The launcher's own client: AcquireTask signed with the SuperExec secret."""
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker

    interceptors = [
        RuntimeVersionHttpInterceptor(component_name="SuperExec"),
        SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={AUTH_METHOD}),
    ]
    return runtime_client(address, interceptors, make_simple_http_retry_invoker())


def acquire(client) -> tuple[str, int] | None:
    """One AcquireTask call: ``(token, task id)`` of a ClientApp task, or None."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    res = client.AcquireTask(
        AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    )
    if res.HasField("task") and res.token:
        return res.token, int(res.task.task_id)
    return None


@dataclass
class Outcome:
    """How one task ended, in ``run_clientapp``'s terms."""

    reply: Any  # flwr Message
    sub_status: str
    details: str
    exit_code: int


def answer(message: Any, context: Any, fab: bytes, installed: InstalledCode) -> Outcome:
    """The gate, then this site's installed ClientApp; a refusal or a raising ClientApp is
    Flower's error reply (``INVALID_FAB`` with the gate's reason, or Flower's own text)."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.exit import ExitCode

    try:
        check_bundle(fab, installed)
        from clients.client_app import app  # the installed one; preload() imported it if warm

        reply = app(message=message, context=context)
        return Outcome(reply, SubStatus.COMPLETED, "", ExitCode.SUCCESS)
    except BundleRefused as refused:
        print(f"task refused: {refused.reason}", flush=True)
        error = Error(code=ErrorCode.INVALID_FAB, reason=refused.reason)
        return Outcome(Message(error, reply_to=message), SubStatus.FAILED, refused.reason,
                       ExitCode.TASK_PROC_EXCEPTION)  # fmt: skip
    except Exception as ex:  # as run_clientapp words it
        details = str(type(ex)) + ":<'" + str(ex) + "'>"
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details)
        return Outcome(Message(error, reply_to=message), SubStatus.FAILED, details,
                       ExitCode.TASK_PROC_EXCEPTION)  # fmt: skip


def task_client(address: str, token: str) -> tuple[Any, Any]:
    """``run_clientapp``'s client for one task (its token), and its retry policy."""
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor

    retry_invoker = make_simple_http_retry_invoker()
    interceptors = [
        RuntimeTracingInterceptor(),
        RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
        RuntimeTokenHttpInterceptor(token),
    ]
    return runtime_client(address, interceptors, retry_invoker), retry_invoker


def run_task(address: str, token: str, parent: int, installed: InstalledCode) -> int:
    """In the forked child: ``run_clientapp``'s body, with ``answer`` where Flower installs
    the bundle and imports the ``clientapp`` it names. Pull, heartbeat, reply and the final
    status and context are Flower's own functions, in Flower's order. Returns the exit status.
    """
    from flwr.common.constant import SubStatus
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.telemetry import EventType
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    start_parent_process_monitor(parent)
    client, retry_invoker = task_client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    context = None
    outcome = Outcome(None, SubStatus.FAILED, "ClientApp task failed due to unknown reason",
                      ExitCode.SUCCESS)  # fmt: skip

    def on_exit() -> None:  # run_clientapp's: final status and context, then clean up
        retry_invoker.max_tries = 1
        push_task_output(client=client, context=context, sub_status=outcome.sub_status,
                         details=outcome.details)  # fmt: skip
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
                             exit_message="Task stopped.", exit_handlers=[on_exit])  # fmt: skip
    try:
        heartbeat.start()
        message, context, _run, fab = pull_task_input(client)
    except Exception as ex:  # nothing to answer: Flower's failed status, no reply
        outcome.details = str(type(ex)) + ":<'" + str(ex) + "'>"
        outcome.exit_code = ExitCode.TASK_PROC_EXCEPTION
    else:
        outcome = answer(message, context, fab.content, installed)
        try:
            push_message(client, outcome.reply, context)
        except Exception as ex:
            print(f"failed to push the reply ({type(ex).__name__}: {ex})", flush=True)
            outcome.exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    try:
        flwr_exit(code=outcome.exit_code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)
    except SystemExit as done:  # flwr_exit runs on_exit, then ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1


def fork_task(address: str, token: str, installed: InstalledCode) -> int:
    """Fork a child for one task; the child never returns into the launcher loop."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = run_task(address, token, parent, installed)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return pid


def reap(running: dict[int, tuple[int, float]], say: Callable[[str], None]) -> None:
    """Collect finished children so none stays a zombie; log each task's wall time."""
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        task_id, started = running.pop(pid, (0, time.monotonic()))
        code = os.waitstatus_to_exitcode(status)
        say(f"task {task_id} finished in {time.monotonic() - started:.2f}s (exit {code})")


def serve(
    address: str, secret: bytes, poll: float, say: Callable[[str], None], *, warm: bool = True
) -> None:
    """The launcher loop: acquire, fork, reap, sleep ``poll``; runs until killed."""
    if warm:
        preload()
    installed = installed_code()  # what the gate compares bundles with: the code that runs
    client = superexec_client(address, secret)
    running: dict[int, tuple[int, float]] = {}
    mode = "warm" if warm else "cold"
    say(f"{mode} launcher ready (pid {os.getpid()}, runtime API {address}, poll {poll}s, "
        f"code gate over {len(installed.files)} installed files)")  # fmt: skip
    while True:
        reap(running, say)
        try:
            task = acquire(client)
        except Exception as err:  # the SuperNode is restarting: its Runtime API returns soon
            say(f"runtime API unavailable ({type(err).__name__}: {err}); retrying")
            time.sleep(1.0)
            continue
        if task is not None:
            token, task_id = task
            running[fork_task(address, token, installed)] = (task_id, time.monotonic())
            continue  # another task may be waiting: ask again at once
        time.sleep(poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--secret-file", required=True, type=Path)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--cold", action="store_true", help="import per task (no warm-up)")
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, flush=True)

    serve(args.runtime_api_address, args.secret_file.read_bytes(), args.poll, say,
          warm=not args.cold)  # fmt: skip


if __name__ == "__main__":
    main()
