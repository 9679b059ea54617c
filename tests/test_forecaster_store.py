"""Persistence: a restarted service loads and serves; another config's model is refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from forecaster.base import History
from forecaster.engine import config_fingerprint, train_all
from forecaster.store import FORMAT_VERSION, load, load_all, save_all


def series() -> History:
    rng = np.random.default_rng(3)
    return History("llama/70b", 1_736_121_600.0, 600, 50 + rng.normal(0, 2, 600))


def test_round_trip_serves_the_same_forecast(tmp_path: Path) -> None:
    fp = config_fingerprint({"horizon": 6})
    models = train_all({"llama/70b": series()}, 6, n_jobs=1, fingerprint=fp, use_global=False)
    save_all(models, tmp_path)
    loaded = load_all(tmp_path, ["llama/70b", "missing"], fp)
    assert list(loaded) == ["llama/70b"]
    a = models["llama/70b"].forecast(None, None, 6)
    b = loaded["llama/70b"].forecast(None, None, 6)
    assert b.model == a.model and b.trained_to == a.trained_to
    for q in a.quantiles:
        np.testing.assert_allclose(a.quantiles[q], b.quantiles[q])


def test_model_for_another_config_is_refused(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    models = train_all({"llama/70b": series()}, 6, n_jobs=1,
                       fingerprint=config_fingerprint({"horizon": 6}), use_global=False)
    save_all(models, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert load(tmp_path, "llama/70b", config_fingerprint({"horizon": 12})) is None
    assert "refusing" in caplog.text


def test_corrupt_file_means_retrain_not_crash(tmp_path: Path) -> None:
    (tmp_path / "v.joblib").write_bytes(b"not a pickle")
    assert load(tmp_path, "v", "x") is None


def test_a_model_stored_by_an_older_format_is_refused(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A booster stored before LightGBM's features changed has fewer columns than the
    features built now and would fail every forecast: the file is refused (a retrain
    follows), never served."""
    import joblib

    fp = config_fingerprint({"horizon": 6})
    models = train_all({"llama/70b": series()}, 6, n_jobs=1, fingerprint=fp, use_global=False)
    (path,) = save_all(models, tmp_path)
    stored = joblib.load(path)
    assert stored["header"]["version"] == FORMAT_VERSION == 3
    joblib.dump({**stored, "header": {**stored["header"], "version": 2}}, path)
    with caplog.at_level(logging.WARNING):
        assert load(tmp_path, "llama/70b", fp) is None
    assert "format version 2" in caplog.text
