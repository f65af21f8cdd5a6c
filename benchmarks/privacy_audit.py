"""Empirical privacy audit of the demo's MNIST run: does the accountant's epsilon hold up?

Two real simulations of the ``make demo`` setting (``mnist-cnn``: CNN, 3 sites, Dirichlet 0.5,
3 rounds, 3,000 training images, DP-SGD calibrated to epsilon 3 at delta 1e-5), one with DP-SGD
and one without, each audited with ``fedmodel.privacy.audit.runfolder.audit_run`` - the code
behind ``fedmodel audit privacy``:

* canary audit of node-0 (Steinke, Nasr & Jagielski 2023, one run): ``--canaries`` Dirac
  canaries through node-0's real DP-SGD (its noise, sample rate, steps, clipping), top
  ``--k-plus`` scores guessed "in", 95 % lower bound on epsilon at delta 1e-5. Once with the
  configured noise (must stay at or under the accounted epsilon) and once with the noise taken
  out (must exceed it: the audit can catch a false claim of 3), for every seed in ``--seeds``.
  Headlines: the *largest* configured-noise bound and the *smallest* noise-off bound.
* membership inference on node-0's records with each run's final model (loss attack AUC and
  the calibrated attack), members against as many label-matched held-out test images. A third
  run without DP and with ``--overfit-epochs`` local epochs per round shows what the attacks
  find when a model fits its data longer. The runs without DP use SGD lr ``--no-dp-lr``: the
  scenario's lr 0.5 suits clipped DP gradients and diverges without clipping.

Usage: ``python benchmarks/privacy_audit.py`` (a few minutes on 2 cores); results go to
``benchmarks/results/privacy_audit.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, machine, print_table, quiet_env

from fedmodel.io import atomic_write_json

RESULTS = RESULTS_DIR / "privacy_audit.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=3000)
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--canaries", type=int, default=1000)
    p.add_argument("--k-plus", type=int, default=200)
    p.add_argument("--seeds", default="0,1,2", help="canary draws, comma list")
    p.add_argument("--overfit-epochs", type=int, default=10, help="0: skip the third run")
    p.add_argument(
        "--no-dp-lr",
        type=float,
        default=0.05,
        help="SGD lr of the runs without DP: the scenario's 0.5 is tuned for clipped gradients "
        "and diverges unclipped (10 %% accuracy)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def scenario(args: argparse.Namespace, *, dp: bool, epochs: int | None = None) -> Any:
    """The demo's scenario (as ``fedmodel simulate`` builds it from the same flags)."""
    from fedmodel.scenarios import apply_overrides, load_scenario

    overrides = {
        "federation.rounds": args.rounds,
        "federation.num_clients": args.clients,
        "data.train_limit": args.train_limit,
        "dp.target_epsilon": args.epsilon,
    }
    if not dp:
        overrides["dp.enabled"] = False
        overrides["optimizer.lr"] = args.no_dp_lr
    if epochs is not None:
        overrides["train.epochs"] = epochs
    return apply_overrides(load_scenario("mnist-cnn"), overrides, "benchmark")


def audit(run_dir: Path, **options: Any) -> dict[str, Any]:
    from fedmodel.privacy.audit.runfolder import AuditOptions, audit_run

    return audit_run(run_dir, AuditOptions(**options))


def attacks(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {a["attack"]: a for a in record["membership_inference"]["attacks"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_env()
    from federated_accuracy import run  # the simulation runner, with the no-DP opt-in

    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    dp_run = Path(run(scenario(args, dp=True), "privacy-audit-dp")["run_dir"])
    plain_run = Path(
        run(scenario(args, dp=False), "privacy-audit-nodp", sites_allow_no_dp=True)["run_dir"]
    )
    mia_dp, mia_plain = audit(dp_run), audit(plain_run)
    mia_runs = {"dp": mia_dp, "no_dp": mia_plain}
    if args.overfit_epochs:
        cfg = scenario(args, dp=False, epochs=args.overfit_epochs)
        overfit_run = Path(run(cfg, "privacy-audit-overfit", sites_allow_no_dp=True)["run_dir"])
        mia_runs[f"no_dp_{args.overfit_epochs}_epochs"] = audit(overfit_run)
    per_seed = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for noise_off, key in ((False, "dp"), (True, "no_noise")):
            record = audit(
                dp_run, canaries=args.canaries, k_plus=args.k_plus, seed=seed, noise_off=noise_off
            )
            canary = next(c for c in record["canary_audits"] if c["noise_off"] == noise_off)
            row[f"eps_lower_{key}"] = canary["epsilon_lower_bound"]
            row[f"correct_{key}"] = canary["correct"]
            row[f"seconds_{key}"] = round(canary["seconds"], 1)
            row["included"], row["guesses"] = canary["included"], canary["guesses"]
            row["eps_ceiling"] = canary["epsilon_ceiling"]
        per_seed.append(row)
        print(f"seed {seed}: {row}", flush=True)

    mechanism = mia_dp["mechanism"]
    results = {
        "eps_lower_no_noise": min(r["eps_lower_no_noise"] for r in per_seed),
        "eps_lower_dp": max(r["eps_lower_dp"] for r in per_seed),
        "eps_accounted": mechanism["epsilon_accounted"],
        "mia_auc_dp": attacks(mia_dp)["loss"]["auc"],
        "mia_auc_no_dp": attacks(mia_plain)["loss"]["auc"],
        "mia": {
            name: {
                attack: {k: a[k] for k in ("auc", "tpr_at_fpr", "fpr")}
                for attack, a in attacks(record).items()
            }
            | {"members": record["membership_inference"]["members"]}
            for name, record in mia_runs.items()
        },
        "per_seed": per_seed,
        "settings": {
            "scenario": "mnist-cnn (as make demo)",
            "clients": args.clients,
            "rounds": args.rounds,
            "train_limit": args.train_limit,
            "target_epsilon": args.epsilon,
            "site": mia_dp["site"],
            "mechanism": mechanism,
            "canaries": args.canaries,
            "k_plus": args.k_plus,
            "k_minus": 0,
            "confidence": 0.95,
            "seeds": seeds,
            "overfit_epochs": args.overfit_epochs,
            "no_dp_lr": args.no_dp_lr,
            "mia_matched_on": "label",
        },
        "machine": machine(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(args.out, results)
    print_table(
        ["seed", "included", "right (σ as run)", "ε ≥ (σ as run)", "right (no noise)",
         "ε ≥ (no noise)", "ε accounted"],
        [[r["seed"], r["included"], f"{r['correct_dp']}/{r['guesses']}",
          f"{r['eps_lower_dp']:.3f}", f"{r['correct_no_noise']}/{r['guesses']}",
          f"{r['eps_lower_no_noise']:.3f}", f"{results['eps_accounted']:.3f}"]
         for r in per_seed],
    )  # fmt: skip
    print()
    print_table(
        ["run", "loss AUC", "loss TPR@1%FPR", "calibrated AUC", "calibrated TPR@1%FPR"],
        [[name, f"{m['loss']['auc']:.3f}", f"{m['loss']['tpr_at_fpr']:.3f}",
          f"{m['calibrated']['auc']:.3f}", f"{m['calibrated']['tpr_at_fpr']:.3f}"]
         for name, m in results["mia"].items()],
    )  # fmt: skip
    print(f"\nwrote {args.out} ({results['wall_s']} s, load {results['machine']})")


if __name__ == "__main__":
    main()
