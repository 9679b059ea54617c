"""The seam between the service and the forecasting engine.

The service holds one `ServedModel` per variant: which model serves it, on which window it
was trained, under which configuration, and how to forecast from the newest data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from controller.config import Config, ForecastConfig
from forecaster.base import Forecast, Forecaster, History, NotEnoughHistoryError
from forecaster.baselines import Naive, SeasonalNaive

log = logging.getLogger("forescale.training")


def config_fingerprint(config: Config) -> str:
    """Hash of the config fields a model depends on: a model trained under another
    fingerprint must never serve."""
    relevant = {
        "step_s": config.prometheus.step_s,
        "history_days": config.prometheus.history_days,
        "quantiles": config.forecast.quantiles,
        "variants": {v.name: v.signals.requests.format(selector=v.label_selector)
                     for v in config.variants},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ServedModel:
    """A fitted model serving one variant."""

    variant: str
    model_name: str
    trained_from: float
    trained_to: float
    fingerprint: str
    tail_s: float
    scores: dict[str, float] = field(default_factory=dict)
    fallback_reason: str | None = None

    def _fresh(self, tail: History) -> Forecaster:
        if self.model_name == "naive":
            return Naive().fit(tail)
        return SeasonalNaive(86_400, name=self.model_name).fit(tail)

    def forecast(self, tail: History, horizon: int, quantiles: tuple[float, ...]) -> Forecast:
        """Forecast steps after `tail.end` from the newest data."""
        model = self._fresh(tail)
        qs = model.predict(horizon, quantiles)
        return Forecast(variant=self.variant, issued_at=tail.end, step_s=tail.step_s,
                        quantiles=qs, model=self.model_name, trained_from=self.trained_from,
                        trained_to=self.trained_to, scores=dict(self.scores))


@dataclass
class TrainingReport:
    models: dict[str, ServedModel]
    failed: dict[str, str]
    seconds: float


def _train_one(h: History, fingerprint: str) -> ServedModel:
    daily = SeasonalNaive(86_400, name="seasonal_naive_daily")
    try:
        daily.fit(h)
        name, tail_s, why = daily.name, 8 * 86_400.0, None
    except NotEnoughHistoryError as exc:
        Naive().fit(h)
        name, tail_s, why = "naive", 3600.0 * 48, str(exc)
    values = h.values
    finite = values[np.isfinite(values)]
    return ServedModel(h.variant, name, h.start, h.end, fingerprint, tail_s,
                       {"n_train": float(finite.size)}, why)


def train_models(histories: Mapping[str, History], horizons: Mapping[str, int],
                 cfg: ForecastConfig, fingerprint: str, budget_s: float) -> TrainingReport:
    """Fit every variant; a variant whose fit fails is reported, never raised."""
    del horizons, cfg, budget_s
    t0 = time.perf_counter()
    models: dict[str, ServedModel] = {}
    failed: dict[str, str] = {}
    for name, h in histories.items():
        try:
            models[name] = _train_one(h, fingerprint)
        except NotEnoughHistoryError as exc:
            failed[name] = str(exc)
            log.warning("train %s failed: %s", name, exc)
    return TrainingReport(models, failed, time.perf_counter() - t0)
