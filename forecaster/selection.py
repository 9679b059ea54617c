"""Per-variant model selection on the variant's own recent history.

Every candidate is a `PointForecaster`, fitted on the older part of the history and scored
on the same holdout origins (rolling origin: each forecast sees only its past). The calibrated
naive and seasonal-naive baselines are always candidates, and a model is only eligible when
it is no worse than the best baseline on *both* MAE (the median's accuracy) and pinball loss
at the provisioning quantile (what the replicas are sized from). So selection can never pick
something worse than the best baseline on the selection window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecaster.base import FloatArray, Forecaster, History, NotEnoughHistoryError
from forecaster.calibrated import (
    IntArray,
    NaivePoint,
    PointForecaster,
    SeasonalNaivePoint,
)
from forecaster.models_lgbm import LGBMForecaster
from forecaster.models_stats import DAY_S, LevelBlend, SeasonalHolt

log = logging.getLogger(__name__)

Factory = Callable[[int, float], PointForecaster]
BASELINE_NAMES = frozenset({"naive", "seasonal_naive_daily"})


def baseline_factories() -> list[Factory]:
    """The baselines every selection includes."""
    return [
        lambda h, q: NaivePoint(h, q),
        lambda h, q: SeasonalNaivePoint(DAY_S, "seasonal_naive_daily", h, q),
    ]


def default_factories(global_booster: Any = None) -> list[Factory]:
    """Model candidates, cheapest first (a time budget cuts the tail of this list)."""
    out: list[Factory] = [
        lambda h, q: LevelBlend(h, q),
        lambda h, q: SeasonalHolt("none", h, q),
        lambda h, q: SeasonalHolt("mstl", h, q),
        lambda h, q: SeasonalHolt("hw", h, q),
    ]
    # With a fleet-wide booster, per-variant boosters add cost for little gain.
    if global_booster is not None:
        out.append(lambda h, q: LGBMForecaster(h, q, booster=global_booster))
    else:
        out.append(lambda h, q: LGBMForecaster(h, q))
    return out


class ProtocolAdapter(PointForecaster):
    """Scores any `Forecaster` (the plain protocol) by refitting it at a few holdout origins.

    Plain forecasters cannot replay origins cheaply, so at most `max_origins` evenly spaced
    origins are scored; `predict` refits on the buffered recent history.
    """

    def __init__(self, factory: Callable[[], Forecaster], horizon: int = 30,
                 provisioning_quantile: float = 0.9, max_origins: int = 24,
                 lookback: int = 4096) -> None:
        super().__init__(horizon, provisioning_quantile)
        self.factory = factory
        self.name = factory().name
        self.max_origins = max_origins
        self._lookback = lookback

    def lookback(self) -> int:
        return self._lookback

    def _fit_params(self, y: FloatArray, start: float, step_s: int) -> None:
        del y, start, step_s

    def _paths(self, y: FloatArray, start: float, step_s: int, origins: IntArray,
               horizon: int) -> FloatArray:
        out = np.full((origins.shape[0], horizon), np.nan)
        pick = np.unique(np.linspace(0, origins.shape[0] - 1,
                                     min(self.max_origins, origins.shape[0])).astype(int))
        for i in pick:
            o = int(origins[i])
            hist = History("adapter", start, step_s, y[:o + 1])
            pred = self.factory().fit(hist).predict(horizon, [0.5])
            out[i] = pred[0.5]
        return out


@dataclass
class Selection:
    """What selection decided for one variant, and why (scores of every candidate)."""

    model: PointForecaster | None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    skipped_for_budget: list[str] = field(default_factory=list)


def _finite_scores(m: PointForecaster) -> bool:
    s = m.scores
    return s is not None and math.isfinite(s.mae) and math.isfinite(s.pinball)


def choose(fitted: Sequence[PointForecaster]) -> PointForecaster | None:
    """The eligible candidate with the lowest (pinball + MAE) relative to the best baseline."""
    ok = [m for m in fitted if _finite_scores(m)]
    if not ok:
        return None
    bases = [m for m in ok if m.name in BASELINE_NAMES] or ok
    base_mae = min(m.scores.mae for m in bases if m.scores is not None)
    base_pin = min(m.scores.pinball for m in bases if m.scores is not None)
    eps = 1e-12

    def score(m: PointForecaster) -> float:
        assert m.scores is not None
        return m.scores.pinball / max(base_pin, eps) + m.scores.mae / max(base_mae, eps)

    # A model must beat the best baseline by a margin that shrinks with the number of
    # holdout origins: on a short holdout, a small win is noise, and a wrong pick costs more
    # than the small win is worth.
    n_orig = max(1, min(m.scores.n_origins for m in ok if m.scores is not None))
    keep = 1.0 - min(0.1, 0.5 / math.sqrt(n_orig))
    eligible = [m for m in ok if m.scores is not None and (m in bases or (
                m.scores.mae <= keep * base_mae and m.scores.pinball <= base_pin))]
    return min(eligible or bases, key=score)


def select(history: History, factories: Sequence[Factory], horizon: int,
           provisioning_quantile: float = 0.9, deadline: float | None = None) -> Selection:
    """Fit baselines then candidates (until `deadline`, a `time.monotonic()` value) and choose.

    Never raises for a failing candidate: the failure is recorded and logged.
    """
    sel = Selection(model=None)
    fitted: list[PointForecaster] = []
    all_factories = [*baseline_factories(), *factories]
    for i, make in enumerate(all_factories):
        is_baseline = i < 2
        if not is_baseline and deadline is not None and time.monotonic() > deadline:
            sel.skipped_for_budget.append(f"candidate_{i}")
            continue
        t0 = time.perf_counter()
        name = f"candidate_{i}"
        try:
            model = make(horizon, provisioning_quantile)
            name = model.name
            model.fit(history)
            if not _finite_scores(model):
                raise ValueError("non-finite holdout scores")
        except NotEnoughHistoryError as exc:
            sel.failures[name] = str(exc)
            continue
        except Exception as exc:  # any model bug must not stop the fleet
            sel.failures[name] = f"{type(exc).__name__}: {exc}"
            log.warning("variant %s: candidate %s failed: %s", history.variant, name, exc)
            continue
        finally:
            sel.fit_seconds[name] = time.perf_counter() - t0
        fitted.append(model)
        assert model.scores is not None
        sel.scores[model.name] = model.scores.as_dict()
    sel.model = choose(fitted)
    return sel
