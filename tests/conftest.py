"""Shared fixtures. Servers (Prometheus, the Kubernetes API emulator) live in tests/support."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.prom", "tests.support.k8s_emulator"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real traces expected at {SHARED_DATA} (shared/ beside the repo)")
    return SHARED_DATA
