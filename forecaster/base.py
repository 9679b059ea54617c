"""The data contract shared by every forecaster.

A `History` is one variant's load as a *regular* series (fixed step, NaN marks a masked
sample) so that models never have to guess about missing timestamps. A `Forecast` is frozen
and carries everything a consumer needs to trust it: who made it, when, from which window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class NotEnoughHistoryError(ValueError):
    """Raised when a model needs more samples than the history holds.

    `have` and `need` count valid samples of the whole history; `detail` says which part is
    short (the fit window, the holdout, the model's own rows), since "need 14" alone reads
    as if the model needed 14 samples when most of them are the holdout's.
    """

    def __init__(self, model: str, have: int, need: int, detail: str = "") -> None:
        msg = f"{model}: not enough history: have {have}, need {need}"
        super().__init__(f"{msg} ({detail})" if detail else msg)
        self.model = model
        self.have = have
        self.need = need
        self.detail = detail


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validate quantile levels up front, with a message that says what is allowed."""
    qs = tuple(float(q) for q in quantiles)
    if not qs:
        raise ValueError("quantiles must not be empty (e.g. [0.5, 0.9, 0.99])")
    for q in qs:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile {q!r} must be strictly between 0 and 1")
    return tuple(sorted(set(qs)))


def check_horizon(horizon: int) -> int:
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive number of steps, got {horizon!r}")
    return int(horizon)


@dataclass(frozen=True)
class History:
    """A regular series: `values[i]` is the mean load over `[start + i*step_s, +step_s)`.

    NaN marks a sample that is missing and must not be treated as zero load.
    """

    variant: str
    start: float  # epoch seconds of the first sample
    step_s: int
    values: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise ValueError(f"history step_s must be positive, got {self.step_s!r}")
        arr = np.asarray(self.values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"history values must be 1-D, got shape {arr.shape}")
        if np.isinf(arr).any():
            bad = int(np.flatnonzero(np.isinf(arr))[0])
            raise ValueError(f"history of {self.variant!r} has an infinite value at index {bad}")
        object.__setattr__(self, "values", arr)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def end(self) -> float:
        """Epoch seconds just after the last sample (the next sample's start)."""
        return self.start + len(self) * self.step_s

    def timestamps(self) -> FloatArray:
        return self.start + self.step_s * np.arange(len(self), dtype=np.float64)

    def n_valid(self) -> int:
        return int(np.isfinite(self.values).sum())

    def slice(self, stop: int, start: int = 0) -> History:
        """Samples `[start, stop)`; used by backtests to give a model only the past."""
        return History(self.variant, self.start + start * self.step_s, self.step_s,
                       self.values[start:stop])


@dataclass(frozen=True)
class Forecast:
    """Quantile forecast for steps 1..horizon after `issued_at` (the history's end)."""

    variant: str
    issued_at: float
    step_s: int
    quantiles: Mapping[float, FloatArray]
    model: str
    trained_from: float | None = None
    trained_to: float | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        return int(next(iter(self.quantiles.values())).shape[0])

    def timestamps(self) -> FloatArray:
        """Start of each forecast step."""
        return self.issued_at + self.step_s * np.arange(self.horizon, dtype=np.float64)

    def at(self, q: float) -> FloatArray:
        """The forecast at level `q`, interpolating between the levels that were predicted."""
        if q in self.quantiles:
            return self.quantiles[q]
        levels = sorted(self.quantiles)
        if not levels[0] <= q <= levels[-1]:
            raise ValueError(f"quantile {q} outside the forecast's levels {levels}")
        stacked = np.vstack([self.quantiles[lv] for lv in levels])
        out = np.empty(stacked.shape[1])
        for j in range(stacked.shape[1]):
            out[j] = np.interp(q, levels, stacked[:, j])
        return out


class Forecaster(Protocol):
    """A per-series model: `fit` on a history, then `predict` quantiles for the next steps."""

    name: str

    def fit(self, history: History) -> Self: ...

    def predict(self, horizon: int, quantiles: Sequence[float]) -> dict[float, FloatArray]: ...


def monotone_quantiles(out: dict[float, FloatArray]) -> dict[float, FloatArray]:
    """Sort quantile paths so that q1 < q2 implies value(q1) <= value(q2), and clip at zero.

    Load is never negative and crossing quantiles would make the provisioning quantile lie.
    """
    levels = sorted(out)
    stacked = np.maximum(np.sort(np.vstack([out[q] for q in levels]), axis=0), 0.0)
    return {q: stacked[i] for i, q in enumerate(levels)}
