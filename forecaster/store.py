"""Persist trained models so a restarted service serves at once.

One file per variant (`<dir>/<variant>.joblib`) holding a small header (format version,
variant, model name, training window, config fingerprint) and the `TrainedModel`. A file
written with another format version or another config fingerprint is refused (`load`
returns None and logs why): serving a model trained for a different config (other
quantiles, horizon, step) would be silently wrong, retraining is merely slow.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import joblib

from forecaster.engine import TrainedModel

log = logging.getLogger(__name__)

#: Bump when the pickled layout of TrainedModel or the models changes. 3: LightGBM's
#: features changed (a booster stored by 2 has fewer columns and would fail every predict).
FORMAT_VERSION = 3


def _path(directory: Path, variant: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", variant)
    return directory / f"{safe}.joblib"


def save(model: TrainedModel, directory: str | Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a torn model."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = _path(d, model.variant)
    header = {"version": FORMAT_VERSION, "variant": model.variant, "model": model.model_name,
              "trained_from": model.trained_from, "trained_to": model.trained_to,
              "fingerprint": model.fingerprint}
    tmp = path.with_suffix(".tmp")
    joblib.dump({"header": header, "model": model}, tmp)
    os.replace(tmp, path)
    return path


def load(directory: str | Path, variant: str, fingerprint: str) -> TrainedModel | None:
    """The stored model for `variant`, or None if absent, unreadable or for another config."""
    path = _path(Path(directory), variant)
    if not path.is_file():
        return None
    try:
        blob: Any = joblib.load(path)
        header = blob["header"]
        model = blob["model"]
    except Exception as exc:  # a bad file means "retrain", never a crash
        log.warning("store: cannot read %s: %s", path, exc)
        return None
    if header.get("version") != FORMAT_VERSION:
        log.warning("store: %s has format version %s, expected %s; refusing", path,
                    header.get("version"), FORMAT_VERSION)
        return None
    if header.get("fingerprint") != fingerprint:
        log.warning("store: %s was trained for config %s, current config is %s; refusing",
                    path, header.get("fingerprint"), fingerprint)
        return None
    if not isinstance(model, TrainedModel):
        log.warning("store: %s does not hold a TrainedModel; refusing", path)
        return None
    return model


def save_all(models: dict[str, TrainedModel], directory: str | Path) -> list[Path]:
    """Save every model; returns the files written."""
    return [save(m, directory) for m in models.values()]


def load_all(directory: str | Path, variants: list[str],
             fingerprint: str) -> dict[str, TrainedModel]:
    """Load the variants that have a usable model (others are simply missing)."""
    out = {}
    for v in variants:
        m = load(directory, v, fingerprint)
        if m is not None:
            out[v] = m
    return out
