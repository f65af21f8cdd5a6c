"""Ray start-up for the Simulation Engine: time, memory and open ports, before and after.

"before" is what fedmodel passed to Flower's Ray backend until now (``num_cpus``, quiet
logging; Flower adds ``include_dashboard=False``); "after" is ``fedmodel.ray_backend``'s
private instance (``address="local"``) in Ray's loopback-only mode. Each start runs in its own
fresh Python process, as a simulation does: ``ray.init`` with Flower's ``runtime_env``, one
actor created and answering (what the first client round waits for), then the process tree's
RSS and every TCP port it listens on, read from /proc. The variants alternate, so load from
other processes hits both alike.

    python benchmarks/ray_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, machine, merge_results, print_table

RESULTS = RESULTS_DIR / "ray_startup.json"
HERE = Path(__file__).resolve().parent

# The probe runs in a child process; it prints one JSON line.
PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {here!r})
    from _common import tree_listeners, tree_pids, tree_rss_bytes
    init_args = json.loads({args!r})
    t0 = time.perf_counter()
    import ray
    ray.init(runtime_env={{"env_vars": {{"PYTHONPATH": os.pathsep.join(sys.path)}}}}, **init_args)

    @ray.remote(num_cpus=1)
    class Echo:
        def ping(self):
            return 1

    ray.get(Echo.remote().ping.remote())
    ready = time.perf_counter() - t0
    me = os.getpid()
    names = sorted(open(f"/proc/{{p}}/comm").read().strip() for p in tree_pids(me)[1:])
    out = {{"ready_s": ready, "rss_bytes": tree_rss_bytes(me), "listeners": tree_listeners(me),
           "processes": names}}
    ray.shutdown()
    print("RESULT " + json.dumps(out))
    """
)


def variants() -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Each variant's ``ray.init`` arguments and the environment switches it runs with."""
    from fedmodel.config import FederationConfig
    from fedmodel.ray_backend import LOOPBACK_ENV, backend_config

    cpus = os.cpu_count() or 1
    before = {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": False}
    before["include_dashboard"] = False  # Flower's RayBackend.init_ray setdefault
    after = backend_config(FederationConfig(), verbose=False, cpu_count=cpus)["init_args"]
    return {"before": (before, {}), "after": (after, LOOPBACK_ENV)}


def probe(init_args: dict[str, Any], switches: dict[str, str]) -> dict[str, Any]:
    """One Ray start in a fresh process; ``switches`` are set, every other Ray switch unset."""
    code = PROBE.format(here=str(HERE), args=json.dumps(init_args))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env |= {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", **switches}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    lines = [li for li in proc.stdout.splitlines() if li.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def exposed(listeners: list[str]) -> list[str]:
    """Listeners another machine could reach: anything not on 127.0.0.0/8 or ::1."""
    local = ("127.", "::1:")
    return [addr for addr in listeners if not addr.startswith(local)]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ready_s_median": round(statistics.median(r["ready_s"] for r in runs), 2),
        "ready_s": [round(r["ready_s"], 2) for r in runs],
        "rss_mb_median": round(statistics.median(r["rss_bytes"] for r in runs) / 2**20, 1),
        "listeners": len(runs[-1]["listeners"]),
        "exposed_listeners": exposed(runs[-1]["listeners"]),
        "processes": runs[-1]["processes"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]
    cases = variants()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (init_args, switches) in cases.items():
            runs[name].append(probe(init_args, switches))
    result = {name: summarise(r) for name, r in runs.items()}
    result["init_args"] = {name: init_args for name, (init_args, _) in cases.items()}
    result["environment"] = {name: switches for name, (_, switches) in cases.items()}
    result["repeats"] = args.repeats
    result["machine"] = {**machine(), "loadavg_1m_at_start": round(load_start, 2)}
    headers = ["variant", "ready s (median)", "tree RSS MB", "TCP listeners", "not loopback"]
    rows = [
        [name, r["ready_s_median"], r["rss_mb_median"], r["listeners"], len(r["exposed_listeners"])]
        for name, r in result.items()
        if name in cases
    ]
    print_table(headers, rows)
    print(f"load average (1 min): {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    for key, value in result.items():
        merge_results(args.out, key, value)
    return result


if __name__ == "__main__":
    main()
