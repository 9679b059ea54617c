"""Per-variant model selection on the variant's own recent history.

Every candidate is a `PointForecaster`, fitted on the older part of the history and replayed
on the same holdout origins (rolling origin: each forecast sees only its past). The
calibrated naive, window-average (mean of the last k steps, k chosen on the holdout's
calibration origins) and seasonal-naive baselines are always candidates, and so are
equal-weight combinations of the best two and three candidates (see
`forecaster.combination`).

The guard (`choose`): a model is only eligible when it beats the best baseline on MAE by
more than noise, judged by a Diebold-Mariano-style test on the per-origin loss differences
(mean + `GUARD_Z` x HAC standard error < 0, Bartlett weights up to the horizon, since
forecasts from neighbouring origins overlap), and its pinball loss at the provisioning
quantile is no worse than the best baseline's. Otherwise a baseline serves, with its own
calibrated quantiles. A small win on a short window is noise; a wrong pick costs more.
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
    WindowAveragePoint,
    dm_upper,
)
from forecaster.combination import Combination
from forecaster.models_lgbm import LGBMForecaster
from forecaster.models_stats import DAY_S, LevelBlend, SeasonalHolt

log = logging.getLogger(__name__)

Factory = Callable[[int, float], PointForecaster]
BASELINE_NAMES = frozenset({"naive", "window_average", "seasonal_naive_daily"})
#: One-sided z of the guard: a model must beat the best baseline by this many standard
#: errors of the mean per-origin MAE difference (1.0: about 84% one-sided confidence).
GUARD_Z = 1.0
#: Combinations of the best 2..COMBINE_MAX candidates are candidates too.
COMBINE_MAX = 3


def baseline_factories() -> list[Factory]:
    """The baselines every selection includes."""
    return [
        lambda h, q: NaivePoint(h, q),
        lambda h, q: WindowAveragePoint(h, q),
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
    #: Candidates refused for a short history: name -> (valid samples had, needed, which
    #: part of the history is short).
    too_short: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    #: The window (steps) the window-average baseline chose on the calibration origins.
    window_k: int | None = None

    def baseline_scores(self) -> dict[str, float]:
        """The best baseline's holdout MAE and the chosen window, for the model's record
        (`/forecast` shows them beside the model's own scores); empty without a baseline."""
        maes = [v["mae"] for k, v in self.scores.items() if k in BASELINE_NAMES]
        if not maes:
            return {}
        out = {"mae_best_baseline": min(maes)}
        if self.window_k is not None:
            out["window_average_k"] = float(self.window_k)
        return out


def _finite_scores(m: PointForecaster) -> bool:
    s = m.scores
    return s is not None and math.isfinite(s.mae) and math.isfinite(s.pinball)


def _paired(m: PointForecaster, base: PointForecaster, what: str) -> FloatArray:
    assert m.losses is not None and base.losses is not None
    a, b = getattr(m.losses, what), getattr(base.losses, what)
    k = min(a.shape[0], b.shape[0])
    return np.asarray(a[-k:] - b[-k:], dtype=np.float64)


def significantly_better(m: PointForecaster, base_mae: PointForecaster,
                         base_pin: PointForecaster, z: float = GUARD_Z) -> bool:
    """The guard: MAE better than `base_mae` beyond noise, pinball no worse than `base_pin`."""
    if m.losses is None or base_mae.losses is None or base_pin.losses is None:
        return False
    if dm_upper(_paired(m, base_mae, "mae"), m.horizon - 1, z) >= 0.0:
        return False
    d_pin = _paired(m, base_pin, "pinball")
    d_pin = d_pin[np.isfinite(d_pin)]
    return d_pin.size > 0 and float(d_pin.mean()) <= 0.0


def _relative_score(m: PointForecaster, base_mae: float, base_pin: float) -> float:
    assert m.scores is not None
    eps = 1e-12
    return m.scores.pinball / max(base_pin, eps) + m.scores.mae / max(base_mae, eps)


def choose(fitted: Sequence[PointForecaster], z: float = GUARD_Z) -> PointForecaster | None:
    """The candidate with the lowest (pinball + MAE) relative to the best baseline, among
    the baselines and the models that pass the guard (`significantly_better`).

    Without any baseline among `fitted`, the best by that score is returned unguarded.
    """
    ok = [m for m in fitted if _finite_scores(m)]
    if not ok:
        return None
    bases = [m for m in ok if m.name in BASELINE_NAMES]
    if not bases:
        bases = ok
    b_mae = min(bases, key=lambda m: m.scores.mae if m.scores else math.inf)
    b_pin = min(bases, key=lambda m: m.scores.pinball if m.scores else math.inf)
    assert b_mae.scores is not None and b_pin.scores is not None
    mae0, pin0 = b_mae.scores.mae, b_pin.scores.pinball
    eligible = [m for m in ok if m in bases or significantly_better(m, b_mae, b_pin, z)]
    return min(eligible, key=lambda m: _relative_score(m, mae0, pin0))


def combinations(fitted: Sequence[PointForecaster],
                 max_members: int = COMBINE_MAX) -> list[PointForecaster]:
    """Equal-weight combinations of the best 2..max_members candidates (by the score).

    Seasonal naive is left out of the pool: at short leads it is far worse than the last
    value and would only drag an average. A combination of baselines only is not a model
    (naive and the window average are both the current level): it is skipped, so a variant
    whose every model failed is still reported as on a fallback baseline.
    """
    pool = [m for m in fitted if _finite_scores(m) and m.holdout is not None
            and m.name != "seasonal_naive_daily"]
    if len(pool) < 2:
        return []
    mae0 = min(m.scores.mae for m in pool if m.scores is not None)
    pin0 = min(m.scores.pinball for m in pool if m.scores is not None)
    pool.sort(key=lambda m: _relative_score(m, mae0, pin0))
    out: list[PointForecaster] = []
    for k in range(2, min(max_members, len(pool)) + 1):
        if all(m.name in BASELINE_NAMES for m in pool[:k]):
            continue
        try:
            combo = Combination(pool[:k])
        except ValueError as exc:
            log.debug("combination of %d skipped: %s", k, exc)
            continue
        if _finite_scores(combo):
            out.append(combo)
    return out


def select(history: History, factories: Sequence[Factory], horizon: int,
           provisioning_quantile: float = 0.9, deadline: float | None = None) -> Selection:
    """Fit baselines then candidates (until `deadline`, a `time.monotonic()` value) and choose.

    Never raises for a failing candidate: the failure is recorded and logged.
    """
    sel = Selection(model=None)
    fitted: list[PointForecaster] = []
    bases = baseline_factories()
    all_factories = [*bases, *factories]
    for i, make in enumerate(all_factories):
        is_baseline = i < len(bases)
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
            sel.too_short[name] = (exc.have, exc.need, exc.detail)
            continue
        except Exception as exc:  # any model bug must not stop the fleet
            sel.failures[name] = f"{type(exc).__name__}: {exc}"
            log.warning("variant %s: candidate %s failed: %s", history.variant, name, exc)
            continue
        finally:
            sel.fit_seconds[name] = time.perf_counter() - t0
        fitted.append(model)
        if isinstance(model, WindowAveragePoint):
            sel.window_k = model.k
        assert model.scores is not None
        sel.scores[model.name] = model.scores.as_dict()
    combos = combinations(fitted)
    for combo in combos:
        assert combo.scores is not None
        sel.scores[combo.name] = combo.scores.as_dict()
    sel.model = choose([*fitted, *combos])
    if sel.model is not None:
        sel.model.release()
    return sel
