"""Where the Simulation Engine's Ray runs: a private one on loopback, or a cluster you name.

Flower's Ray backend calls ``ray.init(**init_args)``. Left to its defaults, Ray 2.55

- joins whatever cluster ``RAY_ADDRESS`` or the last ``ray start`` on this machine recorded
  (``/tmp/ray/ray_current_cluster``), so one user's ``ray start --head`` silently captures every
  other simulation on the box (and then refuses it: ``num_cpus`` may not be given when joining);
- binds its GCS, raylet, workers and agents to every interface (``[::]``) and to the machine's
  network address, although a one-box simulation only ever talks to itself. ``ray.init`` turns
  ``_node_ip_address="127.0.0.1"`` back into the machine's address on purpose
  (``services.resolve_ip_for_localhost``); only Ray's single-machine mode, the default on macOS
  and Windows, keeps it: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ``ray`` is first
  imported (:func:`use_loopback`).

So a local run passes ``address="local"`` (always a fresh, private instance) in loopback mode,
with the dashboard left out (Ray then starts only its API server with the usage-stats module,
frontend disabled, on 127.0.0.1). A run given an address joins that cluster and brings no
resources of its own: the cluster's nodes declare their CPUs and GPUs.

GPUs: a client's ``client_gpus`` share is packed by Ray over the GPUs the local instance
declares, which is every CUDA device torch sees here (``CUDA_VISIBLE_DEVICES`` narrows it), not
one. Asking for a GPU share on a machine without one fails before Ray starts: Ray would wait for
a GPU forever.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from fedmodel.config import FederationConfig
from fedmodel.errors import FedmodelError

LOCAL = "local"  # ray.init's word for "start a new instance, never join one"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's single-machine mode


class RayBackendError(FedmodelError):
    """Ray cannot be set up as asked: a malformed address, or a GPU share without a GPU."""


def parse_ray_address(address: str, source: str = "--ray-address") -> str:
    """``host:port`` or ``ray://host:port`` (Ray Client), checked before anything starts."""
    text = address.strip()
    rest = text.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayBackendError(f"{source}: {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    return text


def use_loopback() -> bool:
    """Ask for Ray's single-machine mode (every Ray process on 127.0.0.1) unless the caller
    already chose; True when it will hold. Ray reads the switch once, at its first import in a
    process, and its processes inherit it: a process that imported ``ray`` without it keeps
    the machine's address (the caller says so; nothing here rewrites Ray's constants)."""
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        return not getattr(constants, "ENABLE_RAY_CLUSTER", True)
    return all(os.environ[key] == value for key, value in LOOPBACK_ENV.items())


def check_joined(address: str, wait_s: float = 120.0) -> None:
    """Under ``flwr run`` Flower's runtime, not the app, calls ``ray.init`` (its federation config
    has no address; Ray reads ``RAY_ADDRESS`` from the SuperLink's environment). The ServerApp
    can only check that this process's Ray joined ``address``, and fail naming the fix."""
    import ray

    want = parse_ray_address(address, "run config ray-address")
    deadline = time.monotonic() + wait_s
    while not ray.is_initialized():
        if time.monotonic() > deadline:
            raise RayBackendError(f"run config ray-address={want}: Ray did not start in {wait_s}s")
        time.sleep(0.2)
    joined = str(ray.get_runtime_context().gcs_address)
    if not _same_endpoint(want, joined):
        raise RayBackendError(
            f"run config ray-address={want}, but Flower's simulation runtime runs Ray at "
            f"{joined}: start the SuperLink with RAY_ADDRESS={want} in its environment"
        )


def _same_endpoint(want: str, joined: str) -> bool:
    """Same port, and the same host or a loopback name for this machine's own Ray."""
    host, _, port = want.removeprefix("ray://").rpartition(":")
    got_host, _, got_port = joined.rpartition(":")
    return port == got_port and (host == got_host or host in ("127.0.0.1", "localhost"))


def local_gpu_count() -> int:
    """CUDA devices this process may use: what a local Ray instance declares."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def backend_config(
    fed: FederationConfig,
    *,
    verbose: bool,
    address: str | None = None,
    cpu_count: int = 1,
    gpu_count: int | None = None,
) -> dict[str, Any]:
    """Flower's ``backend_config``: per-client resources and ``ray.init`` arguments.

    ``gpu_count``: the local GPUs (``None``: ask torch); unused when joining a cluster.
    """
    init_args: dict[str, Any] = {
        "logging_level": "INFO" if verbose else "ERROR",
        "log_to_driver": verbose,
        "include_dashboard": False,
    }
    if address is not None:
        init_args["address"] = parse_ray_address(address)
    else:
        init_args |= {"address": LOCAL, "num_cpus": cpu_count}
        if fed.client_gpus > 0:  # else Ray's own detection, as Flower leaves it
            init_args["num_gpus"] = _local_gpus(fed, gpu_count)
    return {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
        "init_args": init_args,
    }


def _local_gpus(fed: FederationConfig, gpu_count: int | None) -> int:
    """Every local GPU the clients' shares may be packed on."""
    gpus = local_gpu_count() if gpu_count is None else gpu_count
    if gpus == 0:
        raise RayBackendError(
            f"federation.client_gpus = {fed.client_gpus}: this machine has no CUDA device "
            "(set it to 0, or join a cluster with GPUs: --ray-address)"
        )
    return gpus
