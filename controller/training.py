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
from typing import Any

from controller.config import Config, ForecastConfig, VariantConfig
from forecaster import store
from forecaster.base import Forecast, History
from forecaster.engine import TrainedModel, train_all
from forecaster.engine import config_fingerprint as engine_fingerprint

log = logging.getLogger("forescale.training")

#: Longest tail fetched to bring a model up to date (older gaps need a retrain anyway).
MAX_TAIL_S = 2 * 86_400.0


def global_model_inputs(config: Config) -> dict[str, Any]:
    """The config fields every variant's model depends on: the step and history it learns
    from and the quantile levels it serves."""
    return {"step_s": config.prometheus.step_s,
            "history_days": config.prometheus.history_days,
            "quantiles": sorted({*config.forecast.quantiles,
                                 config.forecast.provisioning_quantile})}


def model_inputs(v: VariantConfig) -> tuple[str, float]:
    """What a variant's trained model depends on beyond the global forecast settings: the
    series it learnt (the requests query with its selector) and the cold start its horizon
    covers. A change to anything else (limits, behaviour, SLO, mode, live signals) only
    reconfigures the policy."""
    return (v.signals.requests.replace("$selector", v.label_selector), v.profile.cold_start_s)


def config_fingerprint(config: Config) -> str:
    """Hash of the settings every model depends on (`global_model_inputs`)."""
    return engine_fingerprint(global_model_inputs(config))


def variant_fingerprint(config: Config, v: VariantConfig) -> str:
    """Hash of everything the variant's model depends on: the global settings and its own
    `model_inputs`. A model is stored and reloaded under it, so a restart serves each variant
    the model it had, whoever declared it (the file or a VariantAutoscaler), and a change to
    one variant's inputs refuses that variant's stored model only, never the others'."""
    query, cold_start_s = model_inputs(v)
    return engine_fingerprint({**global_model_inputs(config), "variant": v.name,
                               "requests": query, "cold_start_s": cold_start_s})


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
                 cfg: ForecastConfig, fingerprints: Mapping[str, str], budget_s: float,
                 n_jobs: int = 2, previous: Mapping[str, ServedModel] | None = None
                 ) -> TrainingReport:
    """Fit every variant within the budget; a variant whose fit fails is served by the
    fallback baseline and reported, never raised. Each model is stamped (and stored) with
    its variant's fingerprint (`variant_fingerprint`). `previous`: the models being replaced
    (their adaptive quantile levels carry over when trained under the same fingerprint)."""
    t0 = time.perf_counter()
    if not histories:
        return TrainingReport({}, {}, 0.0)
    trained = train_all(histories, horizon_steps=max(horizons.values()),
                        quantiles=cfg.quantiles, provisioning_quantile=cfg.provisioning_quantile,
                        budget_s=budget_s, n_jobs=n_jobs)
    for name, model in trained.items():
        # The engine stamps one fingerprint per run; each variant's own is set here, before
        # the carry-over that compares them (train_all's `previous` would compare the run's).
        model.fingerprint = fingerprints[name]
        if previous is not None and name in previous:
            model.continue_from(previous[name].trained)
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


def load_models(model_dir: Path | None, fingerprints: Mapping[str, str]
                ) -> dict[str, ServedModel]:
    """Models persisted by an earlier process for these variants, each under the variant's
    fingerprint, so a restarted service serves forecasts at once; a model stored under
    another fingerprint (its inputs changed meanwhile) is refused by the store."""
    if model_dir is None:
        return {}
    out = {}
    for name, fingerprint in fingerprints.items():
        model = store.load(model_dir, name, fingerprint)
        if model is not None:
            out[name] = ServedModel(model)
    return out
