"""forescale's own metrics (prometheus-client), on a registry passed in so tests get fresh ones.

Names are a contract with `deploy/grafana/forescale.json` and `deploy/prometheus/rules.yaml`;
`tests/golden/metrics_exposition.txt` pins the exposition (names, HELP, TYPE, labels;
see tests/test_metrics.py).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double the exposition and no dashboard or alert of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class ForescaleMetrics:
    """All self-metrics of one forescale process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        v = ["variant"]
        self.forecast = Gauge("forescale_forecast_load", "Forecast load (req/s) at the "
                              "provisioning window, by quantile", [*v, "quantile"], registry=r)
        self.actual = Gauge("forescale_actual_load", "Observed load (req/s)", v, registry=r)
        self.desired = Gauge("forescale_desired_replicas", "Replicas forescale wants (the "
                             "metric that KEDA/HPA read in metric mode)", v, registry=r)
        self.current = Gauge("forescale_current_replicas", "Replicas of the Deployment now", v,
                             registry=r)
        self.predictive = Gauge("forescale_predictive_replicas", "Replicas the forecast alone "
                                "asks for", v, registry=r)
        self.reactive = Gauge("forescale_reactive_replicas", "Reactive floor from live signals",
                              v, registry=r)
        self.reason = Gauge("forescale_last_decision_reason", "1 for each reason of the last "
                            "decision", [*v, "reason"], registry=r)
        self.reactive_override = Counter("forescale_reactive_overrides", "Decisions where the "
                                         "reactive floor exceeded the forecast", v, registry=r)
        self.fallback_active = Gauge("forescale_reactive_fallback_active", "1 while a variant "
                                     "is served reactively because its forecast is worse than "
                                     "its baseline", v, registry=r)
        self.forecast_error = Gauge("forescale_forecast_abs_error_ratio", "Recent mean "
                                    "|forecast-actual| / mean actual", v, registry=r)
        self.forecast_miss = Counter("forescale_forecast_misses", "Times actual load exceeded "
                                     "the provisioned quantile", v, registry=r)
        self.model_info = Gauge("forescale_model_info", "Model serving each variant (1)",
                                [*v, "model"], registry=r)
        self.cold_start = Gauge("forescale_cold_start_seconds", "Cold start planned for: the p90 "
                                "of measured scale-ups, the configured value before", v,
                                registry=r)
        self.provisioning_quantile = Gauge("forescale_provisioning_quantile", "Quantile "
                                           "provisioned for, tuned for the SLO target", v,
                                           registry=r)
        self.training_duration = Histogram("forescale_training_duration_seconds", "Duration of "
                                           "a retrain of all variants", registry=r,
                                           buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.training_failures = Counter("forescale_training_failures", "Fits that failed and "
                                         "fell back to the baseline", v, registry=r)
        self.reconcile_duration = Histogram("forescale_reconcile_duration_seconds", "Duration "
                                            "of one reconcile pass", registry=r,
                                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
        self.reconcile_errors = Counter("forescale_reconcile_errors", "Reconcile failures by "
                                        "kind", [*v, "kind"], registry=r)
        self.source_outcomes = Counter("forescale_source_outcomes", "Metrics source outcomes "
                                       "(ok, empty, nan, stale, multiple, down)",
                                       [*v, "signal", "outcome"], registry=r)
        self.decisions = Counter("forescale_decisions", "Decisions by outcome (scaled, held, "
                                 "dry-run, failed)", [*v, "outcome"], registry=r)
        self.cost_per_hour = Gauge("forescale_cost_per_hour_usd", "GPU cost per hour at the "
                                   "desired replicas", v, registry=r)
        self.gpus = Gauge("forescale_gpus", "GPUs at the desired replicas", [*v, "gpu_type"],
                          registry=r)
        self.unserved = Gauge("forescale_unserved_demand", "Forecast demand (req/s) that the "
                              "desired replicas cannot serve at the SLO", v, registry=r)
        self.config_reloads = Counter("forescale_config_reloads", "Config reloads by outcome "
                                      "(applied, retrain, invalid, refused)", ["outcome"],
                                      registry=r)
        self.is_leader = Gauge("forescale_leader", "1 if this instance may actuate", registry=r)
        self._reasons: dict[str, tuple[str, ...]] = {}
        self.ready = Gauge("forescale_ready", "1 once the variants present at start-up have "
                           "a model or fallback (as /readyz)", registry=r)

    def record_reasons(self, variant: str, codes: tuple[str, ...]) -> None:
        """Replace the variant's reason labels: old reasons must not linger as 1. Unchanged
        reasons are left as they are (most reconciles repeat the last ones)."""
        if self._reasons.get(variant) == codes:
            return
        self._reasons[variant] = codes
        for labels in list(self.reason._metrics):
            if labels[0] == variant:
                self.reason.remove(*labels)
        for code in codes or ("NoChange",):
            self.reason.labels(variant, code).set(1)

    def record_model(self, variant: str, model: str) -> None:
        for labels in list(self.model_info._metrics):
            if labels[0] == variant:
                self.model_info.remove(*labels)
        self.model_info.labels(variant, model).set(1)
