"""Distillation into a student and int8 export of a federated DP MNIST CNN, one run.

1. A short federated DP simulation (``mnist-cnn``: 10 clients, Dirichlet 0.5, DP-SGD at
   epsilon 3) trains the teacher, the run's final model.
2. ``fedmodel distill``'s code path trains ``cnn-small`` on the teacher's soft labels over half of
   MNIST's test split (the coordinator's public rows; no site row) and evaluates student and
   teacher on the other half.
3. ``fedmodel export --quantize int8``'s code path writes the int8 copy of the teacher; its
   predictions are compared with the float model's on the same evaluation half.

Goals (issue #15): the student has at least 4x fewer parameters, is within 1.5 points of the
teacher's accuracy and is faster per batch on CPU; the int8 copy predicts the float model's
class on at least 99 % of the rows. Sizes are the weights files' bytes; speed is the median CPU
milliseconds per forward pass of a 256-row batch on one thread, both models measured in this
process one after the other. The machine is shared: the 1-minute load average is recorded.

Usage: ``python benchmarks/distillation.py`` (simulation + distillation), or
``--run-dir RUN`` to distil an existing run's model again. Results:
``benchmarks/results/distillation.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, fresh_run_dir, machine, print_table, quiet_env, run_summary

from fedmodel.io import atomic_write_json

RESULTS = RESULTS_DIR / "distillation.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=None, help="reuse this run's model")
    p.add_argument("--train-limit", type=int, default=0, help="training images (0: all 60,000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--student", default="cnn-small")
    p.add_argument("--epochs", type=int, default=20, help="distillation epochs")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def teacher_run(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The E1 recipe (batch 256, SGD lr 4 momentum 0.9, clip 0.1, epsilon 3), shorter."""
    from fedmodel.scenarios import apply_overrides, load_scenario
    from fedmodel.simulation import simulate
    from server.federation import ServerSettings

    settings = {
        "data.train_limit": args.train_limit or None,
        "data.test_limit": 2000,
        "federation.rounds": args.rounds,
        "federation.num_clients": args.clients,
        "strategy.min_train_nodes": args.clients,
        "train.batch_size": 256,
        "optimizer.lr": 4.0,
        "dp.max_grad_norm": 0.1,
        "dp.target_epsilon": 3.0,
        "budget.epsilon": 3.15,
    }
    cfg = apply_overrides(load_scenario("mnist-cnn"), settings, "distillation teacher")
    if not args.train_limit:  # None is skipped by apply_overrides: clear it explicitly
        cfg = apply_overrides(cfg, {}, "distillation teacher", clear=("data.train_limit",))
    run_dir = fresh_run_dir("distillation")
    start = time.perf_counter()
    simulate(ServerSettings(scenario=cfg, run_dir=run_dir))
    summary = run_summary(run_dir)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    summary["settings"] = {**settings, "data.train_limit": cfg.data.train_limit}
    return run_dir, summary


def int8_check(run_dir: Path, eval_inputs: list[Any]) -> dict[str, Any]:
    """Quantise the teacher as ``fedmodel export --quantize int8`` does; compare predictions."""
    from fedmodel.training.export import load_exported, model_dir_of
    from fedmodel.training.footprint import bytes_on_disk, ms_per_batch
    from fedmodel.training.inference import predict
    from fedmodel.training.quantize import export_quantized

    source = model_dir_of(run_dir)
    model, meta = load_exported(source)
    out_dir = source.with_name(f"{source.name}-int8")
    export_quantized(out_dir, model, meta, str(meta["weights_sha256"]))
    quantized, _ = load_exported(out_dir)
    float_pred, _ = predict(model, eval_inputs)
    int8_pred, _ = predict(quantized, eval_inputs)
    return {
        "same_class": float((float_pred == int8_pred).float().mean()),
        "float_bytes": bytes_on_disk(source),
        "int8_bytes": bytes_on_disk(out_dir),
        "float_ms_per_batch": ms_per_batch(model, eval_inputs),
        "int8_ms_per_batch": ms_per_batch(quantized, eval_inputs),
    }


def main() -> None:
    args = parse_args()
    quiet_env()
    from fedmodel.distill import DistillConfig, distill_run, load_public

    load_before = os.getloadavg()[0]
    teacher: dict[str, Any] = {"reused": str(args.run_dir)}
    run_dir = args.run_dir
    if run_dir is None:
        run_dir, teacher = teacher_run(args)
    cfg = DistillConfig(temperature=args.temperature, epochs=args.epochs, seed=args.seed)
    start = time.perf_counter()
    student = distill_run(run_dir, args.student, "mnist-test", cfg)
    distill_s = time.perf_counter() - start
    rec = student.record
    public = load_public("mnist-test", {"class_names": [str(d) for d in range(10)],
                                        "input_shape": [1, 28, 28]}, cfg)  # fmt: skip
    int8 = int8_check(run_dir, public.evaluate)
    s, t = rec["student_size"], rec["teacher_size"]
    result = {
        "student": args.student,
        "teacher_accuracy": rec["teacher_accuracy"],
        "student_accuracy": rec["student_accuracy"],
        "accuracy_gap_points": 100 * (rec["teacher_accuracy"] - rec["student_accuracy"]),
        "agreement": rec["agreement"],
        "parameter_ratio": t["parameters"] / s["parameters"],
        "bytes_ratio": t["bytes_on_disk"] / s["bytes_on_disk"],
        "speedup": t["ms_per_batch"] / s["ms_per_batch"],
        "student_size": s,
        "teacher_size": t,
        "goals": {},
        "int8": int8,
        "distill_rows": rec["public_data"]["distill_rows"],
        "eval_rows": rec["eval_rows"],
        "distill_wall_s": round(distill_s, 1),
        "settings": rec["settings"],
        "epoch_losses": rec["epoch_losses"],
        "teacher_run": teacher,
        "torch_threads_measured": 1,
        "loadavg_1m_before": round(load_before, 2),
        "machine": machine(),
    }
    result["goals"] = {
        "parameters_4x_fewer": result["parameter_ratio"] >= 4,
        "within_1_5_points": result["accuracy_gap_points"] <= 1.5,
        "faster_per_batch": result["speedup"] > 1,
        "int8_same_class_99": int8["same_class"] >= 0.99,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print_table(
        ["model", "accuracy", "parameters", "bytes", "CPU ms / 256-batch (1 thread)"],
        [
            ["teacher (DP FL CNN)", f"{rec['teacher_accuracy']:.2%}", t["parameters"],
             t["bytes_on_disk"], f"{t['ms_per_batch']:.2f}"],
            [f"student {args.student}", f"{rec['student_accuracy']:.2%}", s["parameters"],
             s["bytes_on_disk"], f"{s['ms_per_batch']:.2f}"],
            ["teacher int8", f"same class {int8['same_class']:.2%}", "—", int8["int8_bytes"],
             f"{int8['int8_ms_per_batch']:.2f}"],
        ],
    )  # fmt: skip
    print(f"goals: {result['goals']}; load {result['machine']['loadavg_1m_at_write']}")
    print(f"run folder: {run_dir}; results: {args.out}")


if __name__ == "__main__":
    main()
