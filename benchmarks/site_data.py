"""Memory and speed of reading a site's own files (``fedmodel.data.site``, ``site_images``).

Questions answered:

* CSV: does a 1,000,000-row, 30-column CSV read through ``site_splits`` peak at no more than
  twice its float32 feature matrix (goal <= 2.0), and how many rows a second? Every column is
  numeric with a declared range and ``missing = "refuse"``, so the feature matrix is exactly
  rows x 30 float32 (no missing-flag columns); ``test_fraction = 0.2`` (the holdout is part of
  what a site runs).
* Images: does one pass over a 10,000-PNG image folder through the lazy dataset hold memory
  flat (goal: the RSS after all 10,000 within a few MB of the RSS after the first 1,000)?

Each measurement runs in a fresh subprocess that imports everything first, takes its baseline
RSS right before loading, and reports the peak (``ru_maxrss``) or current RSS from there, so
imports and the files' generation (in the parent, into a temporary folder) are not counted.

    .venv/bin/python benchmarks/site_data.py [--rows 1000000] [--images 10000]
        [--out benchmarks/results/site_data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "site_data.json"
COLUMNS = 30
FIRST_IMAGES = 1000


def rss_mb() -> float:
    """Current resident set size (``/proc/self/statm``), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def csv_task(columns: int):
    from fedmodel.task import TaskConfig

    return TaskConfig.model_validate(
        {
            "name": "bench",
            "kind": "tabular",
            "classes": ["no", "yes"],
            "columns": {
                f"x{i}": {"type": "numeric", "min": 0, "max": 100, "missing": "refuse"}
                for i in range(columns)
            },
        }
    )


def write_csv(path: Path, rows: int, columns: int) -> None:
    """Random values in [0, 100) with two decimals, a yes/no label: written by pyarrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    chunk = 100_000
    with pacsv.CSVWriter(path, _schema(columns)) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            arrays = [pa.array(np.round(rng.random(n) * 100, 2)) for _ in range(columns)]
            labels = pa.array(np.where(rng.random(n) < 0.5, "no", "yes"))
            writer.write(pa.RecordBatch.from_arrays([*arrays, labels], schema=_schema(columns)))


def _schema(columns: int):
    import pyarrow as pa

    return pa.schema([*(pa.field(f"x{i}", pa.float64()) for i in range(columns)),
                      pa.field("label", pa.string())])  # fmt: skip


def write_images(folder: Path, count: int) -> None:
    """``count`` MNIST digits as 28x28 PNGs in ``folder/<digit>/``."""
    import numpy as np
    from PIL import Image

    from fedmodel.data.mnist import load_mnist_arrays

    arrays = load_mnist_arrays()
    pixels = np.round(arrays.x_train[:count, 0] * 255).astype(np.uint8)
    for n, (image, label) in enumerate(zip(pixels, arrays.y_train[:count], strict=True)):
        target = folder / str(int(label))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{n:05d}.png")


def child_csv(path: Path, rows: int, columns: int) -> dict:
    """In a fresh process: read the CSV through ``site_splits``; peak RSS above the baseline."""
    from fedmodel.data.site import site_splits
    from fedmodel.task import SiteFiles

    task = csv_task(columns)
    files = SiteFiles(path=path, test_fraction=0.2)
    baseline = rss_mb()
    start = time.perf_counter()
    splits = site_splits(task, files)
    seconds = time.perf_counter() - start
    read = len(splits.train) + len(splits.test)
    assert read == rows, (read, rows)
    assert splits.train.tensors[0].shape[1] == columns
    matrix_mb = rows * columns * 4 / 2**20
    growth = peak_mb() - baseline
    return {
        "csv_rss_ratio": growth / matrix_mb,
        "csv_rows_per_s": rows / seconds,
        "csv_seconds": seconds,
        "csv_peak_above_baseline_mb": growth,
        "csv_feature_matrix_mb": matrix_mb,
    }


def child_images(folder: Path) -> dict:
    """In a fresh process: one pass over every image of the folder through the lazy dataset."""
    from fedmodel.data.site_images import ImageFolderDataset, scan_folder
    from fedmodel.task import TaskConfig

    task = TaskConfig.model_validate(
        {"name": "bench", "kind": "image", "classes": [str(d) for d in range(10)]}
    )
    assert task.image is not None
    start = time.perf_counter()
    scan = scan_folder(task, folder)  # what a site runs before training: every file verified
    assert not scan.problems, scan.problems[:1]
    verify_s = time.perf_counter() - start
    dataset = ImageFolderDataset(scan.files, scan.labels, task.image)
    after_first = 0.0
    start = time.perf_counter()
    total = 0.0
    for i in range(len(dataset)):
        x, _ = dataset[i]
        total += float(x[0, 14, 14])  # use the pixels
        if i + 1 == FIRST_IMAGES:
            after_first = rss_mb()
    seconds = time.perf_counter() - start
    return {
        "images_rss_growth_mb": rss_mb() - after_first,
        "images_rss_after_first_mb": after_first,
        "images_per_s": len(dataset) / seconds,
        "images_verify_s": verify_s,
        "images_pass_s": seconds,
    }


def in_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (
            child_csv(Path(rest[0]), int(rest[1]), COLUMNS)
            if kind == "csv"
            else child_images(Path(rest[0]))
        )
        print(json.dumps(result))
        return

    load_start = os.getloadavg()[0]
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedmodel-site-bench-") as tmp:
        csv_path = Path(tmp) / "site.csv"
        write_csv(csv_path, args.rows, COLUMNS)
        csv_mb = csv_path.stat().st_size / 2**20
        csv = in_child("csv", str(csv_path), str(args.rows))
        csv_path.unlink()
        folder = Path(tmp) / "images"
        write_images(folder, args.images)
        images = in_child("images", str(folder))
    result = {
        "csv_rss_ratio": round(csv["csv_rss_ratio"], 3),
        "csv_rows_per_s": round(csv["csv_rows_per_s"]),
        "images_rss_growth_mb": round(images["images_rss_growth_mb"], 2),
        "csv": {
            "rows": args.rows,
            "columns": COLUMNS,
            "file_mb": round(csv_mb, 1),
            "missing": "refuse",
            "test_fraction": 0.2,
            **{k: round(v, 2) for k, v in csv.items()},
        },
        "images": {
            "count": args.images,
            "first": FIRST_IMAGES,
            "size": "28x28 PNG, L",
            **{k: round(v, 2) for k, v in images.items()},
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(load_start, 2),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measure | value | goal |")
    print("|---|---|---|")
    print(f"| CSV peak RSS / feature matrix | {result['csv_rss_ratio']} | <= 2.0 |")
    print(f"| CSV rows/s | {result['csv_rows_per_s']:,} | |")
    print(f"| images RSS growth 1k -> {args.images:,} (MB) | {result['images_rss_growth_mb']} | "
          "a few MB |")  # fmt: skip
    print(f"wrote {args.out} (load {load_start:.2f} -> {result['machine']['loadavg_1m_at_end']})")


if __name__ == "__main__":
    main()
