"""Where the Simulation Engine's Ray runs: a private one on loopback, or a cluster you name.

Flower's Ray backend calls ``ray.init(**init_args)``. Left to its defaults, Ray

- joins whatever cluster ``RAY_ADDRESS`` or the last ``ray start`` on this machine recorded
  (``/tmp/ray/ray_current_cluster``), so one user's ``ray start --head`` silently captures every
  other simulation on the box (and then refuses it: ``num_cpus`` may not be given when joining);
- binds its GCS, raylet, object manager and agents to the machine's network address, although a
  one-box simulation only ever talks to itself.

So a local run passes ``address="local"`` (always a fresh, private instance) and
``_node_ip_address="127.0.0.1"``, with the dashboard left out (Ray then starts only its API
server with the usage-stats module, frontend disabled, on 127.0.0.1). A run given an address
joins that cluster and brings no resources of its own: the cluster's nodes declare their CPUs
and GPUs.

GPUs: a client's ``client_gpus`` share is packed by Ray over the GPUs the local instance
declares, which is every CUDA device torch sees here (``CUDA_VISIBLE_DEVICES`` narrows it), not
one. Asking for a GPU share on a machine without one fails before Ray starts: Ray would wait for
a GPU forever.
"""

from __future__ import annotations

from typing import Any

from fedmodel.config import FederationConfig
from fedmodel.errors import FedmodelError

LOOPBACK = "127.0.0.1"
LOCAL = "local"  # ray.init's word for "start a new instance, never join one"


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
        init_args |= {"address": LOCAL, "_node_ip_address": LOOPBACK, "num_cpus": cpu_count}
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
