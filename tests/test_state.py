"""Restart-safe state stores: a file, and a ConfigMap over the emulated API with deploy/ RBAC."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.protocols import PermanentError
from controller.state import ConfigMapStateStore, FileStateStore
from tests.conftest import REPO
from tests.support.k8s_emulator import K8sEmulator, rule, rules_from_manifests

STATE = {"variants": {"v": {"current": 3, "recommendations": [[1.0, 3]],
                            "scale_events": [], "log": []}}}


def test_file_store_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "s" / "state.json")
    assert store.load() == {}
    store.save(STATE)
    assert store.load()["variants"] == STATE["variants"]
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".state-")]


def test_file_store_ignores_another_format_version(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    p.write_text('{"version": 99, "variants": {}}')
    assert FileStateStore(p).load() == {}


@pytest.mark.integration
def test_configmap_store_with_the_shipped_rbac(k8s_api: K8sEmulator) -> None:
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/kubernetes/rbac.yaml").read_text())
            if d]
    token = k8s_api.add_token("sa", rules_from_manifests(docs, "forescale", "forescale"))
    store = ConfigMapStateStore(k8s_api.api_client(token), "forescale")
    assert store.load() == {}
    store.save(STATE)  # create
    store.save({"variants": {}})  # update
    assert store.load() == {"variants": {}, "version": 1}
    store.save(STATE)
    assert store.load()["variants"] == STATE["variants"]


@pytest.mark.integration
def test_configmap_store_without_rbac_is_a_clear_permanent_error(k8s_api: K8sEmulator) -> None:
    token = k8s_api.add_token("weak", [rule("get", "apps", "deployments")])
    store = ConfigMapStateStore(k8s_api.api_client(token), "forescale")
    with pytest.raises(PermanentError, match="may not get configmaps in namespace forescale"):
        store.load()
