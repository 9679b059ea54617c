"""Per-variant load forecasting: history in, quantile forecasts out.

Dependencies point one way (`controller -> models -> forecaster`): nothing here does I/O
beyond reading trace files, and nothing here knows about Kubernetes or Prometheus.
"""

from forecaster.base import Forecast, Forecaster, History, NotEnoughHistoryError

__all__ = ["Forecast", "Forecaster", "History", "NotEnoughHistoryError"]
