"""The ``fedmodel`` command: one typer app, one file per command group."""

from __future__ import annotations

import typer

from fedmodel.cli.audit_cmd import app as audit_app
from fedmodel.cli.data_cmd import app as data_app
from fedmodel.cli.distill_cmd import distill
from fedmodel.cli.export_cmd import export
from fedmodel.cli.keys_cmd import app as keys_app
from fedmodel.cli.ledger_cmd import app as ledger_app
from fedmodel.cli.model_cmd import app as model_app
from fedmodel.cli.node_cmd import app as node_app
from fedmodel.cli.pki_cmd import app as pki_app
from fedmodel.cli.predict import predict
from fedmodel.cli.report_cmd import report
from fedmodel.cli.server_cmd import app as server_app
from fedmodel.cli.simulate import simulate
from fedmodel.cli.task_cmd import app as task_app
from fedmodel.cli.train_local import train_local

app = typer.Typer(
    name="fedmodel",
    help="Privacy-preserving federated learning: Flower + Opacus DP-SGD, ledger, sealed updates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("train-local")(train_local)
app.command("simulate")(simulate)
app.command("predict")(predict)
app.command("export")(export)
app.command("distill")(distill)
app.command("report")(report)
app.add_typer(data_app, name="data", help="Datasets: statistics; a site's files checked.")
app.add_typer(task_app, name="task", help="Declared tasks: draft one from a sample file.")
app.add_typer(ledger_app, name="ledger", help="Privacy ledgers: verify and show.")
app.add_typer(keys_app, name="keys", help="Node keys: Flower authentication and ledger signing.")
app.add_typer(pki_app, name="pki", help="Certificate authority and SuperLink TLS certificate.")
app.add_typer(server_app, name="server", help="Coordinator: SuperLink and federated runs.")
app.add_typer(node_app, name="node", help="Site: SuperNode, its status and privacy budget.")
app.add_typer(model_app, name="model", help="Custom model factories: the digest a site approves.")
app.add_typer(audit_app, name="audit", help="Audits: the server's signed log; privacy attacks.")


if __name__ == "__main__":
    app()
