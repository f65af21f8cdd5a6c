"""`fedmodel pki`: make the CA and the SuperLink's TLS certificate.

Thin layer over :mod:`fedmodel.crypto.pki`; every rule (no silent overwrite, SANs, key checks)
lives there so tests and the CLI enforce the same thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fedmodel.crypto import pki
from fedmodel.errors import FedmodelError

app = typer.Typer(
    help="Private CA and TLS server certificates for the SuperLink.",
    no_args_is_help=True,
    add_completion=False,
)

DirArg = Annotated[Path, typer.Argument(help="Folder holding ca.crt / ca.key.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace existing files.")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """FedmodelError is the user's to fix: one line on stderr and its exit code, no traceback."""
    try:
        yield
    except FedmodelError as err:
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)
        raise typer.Exit(code=err.exit_code) from None


def _report(files: pki.IssuedFiles) -> None:
    typer.echo(f"wrote {files.cert} (sha256 {pki.cert_fingerprint(files.cert)})")
    typer.echo(f"wrote {files.key} (mode 0600)")


@app.command("init")
def init_cmd(
    directory: DirArg,
    name: Annotated[str, typer.Option(help="CA common name.")] = "fedmodel CA",
    days: Annotated[int, typer.Option(help="Validity in days.")] = pki.DEFAULT_CA_DAYS,
    force: ForceOpt = False,
) -> None:
    """Create a new EC P-256 certificate authority (ca.crt, ca.key)."""
    with _user_errors():
        _report(pki.init_ca(directory, name=name, days=days, force=force))


@app.command("server-cert")
def server_cert_cmd(
    directory: DirArg,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="DNS name for a SAN (repeatable).")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="IP address for a SAN (repeatable).")
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = pki.DEFAULT_SERVER_DAYS,
    force: ForceOpt = False,
) -> None:
    """Sign server.pem / server.key for the SuperLink. Without --host/--ip: loopback only."""
    hosts, ips = list(host or []), list(ip or [])
    if not hosts and not ips:
        hosts, ips = list(pki.LOOPBACK_HOSTS), list(pki.LOOPBACK_IPS)
        typer.echo(f"no --host/--ip given: loopback SANs {', '.join(hosts + ips)}")
    with _user_errors():
        _report(pki.issue_server_cert(directory, hosts, ips, days=days, force=force))
