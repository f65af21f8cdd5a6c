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
# Ray reads its single-machine (loopback-only) switch once, at its first import in this process:
# set before any test imports it, whatever the order (fedmodel.ray_backend.use_loopback).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedmodel-flwr-home-"))


@pytest.fixture
def flwr_home(tmp_path, monkeypatch):
    """A private FLWR_HOME for tests that start Flower processes."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home
