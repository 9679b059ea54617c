"""Shared fixtures. Servers (Prometheus, the Kubernetes API emulator) live in tests/support."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import REPO, SHARED_DATA
from tests.support.net import free_port

__all__ = ["REPO", "SHARED_DATA", "free_port"]

pytest_plugins = ["tests.support.prom", "tests.support.k8s_emulator"]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real traces expected at {SHARED_DATA} (shared/ beside the repo)")
    return SHARED_DATA
