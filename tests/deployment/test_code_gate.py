"""The code gate on bundle bytes, without a deployment: what passes, what is refused, and the
reply a refused task sends. Bundles are built by Flower's own FAB builder from copies of the app
(``tests/deployment/bundles.py``), as ``flwr run`` builds them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.cli.build import build_fab_from_files
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from clients.daemon.code_gate import (
    CLIENTAPP,
    BundleRefused,
    InstalledCode,
    check_bundle,
    installed_code,
)
from clients.daemon.launcher import answer
from server.deploy.submit import app_root
from tests.deployment.bundles import bundle, rogue_clientapp

pytestmark = [
    pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning"),  # Flower's build
    pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning"),  # the duplicate on purpose
]


def fab_of(app: Path) -> bytes:
    """What ``flwr run APP`` submits (without walking a virtual environment)."""
    files = {p.relative_to(app).as_posix(): p for p in app.rglob("*") if p.is_file()}
    return build_fab_from_files(files)[0]


@pytest.fixture(scope="module")
def installed() -> InstalledCode:
    return installed_code()


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> bytes:
    return fab_of(bundle(tmp_path_factory.mktemp("genuine")))


def _refused(fab: bytes, installed: InstalledCode) -> BundleRefused:
    with pytest.raises(BundleRefused) as err:
        check_bundle(fab, installed)
    assert "\n" not in err.value.reason and str(Path.home()) not in err.value.reason
    return err.value


def test_the_installed_app_passes(genuine, installed):
    check_bundle(genuine, installed)
    assert f'clientapp = "{CLIENTAPP}"' in (app_root() / "pyproject.toml").read_text()


def test_another_clientapp_is_refused(tmp_path, installed):
    app = bundle(tmp_path, clientapp="rogue_app:app",
                 extra={"rogue_app/__init__.py": rogue_clientapp(tmp_path / "ran")})  # fmt: skip
    refused = _refused(fab_of(app), installed)
    assert refused.code == "clientapp" and "'rogue_app:app'" in refused.reason


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"edit": ("fedmodel/privacy/budget.py", "\nLEAK = True\n")},
         "'fedmodel/privacy/budget.py' differs from"),
        ({"extra": {"clients/helper.py": "import os\n"}}, "'clients/helper.py' is not part of"),
    ],
    ids=["edited-module", "extra-module"],
)  # fmt: skip
def test_other_fedmodel_code_is_refused(tmp_path, installed, change, needle):
    refused = _refused(fab_of(bundle(tmp_path, **change)), installed)
    assert refused.code == "code" and needle in refused.reason, refused.reason


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "entries",
    [
        [("pyproject.toml", b"[tool.flwr.app]\n")],
        [("pyproject.toml", b"not toml [")],
        [("../clients/client_app.py", b"x = 1\n")],
        [("/etc/cron.d/x.py", b"x = 1\n")],
        [("clients/x.py", b"a"), ("clients/x.py", b"b")],
    ],
    ids=["no-component", "bad-toml", "dot-dot", "absolute", "duplicate"],
)
def test_malformed_bundles_are_refused(installed, entries):
    assert _refused(_zip(entries), installed).code == "malformed"


def test_not_a_zip_is_refused(installed):
    assert _refused(b"PK\x03\x04 not really", installed).code == "malformed"


def test_a_refused_task_answers_with_an_error_and_never_calls_the_clientapp(
    monkeypatch, tmp_path, installed
):
    """``answer`` is what a forked task runs between Flower's pull and push."""
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 7)
    message = Message(RecordDict(), dst_node_id=7, message_type="train")
    context = Context(run_id=7, node_id=7, node_config={}, state=RecordDict(), run_config={})
    app = bundle(tmp_path, clientapp="rogue_app:app",
                 extra={"rogue_app/__init__.py": rogue_clientapp(tmp_path / "ran")})  # fmt: skip
    outcome = answer(message, context, fab_of(app), installed)
    assert outcome.reply.has_error() and outcome.reply.error.code == ErrorCode.INVALID_FAB
    assert outcome.reply.error.reason.startswith("code-gate/clientapp:")
    assert outcome.details == outcome.reply.error.reason and outcome.sub_status == "failed"
    assert not (tmp_path / "ran").exists()
