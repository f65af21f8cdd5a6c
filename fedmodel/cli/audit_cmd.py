"""``fedmodel audit``: verify a run's signed audit log; audit its privacy empirically.

``audit verify`` checks ``RUN_DIR/audit.jsonl``. Exit codes: 0 the log is sound, 1 it is broken
(the first broken entry is named), 2 the input is bad (no audit log, unreadable key file).

``audit privacy`` attacks a finished run (membership inference on its final model; with
``--canaries``, a one-run canary audit of a site's DP-SGD) and writes
``RUN_DIR/privacy-audit.json``, which ``fedmodel report`` shows. Exit 2 for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import reported_errors

app = typer.Typer(
    help="Verify a run's signed audit log; audit its privacy empirically.", no_args_is_help=True
)

KEY_HELP = (
    "The server's Ed25519 verify key (PEM) as the coordinator published it; default: the run "
    "folder's server-keys/server.ed25519.pub, which only proves the log is self-consistent."
)


@app.callback()
def audit() -> None:
    """Verify a run's signed audit log; audit its privacy empirically."""


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="Run folder or its audit.jsonl.")],
    key: Annotated[Path | None, typer.Option("--key", help=KEY_HELP)] = None,
) -> None:
    """Check the hash chain, the server's signatures and every entry's fields."""
    from server.audit import verify_audit  # the server package owns the log's format

    with reported_errors():
        report = verify_audit(path, key)
    typer.echo(report.summary())
    if key is None:
        typer.echo("note: checked with the run folder's own key; pass --key for the published one")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def privacy(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (simulation).")],
    node: Annotated[
        str | None, typer.Option("--node", help="Site to audit; default: the first that trained.")
    ] = None,
    mia_only: Annotated[
        bool,
        typer.Option("--mia-only", help="Membership inference only (seconds; no canary training)."),
    ] = False,
    canaries: Annotated[
        int, typer.Option("--canaries", min=2, help="Canaries m, each included with prob. 1/2.")
    ] = 1000,
    k_plus: Annotated[
        int | None,
        typer.Option("--k-plus", min=0, help="Guess 'in' for this many top scores; default m/5."),
    ] = None,
    k_minus: Annotated[
        int, typer.Option("--k-minus", min=0, help="Guess 'out' for this many bottom scores.")
    ] = 0,
    no_noise: Annotated[
        bool,
        typer.Option(
            "--no-noise",
            help="Control: train the canaries with the site's clipping and sampling but no noise "
            "(a false claim of the accounted epsilon the audit should refute).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Canary draw, sampling and noise seed.")] = 0,
    confidence: Annotated[
        float, typer.Option("--confidence", min=0.5, max=0.999, help="Of the epsilon lower bound.")
    ] = 0.95,
) -> None:
    """Membership inference on the final model; a canary audit of a site's DP-SGD."""
    from fedmodel.privacy.audit.runfolder import (  # torch and the data: load on use
        PRIVACY_AUDIT_FILE,
        AuditOptions,
        audit_run,
    )

    options = AuditOptions(
        node=node,
        canaries=None if mia_only else canaries,
        k_plus=k_plus,
        k_minus=k_minus,
        noise_off=no_noise,
        seed=seed,
        confidence=confidence,
    )
    with reported_errors():
        record = audit_run(run_dir, options)
    for line in summary_lines(record):
        typer.echo(line)
    typer.echo(f"wrote {run_dir / PRIVACY_AUDIT_FILE}")


def summary_lines(record: dict) -> list[str]:
    """What the audit found, one line per attack and per canary audit."""
    site, mia = record["site"], record["membership_inference"]
    lines = [
        f"{site['node']}: membership inference on {mia['members']} members vs "
        f"{mia['non_members']} held-out rows"
    ]
    lines += [
        f"  {a['attack']:>10}: AUC {a['auc']:.3f}, TPR at {a['fpr']:.0%} FPR {a['tpr_at_fpr']:.3f}"
        for a in mia["attacks"]
    ]
    for c in record["canary_audits"]:
        kind = "noise off (control)" if c["noise_off"] else f"noise {c['noise_multiplier']:.3g}"
        lines.append(
            f"  canaries ({kind}): {c['correct']}/{c['guesses']} guesses right of "
            f"m={c['canaries']}; epsilon >= {c['epsilon_lower_bound']:.3f} "
            f"({c['confidence']:.0%}) vs accounted {c['epsilon_accounted']:.3f}"
            + (" -- REFUTED" if c["refutes_claim"] else "")
        )
    return lines
