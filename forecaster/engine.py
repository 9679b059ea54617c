"""Train a fleet of variants in parallel, within a time budget, never raising.

The controller calls two things:

    models = train_all(histories, horizon_steps=30, quantiles=(0.5, 0.9, 0.99),
                       provisioning_quantile=0.9, budget_s=30.0, n_jobs=2,
                       fingerprint=config_fingerprint({...}))
    fc = models["llama-70b"].forecast(newest_samples_or_None, issued_at=now,
                                       horizon=30, quantiles=(0.5, 0.9))

`train_all` runs per-variant selection (`forecaster.selection`) in worker processes. A
variant whose candidates all fail, return NaN or run past the budget gets the baseline
fallback; fallbacks are logged and counted (`TrainedModel.fallback_reason`,
`fallback_count`). `TrainedModel.forecast` merges the newest samples into the model's
buffer and predicts without refitting (cheap: the service forecasts every 30 s and retrains
hourly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecaster.base import (
    FloatArray,
    Forecast,
    Forecaster,
    History,
    check_horizon,
    check_quantiles,
)
from forecaster.baselines import Naive, daily, trailing_means
from forecaster.calibrated import PointForecaster
from forecaster.models_lgbm import fit_many_booster
from forecaster.prep import merge_tail, steps_per
from forecaster.selection import BASELINE_NAMES, Factory, Selection, default_factories, select

log = logging.getLogger(__name__)

#: Use a global LightGBM candidate when the fleet has at least this many variants.
GLOBAL_MIN_VARIANTS = 10
#: Samples kept for the fallback baselines (a week and a bit at 10-minute steps).
FALLBACK_KEEP = 1200


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Stable short hash of the config fields that change what a model means."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class TrainedModel:
    """One variant's trained forecaster plus the record of how it was chosen.

    `scores` holds the chosen model's holdout scores (`mae`, `pinball_pNN`, `coverage`),
    the best baseline's MAE on the same origins (`mae_best_baseline`: naive, window average
    or seasonal naive), the ratio of the two and the window average's `window_average_k`;
    `candidates` every candidate's; `coverage_p90` is the honest (split-conformal) realised
    coverage of the provisioning quantile on the holdout.
    """

    variant: str
    model_name: str
    trained_from: float
    trained_to: float
    step_s: int
    fingerprint: str
    scores: dict[str, float]
    coverage_p90: float
    fit_seconds: float
    quantiles: tuple[float, ...]
    model: PointForecaster | Forecaster = field(repr=False)
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    fallback_reason: str | None = None
    _buffer: FloatArray | None = field(default=None, repr=False)
    _buffer_start: float = 0.0

    @property
    def data_end(self) -> float:
        """Epoch seconds just after the newest sample the model has seen."""
        if isinstance(self.model, PointForecaster):
            y = self.model._y
            n = 0 if y is None else y.shape[0]
            return self.model._start + n * self.step_s
        n = 0 if self._buffer is None else self._buffer.shape[0]
        return self._buffer_start + n * self.step_s

    def forecast(self, history_tail: History | None, issued_at: float | None = None,
                 horizon: int = 30, quantiles: Sequence[float] | None = None) -> Forecast:
        """Quantile forecast from the newest data, without refitting.

        `history_tail`: samples newer than (or overlapping) the training data, on the same
        step; None forecasts from what the model already holds. `issued_at` (epoch s): if
        later than the newest sample, the first steps (already in the past) are skipped so
        step 1 starts at the grid point at or before `issued_at`. The returned `issued_at`
        is that grid time. Non-finite output falls back to the naive forecast of the buffer.
        """
        h = check_horizon(horizon)
        qs = check_quantiles(quantiles or self.quantiles)
        if history_tail is not None:
            self._update(history_tail)
        end = self.data_end
        lag = 0
        if issued_at is not None and issued_at > end:
            lag = int((issued_at - end) // self.step_s)
        out = self._predict(h + lag, qs)
        bad = any(not np.isfinite(v).all() for v in out.values())
        name = self.model_name
        if bad:
            log.warning("variant %s: %s produced non-finite forecast; using naive",
                        self.variant, self.model_name)
            out = self._naive_predict(h + lag, qs)
            name = "naive"
        return Forecast(self.variant, end + lag * self.step_s, self.step_s,
                        {q: v[lag:] for q, v in out.items()}, name,
                        self.trained_from, self.trained_to, dict(self.scores))

    def window_average_level(self) -> float:
        """The window-average baseline's forecast from the newest data the model holds: the
        mean of the last `window_average_k` steps (NaN when no window was chosen).

        For callers that judge the model on realised load against the best baseline (the
        service's accuracy fallback): call after `forecast`, which merges the newest samples.
        """
        k = self.scores.get("window_average_k")
        if k is None or not math.isfinite(k) or k < 1:
            return math.nan
        y = self._buffer_history().values
        return float(trailing_means(y, int(k))[-1]) if y.shape[0] else math.nan

    def continue_from(self, previous: TrainedModel) -> bool:
        """Carry the adaptive quantile level over from the model this one replaces.

        Only between models of the same variant trained under the same config fingerprint
        (a level tuned for other quantiles or another signal means nothing here).
        """
        if previous.variant != self.variant or previous.fingerprint != self.fingerprint:
            return False
        if not isinstance(self.model, PointForecaster) or \
                not isinstance(previous.model, PointForecaster):
            return False
        return self.model.continue_adaptation(previous.model)

    def _update(self, tail: History) -> None:
        if isinstance(self.model, PointForecaster):
            self.model.update(tail)
            return
        assert self._buffer is not None
        self._buffer, self._buffer_start = merge_tail(self._buffer, self._buffer_start,
                                                      self.step_s, tail, FALLBACK_KEEP)

    def _buffer_history(self) -> History:
        if isinstance(self.model, PointForecaster):
            assert self.model._y is not None
            return History(self.variant, self.model._start, self.step_s, self.model._y)
        assert self._buffer is not None
        return History(self.variant, self._buffer_start, self.step_s, self._buffer)

    def _predict(self, h: int, qs: Sequence[float]) -> dict[float, FloatArray]:
        if isinstance(self.model, PointForecaster):
            return self.model.predict(h, qs)
        # Plain protocol models (the fallback baselines) refit on the buffer: it is cheap.
        try:
            return self.model.fit(self._buffer_history()).predict(h, qs)
        except Exception as exc:  # a forecast must always come back
            log.warning("variant %s: fallback %s failed: %s", self.variant, self.model_name, exc)
            return {q: np.full(h, np.nan) for q in qs}

    def _naive_predict(self, h: int, qs: Sequence[float]) -> dict[float, FloatArray]:
        hist = self._buffer_history()
        try:
            return Naive().fit(hist).predict(h, qs)
        except Exception:  # no finite sample at all: unknown, never zero
            return {q: np.full(h, np.nan) for q in qs}


def fallback_model(history: History) -> Forecaster:
    """SeasonalNaive daily if the history covers a day and a step, else Naive."""
    if len(history) > steps_per(86_400, history.step_s):
        return daily()
    return Naive()


def _fallback(history: History, reason: str, fingerprint: str, qs: tuple[float, ...],
              fit_s: float, failures: dict[str, str]) -> TrainedModel:
    model = fallback_model(history)
    keep = history.values[-FALLBACK_KEEP:]
    start = history.start + (len(history) - keep.shape[0]) * history.step_s
    log.warning("variant %s: falling back to %s (%s)", history.variant, model.name, reason)
    return TrainedModel(history.variant, model.name, history.start, history.end,
                        history.step_s, fingerprint, {}, math.nan, fit_s, qs, model,
                        failures=failures, fallback_reason=reason, _buffer=keep.copy(),
                        _buffer_start=start)


def trim_leading_missing(history: History) -> History:
    """The history from its first finite sample on (unchanged when it has none)."""
    ok = np.flatnonzero(np.isfinite(history.values))
    if ok.size == 0 or ok[0] == 0:
        return history
    return history.slice(len(history), start=int(ok[0]))


def _fallback_reason(sel: Selection, baselines_too: bool) -> str:
    """Why a fallback serves: the budget, a history too short for every candidate (with the
    have/need of the least demanding one and which part of its history is short: the fit
    window, the holdout or the model's own rows), or failures. `baselines_too`: no candidate
    at all was fitted, the baselines included."""
    if sel.skipped_for_budget and not sel.failures:
        return "budget exceeded"
    failed = {n for n in sel.failures if baselines_too or n not in BASELINE_NAMES}
    short = {n: sel.too_short[n] for n in failed if n in sel.too_short}
    what = "any candidate" if baselines_too else "any model"
    if failed and len(short) == len(failed):
        name, (have, need, detail) = min(sorted(short.items()), key=lambda kv: kv[1][1])
        why = f"{name}: {detail}" if detail else name
        return f"not enough history for {what}: have {have}, need {need} ({why})"
    return "every candidate failed" if baselines_too else "every model candidate failed"


def train_one(history: History, factories: Sequence[Factory], horizon: int,
              quantiles: tuple[float, ...], provisioning_quantile: float,
              deadline: float | None, fingerprint: str) -> TrainedModel:
    """Select and fit one variant; never raises (falls back to a baseline instead).

    Windows before the series' first sample are dropped: the variant did not exist yet.
    Left in, they counted against the holdout split, which is by position, so a variant
    three hours old in a 14-day window had no sample in its fit half and no model was
    trained for a week.
    """
    t0 = time.perf_counter()
    history = trim_leading_missing(history)
    try:
        if deadline is not None and time.time() > deadline:
            return _fallback(history, "budget exceeded before training", fingerprint,
                             quantiles, 0.0, {})
        mono_deadline = None if deadline is None else time.monotonic() + (deadline - time.time())
        sel = select(history, factories, horizon, provisioning_quantile, mono_deadline)
    except Exception as exc:
        return _fallback(history, f"selection failed: {exc}", fingerprint, quantiles,
                         time.perf_counter() - t0, {})
    fit_s = time.perf_counter() - t0
    m = sel.model
    non_base_ok = any(name not in BASELINE_NAMES for name in sel.scores)
    if m is None:
        return _fallback(history, _fallback_reason(sel, baselines_too=True), fingerprint,
                         quantiles, fit_s, sel.failures)
    reason = None
    if not non_base_ok and factories:
        reason = _fallback_reason(sel, baselines_too=False)
        log.warning("variant %s: falling back to baseline %s (%s)", history.variant, m.name,
                    reason)
    assert m.scores is not None
    scores = {**m.scores.as_dict(), **sel.baseline_scores()}
    if scores.get("mae_best_baseline", 0.0) > 0.0:
        scores["ratio_vs_best_baseline"] = m.scores.mae / scores["mae_best_baseline"]
    return TrainedModel(history.variant, m.name, history.start, history.end, history.step_s,
                        fingerprint, scores, m.scores.coverage, fit_s, quantiles,
                        m, candidates=sel.scores, failures=sel.failures,
                        fallback_reason=reason)


def fallback_count(models: Mapping[str, TrainedModel]) -> int:
    """How many variants are served by a fallback baseline."""
    return sum(1 for m in models.values() if m.fallback_reason is not None)


def train_all(histories: Mapping[str, History], horizon_steps: int = 30,
              quantiles: Sequence[float] = (0.5, 0.9, 0.99),
              provisioning_quantile: float = 0.9, budget_s: float = 60.0, n_jobs: int = 2,
              *, factories: Sequence[Factory] | None = None, fingerprint: str = "",
              use_global: bool | None = None,
              previous: Mapping[str, TrainedModel] | None = None) -> dict[str, TrainedModel]:
    """Train every variant (in `n_jobs` processes) and return a model per variant.

    - `budget_s` bounds the whole retrain: candidates not started by then are skipped, and
      variants not started get the fallback baseline.
    - `factories` replaces the default candidates (baselines are always added).
    - `use_global` adds a LightGBM model trained across all variants (default: when there
      are at least GLOBAL_MIN_VARIANTS).
    - `previous`: the models being replaced; each new model continues its predecessor's
      adaptive quantile level (`TrainedModel.continue_from`).
    Never raises for a variant's failure; see `fallback_count`.
    """
    h = check_horizon(horizon_steps)
    qs = check_quantiles([*quantiles, provisioning_quantile])
    deadline = time.time() + budget_s
    if factories is None:
        booster = None
        if use_global or (use_global is None and len(histories) >= GLOBAL_MIN_VARIANTS):
            try:
                booster = fit_many_booster(histories, h)
            except Exception as exc:
                log.warning("global model failed: %s", exc)
        factories = default_factories(booster)
    args = [(hist, factories, h, qs, provisioning_quantile, deadline, fingerprint)
            for hist in histories.values()]
    if n_jobs == 1 or len(args) <= 1:
        results = [train_one(*a) for a in args]
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs)(delayed(train_one)(*a) for a in args)
    out = dict(zip(histories, results, strict=True))
    for name, model in out.items():
        if previous is not None and name in previous:
            model.continue_from(previous[name])
    n_fb = fallback_count(out)
    if n_fb:
        log.warning("train_all: %d of %d variants on fallback baselines", n_fb, len(out))
    return out
