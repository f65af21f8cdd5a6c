"""Shared test set-up: Flower never phones home, never installs runtime deps, never shares state."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedmodel-flwr-home-"))


@pytest.fixture
def flwr_home(tmp_path, monkeypatch):
    """A private FLWR_HOME for tests that start Flower processes."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home
