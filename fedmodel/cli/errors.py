"""The CLI's error boundary: a ``FedmodelError`` becomes one line on stderr and its exit code.

Anything else is a bug and keeps its traceback. Every command goes through ``cli_errors`` (or
``reported_errors`` around part of a command) so no command can leak a stack trace for bad input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import typer

from fedmodel.errors import FedmodelError

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def reported_errors() -> Iterator[None]:
    try:
        yield
    except FedmodelError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with reported_errors():
            return fn(*args, **kwargs)

    return wrapper
