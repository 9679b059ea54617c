"""The seam between the service and the forecasting engine.

The service holds one `ServedModel` per variant: the engine's `TrainedModel` (which model
serves it, on which window it was trained, under which configuration) plus a lock, because the
API threads and the reconcile thread forecast concurrently and a forecast updates the model's
buffer with the newest samples.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.config import Config, ForecastConfig
from forecaster import store
from forecaster.base import Forecast, History
from forecaster.engine import TrainedModel, train_all
from forecaster.engine import config_fingerprint as engine_fingerprint

log = logging.getLogger("forescale.training")

#: Longest tail fetched to bring a model up to date (older gaps need a retrain anyway).
MAX_TAIL_S = 2 * 86_400.0


def config_fingerprint(config: Config) -> str:
    """Hash of the config fields a model depends on: a model trained under another
    fingerprint must never serve."""
    return engine_fingerprint({
        "step_s": config.prometheus.step_s,
        "history_days": config.prometheus.history_days,
        "quantiles": sorted({*config.forecast.quantiles,
                             config.forecast.provisioning_quantile}),
        "variants": {v.name: v.signals.requests.replace("$selector", v.label_selector)
                     for v in config.variants},
    })


@dataclass
class ServedModel:
    """A fitted model serving one variant."""

    trained: TrainedModel
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def variant(self) -> str:
        return self.trained.variant

    @property
    def model_name(self) -> str:
        return self.trained.model_name

    @property
    def fallback_reason(self) -> str | None:
        return self.trained.fallback_reason

    def tail_start(self, issued: float) -> float:
        """Where the tail to fetch begins: a little before the newest sample the model has."""
        step = self.trained.step_s
        return max(issued - MAX_TAIL_S, min(self.trained.data_end - 2 * step, issued - step))

    def forecast(self, tail: History, horizon: int, quantiles: tuple[float, ...]) -> Forecast:
        """Forecast steps after `tail.end` from the newest data, without refitting."""
        with self._lock:
            return self.trained.forecast(tail, issued_at=tail.end, horizon=horizon,
                                         quantiles=quantiles)


@dataclass
class TrainingReport:
    models: dict[str, ServedModel]
    #: Variants served by a fallback baseline, with the reason.
    failed: dict[str, str]
    seconds: float


def train_models(histories: Mapping[str, History], horizons: Mapping[str, int],
                 cfg: ForecastConfig, fingerprint: str, budget_s: float,
                 n_jobs: int = 2, previous: Mapping[str, ServedModel] | None = None
                 ) -> TrainingReport:
    """Fit every variant within the budget; a variant whose fit fails is served by the
    fallback baseline and reported, never raised. `previous`: the models being replaced
    (their adaptive quantile levels carry over)."""
    t0 = time.perf_counter()
    if not histories:
        return TrainingReport({}, {}, 0.0)
    trained = train_all(histories, horizon_steps=max(horizons.values()),
                        quantiles=cfg.quantiles, provisioning_quantile=cfg.provisioning_quantile,
                        budget_s=budget_s, n_jobs=n_jobs, fingerprint=fingerprint,
                        previous={n: m.trained for n, m in (previous or {}).items()})
    failed = {n: m.fallback_reason for n, m in trained.items() if m.fallback_reason}
    for name, why in failed.items():
        log.warning("train %s: serving fallback %s: %s", name, trained[name].model_name, why)
    if cfg.model_dir is not None:
        try:
            store.save_all(trained, cfg.model_dir)
        except OSError as exc:
            log.error("cannot persist models to %s: %s", cfg.model_dir, exc)
    return TrainingReport({n: ServedModel(m) for n, m in trained.items()}, failed,
                          time.perf_counter() - t0)


def load_models(model_dir: Path | None, variants: list[str],
                fingerprint: str) -> dict[str, ServedModel]:
    """Models persisted by an earlier process under the same config, so a restarted service
    serves forecasts at once; models from another config are refused by the store."""
    if model_dir is None:
        return {}
    return {n: ServedModel(m) for n, m in store.load_all(model_dir, variants,
                                                         fingerprint).items()}
