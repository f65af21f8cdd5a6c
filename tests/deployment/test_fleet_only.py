"""The public listener's filter on its own: exactly the Fleet routes reach Flower.

The loopback deployment (test_trust.py) shows ``flwr`` refused on the public port; this checks
the rule itself in milliseconds, including paths a real client would not send, and that every
path Flower's own SuperNode client calls is still let through (a Flower upgrade that moved one
would otherwise strand every site).
"""

from __future__ import annotations

import inspect
import re

import flwr.supernode.fleet_http_client as supernode_client
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from server.deploy.superlink_main import FleetOnly, fleet_paths


def _flower(request):
    return PlainTextResponse("reached Flower")


@pytest.fixture(scope="module")
def public() -> TestClient:
    inner = Starlette(routes=[Route("/{path:path}", _flower, methods=["GET", "POST"])])
    return TestClient(FleetOnly(inner, fleet_paths()))


def test_every_path_the_supernode_calls_passes(public):
    called = re.findall(r'path="(/v1/[^"]+)"', inspect.getsource(supernode_client))
    assert len(called) >= 10 and set(called) == set(fleet_paths())
    for path in called:
        assert public.post(path).text == "reached Flower", path


@pytest.mark.parametrize(
    "path",
    ["/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs",
     "/v1/runtime/pull-task-input", "/health", "/docs", "/openapi.json", "/",
     "/v1/fleet/%2e%2e/control/start-run",
     "/v1/fleet/get-fab/", "/v1/fleet"],
)  # fmt: skip
def test_everything_else_is_refused_before_flower(public, path):
    reply = public.post(path)
    assert reply.status_code == 403 and "Fleet API" in reply.text, (path, reply.text)
