"""Restart safety: the scaling state (recent recommendations, scale events) and the tail of the
decision log survive a restart, so a new process never forgets a stabilisation window and
bursts into scale-downs.

Two stores: a JSON file (dry-run, single instance with a volume) and a ConfigMap in
forescale's namespace (in-cluster; every replica of forescale reads the leader's state).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from controller.protocols import PermanentError, TemporaryError

log = logging.getLogger("forescale.state")

STATE_VERSION = 1


class StateStore(Protocol):
    def load(self) -> dict[str, Any]:
        """The saved state, or {} when there is none."""
        ...

    def save(self, state: dict[str, Any]) -> None:
        ...


class FileStateStore:
    """State as a JSON file, replaced atomically so a crash mid-write leaves the old one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("state file %s unreadable (%s): starting without saved state",
                      self.path, exc)
            return {}
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            log.error("state file %s has an unknown format: ignored", self.path)
            return {}
        return raw

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**state, "version": STATE_VERSION}, fh)
        os.replace(tmp, self.path)


class ConfigMapStateStore:
    """State in a ConfigMap (`data["state.json"]`), written with optimistic concurrency."""

    KEY = "state.json"

    def __init__(self, api_client: Any, namespace: str, name: str = "forescale-state") -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name

    def _read(self) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _classify(exc, "get", self.namespace) from None

    def load(self) -> dict[str, Any]:
        cm = self._read()
        if cm is None or not cm.data or self.KEY not in cm.data:
            return {}
        try:
            raw = json.loads(cm.data[self.KEY])
        except ValueError:
            log.error("ConfigMap %s/%s holds invalid JSON: ignored", self.namespace, self.name)
            return {}
        return raw if isinstance(raw, dict) and raw.get("version") == STATE_VERSION else {}

    def save(self, state: dict[str, Any]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        body = {self.KEY: json.dumps({**state, "version": STATE_VERSION})}
        cm = self._read()
        try:
            if cm is None:
                self.core.create_namespaced_config_map(self.namespace, client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(name=self.name), data=body))
            else:
                cm.data = body
                self.core.replace_namespaced_config_map(self.name, self.namespace, cm)
        except ApiException as exc:
            raise _classify(exc, "update", self.namespace) from None


def _classify(exc: Any, verb: str, namespace: str) -> Exception:
    status = getattr(exc, "status", 0)
    if status in (401, 403):
        return PermanentError(f"forbidden: may not {verb} configmaps in namespace {namespace} "
                              "(check deploy/kubernetes RBAC)")
    return TemporaryError(f"configmap {verb} failed with HTTP {status}: {exc.reason}")
