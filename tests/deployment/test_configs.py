"""Bad server.toml / node.toml: one line naming the file and field, exit 2, nothing started.

Also the exact Flower command lines the services build and the ServerApp's deployment settings,
so a wrong flag is caught here in milliseconds rather than in a loopback deployment.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from clients.daemon.checks import load_deployed_node
from clients.daemon.service import launcher_argv, supernode_argv
from fedmodel.cli.node_cmd import app as node_app
from fedmodel.cli.server_cmd import app as server_app
from fedmodel.config import ConfigError
from fedmodel.scenarios import _dump_toml
from server.deploy.config import load_server_config
from server.deploy.loopback import kill_group, loopback, start
from server.deploy.superlink import superlink_argv
from server.server_app import settings_from_run_config

runner = CliRunner()


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return loopback(tmp_path_factory.mktemp("fed"), ["node-0"], ["node-0"])


def _one_line_exit_2(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _edit(src: Path, dst: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text, text
    dst.write_text(text.replace(old, new))
    return dst


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ('ca = "pki/ca.crt"', 'ca = "pki/missing.crt"', ["tls.ca", "no such file"]),
        ("round_timeout = 30", "round_timout = 30", ["run.round_timout", "xtra"]),
        ("[tls]", "[tls", ["malformed TOML"]),
        ('cert = "pki/server.pem"', 'cert = "pki/server.key"', ["server.key", "not a PEM cert"]),
        ('.auth.pub"', '.ed25519.pub"', ["ed25519.pub", "expected an EC (P-384) public key"]),
        ('host = "', 'insecure = true\nhost = "', ["insecure", "[tls]"]),
    ],
    ids=["missing-ca", "unknown-field", "malformed", "key-as-cert", "wrong-node-key", "both"],
)
def test_bad_server_config(fed, tmp_path, old, new, needles):
    bad = _edit(fed.server_toml, fed.server_toml.parent / f"bad-{tmp_path.name}.toml", old, new)
    try:
        for command in (["start"], ["run", "--scenario", "mnist-cnn"]):
            _one_line_exit_2(runner.invoke(server_app, [*command, "--config", str(bad)]), *needles)
    finally:
        bad.unlink()


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ('root_certificates = "pki/ca.crt"', 'root_certificates = "pki/nope.crt"',
         ["deployment.root_certificates", "no such file"]),
        ('auth_key = "keys/node-0.auth"', 'auth_key = "keys/node-0.ed25519"',
         ["node-0.ed25519", "expected an EC (P-384) private key"]),
        ('auth_key = "keys/node-0.auth"', 'auth_key = "keys/node-0.auth.pub"',
         ["node-0.auth.pub", "looks like a public key"]),
        ("runtime_port", "runtime_prot", ["deployment.runtime_prot", "xtra"]),
        ("[deployment]", "[deployment", ["malformed TOML"]),
        ("[deployment]", "[other]", ["other", "xtra"]),
    ],
    ids=["missing-ca", "signing-key-as-auth", "public-as-private", "unknown-field", "malformed",
         "no-deployment"],
)  # fmt: skip
def test_bad_node_config(fed, old, new, needles):
    node_toml = fed.node_toml("node-0")
    bad = _edit(node_toml, node_toml.parent / "bad.toml", old, new)
    try:
        for command in ("start", "status", "stop"):
            _one_line_exit_2(runner.invoke(node_app, [command, "--config", str(bad)]), *needles)
    finally:
        bad.unlink()


def test_node_without_deployment_table(fed):
    node_toml = fed.node_toml("node-0")
    text = node_toml.read_text()
    bad = node_toml.parent / "sim-only.toml"
    bad.write_text(text[: text.index("[deployment]")])
    try:
        result = runner.invoke(node_app, ["start", "--config", str(bad)])
        _one_line_exit_2(result, "no [deployment]")
    finally:
        bad.unlink()


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.toml")
    _one_line_exit_2(runner.invoke(server_app, ["start", "--config", missing]), "no such config")
    _one_line_exit_2(runner.invoke(node_app, ["start", "--config", missing]), "no such config")


def test_superlink_command_line(fed):
    argv = superlink_argv(load_server_config(fed.server_toml))
    flags = " ".join(argv[1:])
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--database", "--disable-runtime-dependency-installation"):  # fmt: skip
        assert flag in flags, flags
    assert "--insecure" not in flags
    assert argv[argv.index("--database") + 1].endswith("state/state.db")
    cfg = load_server_config(fed.server_toml)
    assert argv[1:3] == ["-m", "server.deploy.superlink_main"]  # public Fleet, loopback control
    assert argv[argv.index("--control-port") + 1] == str(cfg.control_port) != str(cfg.port)
    assert cfg.control_address == f"127.0.0.1:{cfg.control_port}"


def test_supernode_command_line(fed):
    node, dep, source = load_deployed_node(fed.node_toml("node-0"))
    argv = supernode_argv(node, dep, source, dep.state_dir)
    assert argv[argv.index("--port") + 1] == str(dep.runtime_port)
    assert argv[argv.index("--node-config") + 1] == f'config="{source}"'
    assert argv[argv.index("--auth-supernode-private-key") + 1].endswith("keys/node-0.auth")
    assert argv[argv.index("--root-certificates") + 1].endswith("pki/ca.crt")
    assert argv[argv.index("--isolation") + 1] == "process"
    assert "--insecure" not in argv


def test_no_node_setting_bypasses_the_launcher(fed):
    """Every task goes through the launcher's code gate; warm_launcher only picks the imports."""
    node, dep, source = load_deployed_node(fed.node_toml("node-0"))
    for warm in (True, False):
        variant = dep.model_copy(update={"warm_launcher": warm})
        argv = supernode_argv(node, variant, source, dep.state_dir)
        assert argv[argv.index("--isolation") + 1] == "process"  # never Flower's own ClientApps
        assert ("--cold" in launcher_argv(variant, dep.state_dir)) is not warm


def test_server_app_settings_for_deployment(tmp_path):
    run_dir = tmp_path / "run"
    context = Context(
        run_id=7,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "scenario": "heart-hospitals", "engine": "deployment", "out-dir": str(run_dir),
            "round-timeout": 45.0, "transport-tls": True, "transport-node-auth": True,
        },
    )  # fmt: skip
    settings = settings_from_run_config(context)
    assert settings.engine == "deployment" and settings.run_dir == run_dir
    assert settings.sim_nodes_dir is None and not run_dir.exists()  # no virtual nodes
    assert settings.round_timeout == 45.0
    assert settings.transport == {"tls": True, "node_auth": True}


@pytest.mark.parametrize(
    "text",
    [
        'host = "0.0.0.0"\nport = 19400\ninsecure = true\n',
        'host = "127.0.0.1"\naddress = "fl.example.org:19400"\nport = 19400\ninsecure = true\n',
    ],
    ids=["public-host", "public-address"],
)
def test_insecure_coordinator_off_loopback_is_refused(tmp_path, text):
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_server_config(server_toml)
    line = str(err.value)
    assert "\n" not in line and "insecure" in line and "loopback" in line, line


def test_control_port_must_differ_from_the_public_port(tmp_path):
    server_toml = tmp_path / "server.toml"
    server_toml.write_text("port = 19400\ncontrol_port = 19400\ninsecure = true\n")
    with pytest.raises(ConfigError, match="control_port must differ"):
        load_server_config(server_toml)


def test_insecure_coordinator_on_loopback_is_allowed(tmp_path):
    server_toml = tmp_path / "server.toml"
    server_toml.write_text('host = "127.0.0.1"\nport = 19400\ninsecure = true\n')
    assert load_server_config(server_toml).insecure


def test_insecure_node_off_loopback_is_refused(fed, tmp_path):
    node_toml = fed.node_toml("node-0")
    text = node_toml.read_text()
    head = text.split("[deployment]")[0]
    bad = node_toml.parent / f"insecure-{tmp_path.name}.toml"
    bad.write_text(head + '[deployment]\nsuperlink = "fl.example.org:19400"\ninsecure = true\n')
    try:
        with pytest.raises(ConfigError) as err:
            load_deployed_node(bad)
        line = str(err.value)
        assert "\n" not in line and "insecure" in line and "loopback" in line, line
        bad.write_text(head + '[deployment]\nsuperlink = "127.0.0.1:19400"\ninsecure = true\n')
        assert load_deployed_node(bad)[1].insecure  # benchmarks on one host still work
    finally:
        bad.unlink()


def test_node_that_requires_dp_without_a_budget_does_not_start(fed, tmp_path):
    """The default policy (require_dp) with no [budget]: DP without a cap is no protection."""
    node_toml = fed.node_toml("node-0")
    data = tomllib.loads(node_toml.read_text())
    assert "budget" in data and "policy" in data
    del data["budget"]
    bad = node_toml.parent / f"no-budget-{tmp_path.name}.toml"
    bad.write_text(_dump_toml(data))
    out = tmp_path / "start.out"
    proc = start(["node", "start", "--config", str(bad)], out)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        kill_group(proc)
        bad.unlink()
    lines = out.read_text().strip().splitlines()
    assert code == 2, out.read_text()
    assert len(lines) == 1 and "budget" in lines[0] and "require_dp" in lines[0], lines
