"""The warm ClientApp launcher: Flower's SuperExec job, minus the per-task interpreter start.

Stock Flower runs every ClientApp task in a fresh ``flwr-clientapp`` process, which re-imports
torch, Opacus and fedmodel (4-10 s on a small machine) before it trains for a second. This
launcher stands in for the SuperNode's SuperExec (``flower-supernode --isolation process``): it
imports all of that once, asks the SuperNode's Runtime API for tasks every ``poll`` seconds, and
forks one child per task. The child runs Flower's own ``run_clientapp`` (pull the message,
install the FAB, call the ClientApp, push the reply and context), so the task protocol, the
per-task token and Flower's error replies are exactly Flower's; only the imports are already
warm. One fork per task keeps Flower's isolation: a crash or a leak ends with its task.

Because ``clients.client_app`` is already imported, Flower's loader reuses it: the site-policy
code that runs is the fedmodel the site installed, not a copy shipped inside the run's FAB.

Built on flwr 1.41 internals (``RuntimeHttpClient``, ``AcquireTask``, ``run_clientapp``); the
version is pinned in requirements.txt, and ``warm_launcher = false`` in node.toml falls back to
Flower's stock SuperExec.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


def runtime_client(address: str, secret: bytes):  # -> RuntimeHttpClient (flwr internal)
    """Client for the SuperNode's Runtime API, signing AcquireTask with the shared secret."""
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # loopback to this node's own SuperNode (see operator guide)
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={AUTH_METHOD}),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )


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


def run_task(address: str, token: str, parent: int) -> int:
    """In the forked child: Flower's own ClientApp process body. Returns its exit status."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    try:
        run_clientapp(
            runtime_api_address=address,
            token=token,
            insecure=True,
            certificates=None,
            parent_pid=parent,
            runtime_dependency_install=False,
        )
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    return 0


def fork_task(address: str, token: str) -> int:
    """Fork a child for one task; the child never returns into the launcher loop."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = run_task(address, token, parent)
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


def serve(address: str, secret: bytes, poll: float, say: Callable[[str], None]) -> None:
    """The launcher loop: acquire, fork, reap, sleep ``poll``; runs until killed."""
    preload()
    client = runtime_client(address, secret)
    running: dict[int, tuple[int, float]] = {}
    say(f"warm launcher ready (pid {os.getpid()}, runtime API {address}, poll {poll}s)")
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
            running[fork_task(address, token)] = (task_id, time.monotonic())
            continue  # another task may be waiting: ask again at once
        time.sleep(poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--secret-file", required=True, type=Path)
    parser.add_argument("--poll", type=float, default=0.1)
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, flush=True)

    serve(args.runtime_api_address, args.secret_file.read_bytes(), args.poll, say)


if __name__ == "__main__":
    main()
