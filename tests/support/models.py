"""Served models with a fault built in, injected in place of a trained one (the service holds
models behind `ServedModel`'s interface, so a test swaps the object, never a method)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from controller.training import ServedModel
from forecaster.base import Forecast, History


@dataclass
class NanModel(ServedModel):
    """Forecasts from the trained model, every value replaced by NaN."""

    def forecast(self, tail: History, horizon: int, quantiles: tuple[float, ...]) -> Forecast:
        fc = super().forecast(tail, horizon, quantiles)
        return replace(fc, quantiles={q: np.full_like(v, np.nan)
                                      for q, v in fc.quantiles.items()})


@dataclass
class RaisingModel(ServedModel):
    """A model whose forecast raises, as a bug in a forecaster would."""

    message: str = "model exploded"

    def forecast(self, tail: History, horizon: int, quantiles: tuple[float, ...]) -> Forecast:
        raise RuntimeError(self.message)
