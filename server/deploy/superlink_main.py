"""Flower's own SuperLink, served on two listeners: the Fleet API public, the rest on loopback.

flwr 1.41's ``flower-superlink`` serves the Fleet API (SuperNodes), the Control API (``flwr
run``, ``flwr ls``, ``flwr supernode register``) and the Runtime API (SuperExec, ServerApps) on
one HTTP server at ``--host/--port``; ``--control-api-address`` is deprecated and ignored. Anyone
who can reach that port and holds the public CA certificate can then register a node of their
own or submit a run whose bundle names its own ``clientapp``.

This entry point builds the same FastAPI app (Flower's argument parsing, Flower's
``create_app`` with Flower's ``SuperLinkLifespan``; nothing of Flower's is patched) and serves
it twice in one process:

* a private listener on ``127.0.0.1:<control port>`` with every route. It owns the lifespan,
  so the SuperExec that the lifespan launches dials it. Plain HTTP: it never leaves the host,
  the server certificate need not name 127.0.0.1, and TLS would not authenticate a local
  caller anyway (Flower's SuperNode <-> SuperExec link is plain loopback HTTP too);
* the public listener on ``--host/--port`` (TLS with the configured certificate) that passes
  only the Fleet API's routes, exactly as Flower's Fleet router declares them, and answers every
  other request with 403 before any Flower middleware or handler sees it.

Usage: ``python -m server.deploy.superlink_main --control-port N [flower-superlink args...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

from server.deploy.config import CONTROL_HOST

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REFUSAL = (
    b"fedmodel: this port serves the Fleet API (SuperNodes) only; the Control and Runtime "
    b"APIs listen on the coordinator's loopback interface\n"
)


def fleet_paths() -> frozenset[str]:
    """Every path of Flower's Fleet router: all a SuperNode calls (register/activate, pull and
    push messages and objects, GetRun, GetFab, heartbeats)."""
    from flwr.superlink.routers.fleet.router import router

    return frozenset(route.path for route in router.routes)


class FleetOnly:
    """ASGI wrapper for the public listener: the Fleet paths pass, everything else is refused.

    The path is compared exactly (no prefix match), on the decoded path Starlette routes on, so
    ``/v1/fleet/../control/...`` and friends are refused too.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.allowed:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(REFUSAL)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": REFUSAL})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


class Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve_both`` (two servers, one handler)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def private_config(config: Any, control_port: int) -> Any:
    """Flower's lifespan config, moved to the loopback listener (its SuperExec dials there)."""
    return dataclasses.replace(
        config, host=CONTROL_HOST, port=control_port, insecure=True, certificates=None,
        ssl_ca_certfile=None, ssl_certfile=None, ssl_keyfile=None,
    )  # fmt: skip


def listeners(config: Any, control_port: int) -> tuple[Listener, Listener]:
    """(private, public) uvicorn servers over one Flower app, as Flower would configure it."""
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.cli.flower_superlink import SuperLinkLifespan
    from flwr.superlink.main import create_app

    app = create_app(private_config(config, control_port), SuperLinkLifespan)
    log_config = get_uvicorn_log_config(console_handler.level)
    private = uvicorn.Config(app, host=CONTROL_HOST, port=control_port, lifespan="on",
                             access_log=True, log_config=log_config)  # fmt: skip
    public = uvicorn.Config(
        FleetOnly(app, fleet_paths()), host=config.host, port=config.port, lifespan="off",
        access_log=True, log_config=log_config, ssl_certfile=config.ssl_certfile,
        ssl_keyfile=config.ssl_keyfile,
    )  # fmt: skip
    return Listener(private), Listener(public)


async def serve_both(private: Listener, public: Listener) -> int | None:
    """Private first (its lifespan starts the SuperExec), then public; SIGTERM/SIGINT stop
    both. Returns the signal that stopped them, or None if a listener ended on its own."""
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        public.should_exit = private.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    inner = asyncio.create_task(private.serve())
    while not private.started and not inner.done():
        await asyncio.sleep(0.05)
    tasks = {inner}
    if private.started:
        tasks.add(asyncio.create_task(public.serve()))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    public.should_exit = private.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return stopped[0] if stopped else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control-port", type=int, required=True)
    args, flower_args = parser.parse_known_args(argv)
    from flwr.superlink.cli.flower_superlink import _parse_superlink_lifespan_config

    sys.argv = ["flower-superlink", *flower_args]  # Flower parses its own flags, as usual
    config = _parse_superlink_lifespan_config()
    private, public = listeners(config, args.control_port)
    signum = asyncio.run(serve_both(private, public))
    if signum is None:
        sys.exit(1)
    # as uvicorn.run ends flower-superlink: after the graceful shutdown, the signal's own
    # default action (the database is left as Flower leaves it; SQLite's WAL is crash-safe)
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


if __name__ == "__main__":
    main()
