"""The operator guide runs as written (issue #12): ``docs/operator-guide.md``, block by block and
in order, with a coordinator and two sites on this host, to a finished run in which both sites
trained and its compliance report. So the guide cannot drift from the code again.

The guide is an operator's document, not a script. What it cannot say about a loopback host is
in HTML comments right above its blocks (invisible when rendered); those marks are the contract:

* ``<!-- run: coordinator -->`` / ``<!-- run: site -->``: a bash block, run line by line in the
  coordinator's folder, or in each site's folder in turn (lines starting with ``#`` are shown
  output). ``; background`` adds that the line stays in the foreground (systemd runs it): it is
  started in its own session, and the walk goes on once it is ready (``READY``).
* ``<!-- file: coordinator/server.toml -->`` / ``<!-- file: site/node.toml -->``: a toml block
  is that file's whole content, in that place's folder.
* ``<!-- skip: reason -->``: not run here, and why.

A bash or toml block with none of these fails, so a new block cannot escape the test. A
``fedmodel`` line runs in this process through the CLI's own app (the same argv, minus an
interpreter and a torch import per line); shell lines (``scp``, ``sha256sum``, ``cat >>``) run
in bash.

The loopback set-up, applied to every line and file (``Loopback.substitute``):

=====================================  ==========================================================
guide                                  loopback
=====================================  ==========================================================
``hospital-a``, ``cleveland``, 9094    per site: hospital-b's blocks name ``hospital-b``, its
                                       hospital's files (``hungary``) and its own runtime port
``<64 hex>``                           the exchange key's fingerprint the coordinator's
                                       ``server start`` printed (the call "read it out")
``HOST.example.org:/path`` (scp)       ``/path``: every host is this one
``scp``                                ``cp``
``fl.example.org``                     ``localhost`` (the certificate's name, and what sites dial)
``203.0.113.10``, ``0.0.0.0``          ``127.0.0.1``: nothing listens beyond loopback
9092, 9093                             free ports
``/srv/``                              this test's folder: ``/srv/fedmodel`` is the
                                       coordinator's, ``/srv/hospital-a`` a site's
=====================================  ==========================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.policy import policy_violation
from fedmodel.cli.main import app as fedmodel_app
from fedmodel.config import ScenarioConfig, parse_config
from fedmodel.data.heart import heart_task
from fedmodel.node_config import NodeConfig
from server.deploy.loopback import kill_group, start, wait_for_count
from server.deploy.processes import free_port
from server.records import read_metrics

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
FENCE = re.compile(r"^\s*```(\w*)\s*$")
MARK = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
MARKED_LANGUAGES = ("bash", "toml")  # plain ``` blocks are shown output
FOLDERS = {"coordinator": "/srv/fedmodel", "site": "/srv/hospital-a"}  # as the guide names them
SITES = {  # each site's words for what the guide writes for hospital-a
    "hospital-a": {},
    "hospital-b": {"hospital-a": "hospital-b", "cleveland": "hungary"},
}
SITE_PORT = "9094"  # runtime_port: each SuperNode on one host needs its own
SHARED_PORTS = ("9092", "9093")
FINGERPRINT = "<64 hex>"
SAID_FINGERPRINT = re.compile(r"sites pin exchange key ([0-9a-f]{64})")
READY = {  # a background command -> (file in its folder, "" = its own output; the ready line)
    ("server", "start"): ("", "SuperLink ready"),
    ("node", "start"): ("logs/node.log", "launcher ready"),
}
START_TIMEOUT = 240.0
COMMAND_TIMEOUT = 600.0
SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<"}
GUIDE_LEFTOVERS = re.compile(r"example\.org|203\.0\.113|/srv/|/opt/|<[\w ]+>|\b909[234]\b")


@dataclass(frozen=True)
class Block:
    """One fenced block of the guide and the marks in the comment right above it."""

    line: int
    lang: str
    text: str
    marks: dict[str, str]

    @property
    def commands(self) -> list[str]:
        return [s for raw in self.text.splitlines() if (s := raw.strip()) and s[0] != "#"]

    @property
    def where(self) -> str:
        return f"{GUIDE.name}:{self.line}"


def parse_marks(line: str) -> dict[str, str]:
    """``<!-- run: site; background -->`` -> ``{"run": "site", "background": ""}``; a skip's
    reason is prose, whatever it contains."""
    found = MARK.match(line)
    if found is None:
        return {}
    if found.group(1).startswith("skip:"):
        return {"skip": found.group(1).removeprefix("skip:").strip()}
    pairs = (part.partition(":") for part in found.group(1).split(";"))
    return {key.strip(): value.strip() for key, _, value in pairs}


def parse_guide(text: str) -> list[Block]:
    """Every fenced block in order (indented ones inside list items too), dedented."""
    lines, blocks, at = text.splitlines(), [], 0
    while at < len(lines):
        opened = FENCE.match(lines[at])
        if opened is None:
            at += 1
            continue
        end = next(i for i in range(at + 1, len(lines)) if lines[i].strip() == "```")
        body = textwrap.dedent("\n".join(lines[at + 1 : end])) + "\n"
        marks = parse_marks(lines[at - 1]) if at else {}
        blocks.append(Block(at + 1, opened.group(1), body, marks))
        at = end + 1
    return blocks


def mark_problems(block: Block) -> list[str]:
    """Why a block's marks do not say how the test treats it (empty: they do)."""
    if block.lang not in MARKED_LANGUAGES:
        return []
    kinds = [k for k in ("run", "file", "skip") if k in block.marks]
    problems = [f"{block.where}: unknown mark {k!r}" for k in block.marks
                if k not in ("run", "file", "skip", "background")]  # fmt: skip
    if len(kinds) != 1:
        return [*problems, f"{block.where}: a {block.lang} block needs one of run/file/skip"]
    value = block.marks[kinds[0]]
    if kinds[0] == "run" and value not in FOLDERS:
        problems.append(f"{block.where}: run: {value!r}, not one of {sorted(FOLDERS)}")
    if kinds[0] == "file" and value.partition("/")[0] not in FOLDERS:
        problems.append(f"{block.where}: file: {value!r} must start with a place")
    if kinds[0] == "skip" and not value:
        problems.append(f"{block.where}: skip needs its reason")
    if "background" in block.marks and kinds[0] != "run":
        problems.append(f"{block.where}: background is for run blocks")
    return problems


@dataclass
class Loopback:
    """The substitution table of the module docstring, for one test folder."""

    root: Path
    ports: dict[str, str]
    site_ports: dict[str, str]
    told: dict[str, str] = field(default_factory=dict)  # placeholder -> what was read out

    @classmethod
    def on(cls, root: Path) -> Loopback:
        return cls(root, {p: str(free_port()) for p in SHARED_PORTS},
                   {site: str(free_port()) for site in SITES})  # fmt: skip

    def places(self, place: str) -> list[tuple[str, dict[str, str]]]:
        """Who runs a block marked ``place``, each with its words for the guide's."""
        if place == "coordinator":
            return [("coordinator", {})]
        return [(site, words | {SITE_PORT: self.site_ports[site]}) for site, words in SITES.items()]

    def folder(self, place: str, words: dict[str, str]) -> Path:
        path = Path(self.substitute(FOLDERS[place], words))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def substitute(self, text: str, words: dict[str, str]) -> str:
        for old, new in (words | self.told).items():
            text = re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, text)
        text = re.sub(r"[\w.-]+\.example\.org:(?=/)", "", text)
        text = text.replace("fl.example.org", "localhost")
        text = text.replace("203.0.113.10", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
        for port, free in self.ports.items():
            text = re.sub(rf"\b{port}\b", free, text)
        text = text.replace("/srv/", f"{self.root}/")
        return re.sub(r"^scp\b", "cp", text, flags=re.MULTILINE)

    def hear(self, output: str) -> None:
        """What a command printed that the guide has a site type in (read out of band)."""
        if said := SAID_FINGERPRINT.search(output):
            self.told[FINGERPRINT] = said.group(1)


@dataclass
class GuideRun:
    """Follows the guide: runs, writes or skips each block; every process it starts is its own
    session, killed by ``close``."""

    loop: Loopback
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    done: dict[int, str] = field(default_factory=dict)  # block line -> ran / wrote / skipped
    said: list[tuple[str, str, str]] = field(default_factory=list)  # (who, command, output)

    def follow(self, blocks: list[Block]) -> None:
        for block in blocks:
            if block.lang in MARKED_LANGUAGES:
                self.block(block)

    def block(self, block: Block) -> None:
        if problems := mark_problems(block):
            raise AssertionError("; ".join(problems))
        if "skip" in block.marks:
            self.done[block.line] = "skipped"
            return
        place, _, name = block.marks.get("file", block.marks.get("run", "")).partition("/")
        where = [(who, self.loop.folder(place, words), words)
                 for who, words in self.loop.places(place)]  # fmt: skip
        if name:
            for _, folder, words in where:
                (folder / name).write_text(self.loop.substitute(block.text, words))
        elif "background" in block.marks:
            self.services(block, where)
        else:
            for who, folder, words in where:
                for command in block.commands:
                    line = self.loop.substitute(command, words)
                    self.heard(who, line, self.foreground(block, folder, line))
        self.done[block.line] = "wrote" if name else "ran"

    def heard(self, who: str, line: str, output: str) -> None:
        self.said.append((who, line, output))
        self.loop.hear(output)

    def foreground(self, block: Block, folder: Path, line: str) -> str:
        """A ``fedmodel`` line runs in this process through the CLI's own app (the same argv;
        it saves an interpreter and a torch import per line, 5-20 s on a loaded host); any
        other line, or one with shell operators, in bash."""
        argv = shlex.split(line, comments=True)
        if argv[0] == "fedmodel" and not set(argv) & SHELL_OPERATORS:
            with contextlib.chdir(folder):
                result = CliRunner().invoke(fedmodel_app, argv[1:])
            code, output = result.exit_code, result.output
            if result.exception and not isinstance(result.exception, SystemExit):
                output += "".join(traceback.format_exception(result.exception))
        else:
            done = subprocess.run(["bash", "-c", line], cwd=folder, env=self.env, text=True,
                                  capture_output=True, timeout=COMMAND_TIMEOUT)  # fmt: skip
            code, output = done.returncode, done.stdout + done.stderr
        if code != 0:
            raise AssertionError(f"{block.where}: `{line}` in {folder} exited {code}:\n"
                                 f"{output[-4000:]}")  # fmt: skip
        return output

    def services(self, block: Block, where: list[tuple[str, Path, dict[str, str]]]) -> None:
        """Start every place's service (each its own session), then wait for each one's ready
        line: the sites start side by side, as on their own hosts."""
        started = []
        for who, folder, words in where:
            for command in block.commands:
                line = self.loop.substitute(command, words)
                started.append((who, line, *self.background(block, who, folder, line)))
        for who, line, proc, out, (watched, ready) in started:
            wait_for_count(watched, ready, 1, START_TIMEOUT, proc)
            self.heard(who, line, out.read_text(errors="replace"))

    def background(
        self, block: Block, who: str, folder: Path, line: str
    ) -> tuple[subprocess.Popen, Path, tuple[Path, str]]:
        """Start a service that stays in the foreground; its output file and ready line."""
        argv = shlex.split(line, comments=True)
        ready = READY.get(tuple(argv[1:3]))
        if argv[0] != "fedmodel" or ready is None:
            raise AssertionError(f"{block.where}: no ready line known for `{line}`")
        out = self.loop.root / f"{who}-{argv[1]}.out"
        self.procs.append(start(argv[1:], out, cwd=folder))
        return self.procs[-1], out, (folder / ready[0] if ready[0] else out, ready[1])

    def close(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)


def guide_blocks() -> list[Block]:
    return parse_guide(GUIDE.read_text(encoding="utf-8"))


def marked(blocks: list[Block], key: str) -> Iterator[Block]:
    return (b for b in blocks if key in b.marks)


def flower_env() -> dict[str, str]:
    """The test's environment (conftest: no telemetry, no installs), ``fedmodel`` on PATH."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_every_command_block_is_run_written_or_skipped_with_a_reason():
    blocks = guide_blocks()
    assert [p for b in blocks for p in mark_problems(b)] == []
    runs = {b.marks["run"] for b in marked(blocks, "run")}
    assert runs == set(FOLDERS) and any(marked(blocks, "background"))


def test_loopback_leaves_nothing_of_the_guide_hosts_paths_or_placeholders(tmp_path):
    loop = Loopback.on(tmp_path)
    loop.told[FINGERPRINT] = "0" * 64
    blocks = guide_blocks()
    for block in [*marked(blocks, "run"), *marked(blocks, "file")]:
        place = (block.marks.get("file") or block.marks["run"]).partition("/")[0]
        for _, words in loop.places(place):
            commands = block.commands if block.lang == "bash" else [block.text]
            left = [c for c in commands if GUIDE_LEFTOVERS.search(loop.substitute(c, words))]
            assert left == [], block.where


def test_the_guide_scenario_fits_inside_every_site_policy():
    """The issue's first failure: a scenario that asked for more than node.toml allows."""
    blocks = {b.marks["file"]: b.text for b in marked(guide_blocks(), "file")}
    node = parse_config(NodeConfig, tomllib.loads(blocks["site/node.toml"]), "node.toml")
    scenario_data = tomllib.loads(blocks["coordinator/heart-sites.toml"])
    task = heart_task().model_dump(mode="json", exclude_none=True)  # what the guide appends
    scenario = parse_config(ScenarioConfig, scenario_data | {"task": task}, "heart-sites.toml")
    assert node.budget is not None and node.deployment is not None
    assert policy_violation(node.policy, scenario) is None
    assert scenario.dp.delta <= node.budget.delta
    assert scenario.security.sealed_updates or not node.policy.require_sealed_updates


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The whole guide, once, on loopback."""
    run = GuideRun(Loopback.on(tmp_path_factory.mktemp("guide")), flower_env())
    blocks = guide_blocks()
    try:
        run.follow(blocks)
        yield run, blocks
    finally:
        run.close()


@pytest.mark.slow  # the guide walked as a real deployment (~65 s); its blocks are checked above
def test_the_guide_ends_with_a_run_both_sites_trained_and_its_report(walked):
    run, blocks = walked
    coordinator = run.loop.folder("coordinator", {})
    (info_path,) = coordinator.glob("runs/*/run.json")
    info = json.loads(info_path.read_text())
    assert info["status"] == "finished" and info["transport"]["sealed_updates"] is True
    trained = [r for r in read_metrics(info_path.parent) if r["round"] >= 1]
    assert trained and all({c["node"]: c["status"] for c in r["clients"]}
                           == dict.fromkeys(SITES, "ok") for r in trained)  # fmt: skip
    (path,) = [p for p in coordinator.rglob("report.json") if "runs" not in p.parts]
    report = json.loads(path.read_text())
    assert sorted(c["node"] for c in report["clients"]) == list(SITES)
    assert report["warnings"] == []
    bash = [b.line for b in blocks if b.lang == "bash"]
    assert {line: run.done.get(line) for line in bash} == {
        b.line: ("skipped" if "skip" in b.marks else "ran") for b in blocks if b.lang == "bash"
    }


@pytest.mark.slow  # the guide walked as a real deployment (~65 s); its blocks are checked above
def test_what_was_read_out_matches_on_both_ends(walked):
    """Every public file that crossed hosts (CA, ServerApp verify key, each site's keys) was
    hashed by its sender and its receiver, and the digests they compared agree."""
    run, _ = walked
    heard: dict[str, dict[str, str]] = {}  # file name -> {who: digest}
    for who, line, out in run.said:
        if line.startswith("sha256sum"):
            for digest, path in (row.split() for row in out.splitlines()):
                heard.setdefault(Path(path).name, {})[who] = digest
    keys = {f"{site}.{kind}.pub" for site in SITES for kind in ("auth", "ed25519")}
    assert set(heard) == {"ca.crt", "server.ed25519.pub", *keys}
    assert all(len(by) >= 2 and len(set(by.values())) == 1 for by in heard.values()), heard
