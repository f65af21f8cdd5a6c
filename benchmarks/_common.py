"""Helpers shared by the federation benchmarks (accuracy, simulation overhead).

Kept apart from the per-benchmark scripts because both run fedmodel scenarios through Flower's
simulation and need the same things: a quiet Flower environment, one run folder per run, the
numbers read back from ``metrics.jsonl``, a merged results file and a process-tree memory probe.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

from fedmodel.io import atomic_write_json

RESULTS_DIR = Path(__file__).parent / "results"
RUNS_ROOT = Path(tempfile.gettempdir()) / "fedmodel-bench-runs"


def quiet_env() -> None:
    """``fedmodel.simulation.quiet_flower_env``'s switches; set before anything imports flwr."""
    from fedmodel.simulation import quiet_flower_env

    quiet_flower_env()


def machine() -> dict[str, Any]:
    """Where a number was measured: results are meaningless without the load they ran under."""
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_write": round(load[0], 2),
    }


def merge_results(path: Path, key: str, value: Any) -> dict[str, Any]:
    """Update one top-level key, keeping the others: experiments may be run one at a time."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[key] = value
    atomic_write_json(path, data)
    return data


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain Markdown table, so the output can be pasted into docs/benchmarks.md as is."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]  # fmt: skip
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Final accuracy, per-round curve and the realised epsilon (max over clients and rounds)."""
    from server.records import read_metrics

    rows = read_metrics(run_dir)
    curve = [float(r["server"].get("accuracy", float("nan"))) for r in rows]  # round 0 first
    # A client whose update the server rejected has still spent its budget: count it. A refused
    # round carries only a projection, and an error row nothing trustworthy: skip those.
    eps = [
        float(c["epsilon"])
        for r in rows
        for c in r.get("clients", [])
        if c.get("status") in ("ok", "rejected") and c.get("epsilon") is not None
    ]
    statuses = [c.get("status") for r in rows for c in r.get("clients", [])]
    return {
        "accuracy": curve[-1] if curve else None,
        "best_round_accuracy": max(curve) if curve else None,
        "curve": curve,
        "epsilon": max(eps) if eps else 0.0,
        "rounds_recorded": sum(1 for r in rows if r.get("clients")),
        "curve_rounds": [int(r["round"]) for r in rows],
        "client_replies": {s: statuses.count(s) for s in sorted(set(map(str, statuses)))},
        "run_dir": str(run_dir),
    }


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant process, ``root`` first."""
    tree, stack, pids = _children(), [root], []
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(tree.get(pid, []))
    return pids


def tree_rss_bytes(root: int) -> int:
    """RSS summed over ``root`` and every descendant (Ray's GCS, raylet and workers included)."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def tree_listeners(root: int) -> list[str]:
    """``host:port`` of every TCP socket the process tree listens on (IPv4 and IPv6), from
    /proc: what another machine could try to reach."""
    inodes: set[str] = set()
    for pid in tree_pids(root):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
        for row in rows:
            if row[3] == "0A" and row[9] in inodes:  # 0A: LISTEN
                host, port = row[1].split(":")
                found.append(f"{_proc_ip(host, width)}:{int(port, 16)}")
    return sorted(set(found))


def _proc_ip(hex_ip: str, width: int) -> str:
    """/proc/net's little-endian hex address as text (IPv4-mapped IPv6 as its IPv4)."""
    import ipaddress

    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words if width == 32 else raw[::-1])
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and every living descendant: the work a round
    cost, whatever else the machine ran meanwhile (a process that exited is not counted)."""
    tree, stack, total = _children(), [root], 0
    tick = os.sysconf("SC_CLK_TCK")
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / tick


class Sampler:
    """Calls :meth:`sample` every ``interval`` seconds in a daemon thread while its ``with``
    block runs, the first call at once: the one start/stop/join behind the benchmarks' probes
    (memory here, round stamps in ``deployment_round.py``)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakRss(Sampler):
    """Samples the process tree's RSS in a thread; ``peak`` is the largest sum seen."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.peak = 0
        self._me = os.getpid()

    def sample(self) -> None:
        self.peak = max(self.peak, tree_rss_bytes(self._me))


def fresh_run_dir(label: str) -> Path:
    """A new run folder under the temp dir: run folders are big and are not results."""
    RUNS_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{label}-{time.strftime('%H%M%S')}-", dir=RUNS_ROOT))
