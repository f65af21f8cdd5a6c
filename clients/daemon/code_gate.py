"""Which bundles a site runs: its own installed fedmodel ClientApp, nothing a run ships.

Every Flower run carries a bundle (FAB, a zip) from the coordinator; stock Flower installs it
on the node and imports the ``clientapp`` its ``pyproject.toml`` names, so whoever can submit a
run runs code on every site, around the site's policy, budget and ledger. The launcher instead
reads the bundle's bytes here, before anything of it is written to disk or imported, and calls
the ClientApp it imported itself. A bundle is accepted only if

* its ``[tool.flwr.app.components] clientapp`` is fedmodel's (``clients.client_app:app``), and
* each of its ``.py`` files is byte-identical (SHA-256) to the file of the same path in the
  installed ``fedmodel``/``server``/``clients`` packages, hashed when the launcher started, so
  the coordinator runs the same fedmodel version as the site (the wire format is shared code).

Anything else is refused with one line (``code-gate/<code>: ...``) that names only paths inside
the bundle, never the site's own. Nothing from the bundle is executed either way: the check is
on the bytes; the site always runs the code it installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedmodel.errors import FedmodelError

CLIENTAPP = "clients.client_app:app"
PACKAGES = ("fedmodel", "server", "clients")
MAX_UNPACKED = 64 * 2**20  # Flower builds FABs up to 10 MB; a bigger unpacked size is a bomb
SHOWN = 120  # characters of a bundle-supplied name quoted in a refusal


class BundleRefused(FedmodelError):
    """The run's bundle is not this site's code; ``reason`` is the one line sent back."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.reason = f"code-gate/{code}: {detail}"
        super().__init__(self.reason)


@dataclass(frozen=True)
class InstalledCode:
    """SHA-256 of each ``.py`` file of the installed packages, by bundle path (``clients/x.py``)."""

    files: dict[str, str]


def installed_code(packages: tuple[str, ...] = PACKAGES) -> InstalledCode:
    """Hash the installed packages (where ``import`` finds them, editable or not)."""
    files: dict[str, str] = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FedmodelError(f"code gate: package {package} is not installed")
        root = Path(spec.origin).parent
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" not in path.parts:
                rel = f"{package}/{path.relative_to(root).as_posix()}"
                files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return InstalledCode(files)


def check_bundle(fab: bytes, installed: InstalledCode) -> None:
    """Raise ``BundleRefused`` unless ``fab`` names fedmodel's ClientApp and ships only the
    installed fedmodel code; reads the zip in memory, writes and imports nothing."""
    members = _read_zip(fab)
    _check_component(members)
    _check_code(members, installed)


def _read_zip(fab: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            infos = archive.infolist()
            _check_names(infos)
            return {i.filename: archive.read(i) for i in infos if not i.is_dir()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise BundleRefused("malformed", f"not a readable bundle ({type(err).__name__})") from None


def _check_names(infos: list[zipfile.ZipInfo]) -> None:
    """Plain relative paths, each once, a bounded unpacked size: nothing ambiguous to compare."""
    if sum(i.file_size for i in infos) > MAX_UNPACKED:
        raise BundleRefused("malformed", f"unpacks to more than {MAX_UNPACKED} bytes")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or "\\" in name or ".." in parts or ":" in name:
            raise BundleRefused("malformed", f"unsafe path {_shown(name)}")
        if name in seen:
            raise BundleRefused("malformed", f"{_shown(name)} appears twice")
        seen.add(name)


def _check_component(members: dict[str, bytes]) -> None:
    try:
        config = tomllib.loads(members["pyproject.toml"].decode("utf-8"))
        clientapp = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    except KeyError:
        raise BundleRefused("malformed", "no [tool.flwr.app.components] clientapp") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError):
        raise BundleRefused("malformed", "pyproject.toml does not parse") from None
    if clientapp != CLIENTAPP:
        raise BundleRefused(
            "clientapp",
            f"the bundle names clientapp {_shown(clientapp)}; this site runs only its "
            f"installed {CLIENTAPP}",
        )


def _check_code(members: dict[str, bytes], installed: InstalledCode) -> None:
    foreign = sorted(
        name
        for name, data in members.items()
        if name.endswith(".py") and installed.files.get(name) != hashlib.sha256(data).hexdigest()
    )
    if foreign:
        first = foreign[0]
        what = "differs from" if first in installed.files else "is not part of"
        raise BundleRefused(
            "code",
            f"{len(foreign)} Python file(s) are not this site's fedmodel ({_shown(first)} "
            f"{what} the installed version); coordinator and sites must run the same release",
        )


def _shown(value: object) -> str:
    """A bundle-supplied value, quoted on one line and cut short: it goes into the reply."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"
