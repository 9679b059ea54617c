"""forescale's configuration: one YAML file, validated by pydantic models.

Every field is documented here and in `deploy/config.example.yaml`. A bad file is refused at
start with the field's path, the value and what is allowed (`ConfigError`), never a traceback.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.profile import SLO, VariantProfile


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is meant for the person who wrote it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActuationMode(StrEnum):
    DRY_RUN = "dry-run"
    SCALE = "scale"
    METRIC = "metric"


class BasicAuth(_Strict):
    username: str = Field(min_length=1)
    password_file: Path | None = Field(default=None, description="File holding the password")
    password_env: str | None = Field(default=None, description="Env var holding the password")


class PrometheusConfig(_Strict):
    """Where history and live signals come from. Secrets only from files or env, never inline."""

    url: str = Field(default="http://prometheus.monitoring:9090", pattern=r"^https?://\S+$")
    bearer_token_file: Path | None = None
    bearer_token_env: str | None = None
    basic_auth: BasicAuth | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle to verify TLS")
    insecure_skip_verify: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    history_days: float = Field(default=14.0, gt=0, le=90,
                                description="History read for each retrain")
    step_s: int = Field(default=60, ge=10, le=3600, description="Resolution of training data")
    stale_after_s: float = Field(default=120.0, gt=0,
                                 description="A live sample older than this is stale")


class DeploymentRef(_Strict):
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)


class Signals(_Strict):
    """PromQL per signal. `$selector` is replaced by the variant's label matchers, so a query
    can add its own: `vllm:num_requests_waiting{$selector, job="vllm"}`.

    Defaults are vLLM's own metric names, so a stock vLLM deployment needs no PromQL at all.
    """

    requests: str = "sum(rate(vllm:request_success_total{$selector}[2m]))"
    prompt_tokens: str = "sum(rate(vllm:prompt_tokens_total{$selector}[2m]))"
    generation_tokens: str = "sum(rate(vllm:generation_tokens_total{$selector}[2m]))"
    queue_depth: str = "sum(vllm:num_requests_waiting{$selector})"
    running: str = "sum(vllm:num_requests_running{$selector})"
    kv_cache_usage: str = "avg(vllm:gpu_cache_usage_perc{$selector})"
    ttft_p95: str = ("histogram_quantile(0.95, sum by (le) "
                     "(rate(vllm:time_to_first_token_seconds_bucket{$selector}[2m])))")


class Targets(_Strict):
    """Per-replica targets for the reactive floor (HPA-style `ceil(current*observed/target)`)."""

    queue_per_replica: float = Field(default=4.0, gt=0)
    kv_cache_usage: float = Field(default=0.85, gt=0, le=1)


class Behaviour(_Strict):
    """Rate limits and stabilisation, as in the HPA's `behavior` field."""

    target_utilisation: float = Field(default=0.85, gt=0, le=1)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    scale_up_pods: int = Field(default=4, ge=1)
    scale_up_period_s: float = Field(default=60, gt=0)
    scale_down_pods: int = Field(default=1, ge=1)
    scale_down_period_s: float = Field(default=60, gt=0)
    scale_down_stabilisation_s: float | None = Field(
        default=None, ge=0,
        description="Scale down only to the highest recommendation of this window; null: the "
                    "longer of the profile's cold start and prometheus.step_s "
                    "(models.decide.break_even_hold_s)")


class VariantConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$", max_length=63)
    deployment: DeploymentRef
    selector: str = Field(default="", description="PromQL label matchers for this variant; "
                          "default: model_name=\"<name>\"")
    signals: Signals = Signals()
    profile: VariantProfile
    slo: SLO = SLO()
    targets: Targets = Targets()
    behaviour: Behaviour = Behaviour()
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=10, ge=1)
    actuation: ActuationMode | None = Field(default=None,
                                            description="Overrides the global actuation mode")

    @model_validator(mode="after")
    def _bounds(self) -> VariantConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                             f"({self.max_replicas})")
        return self

    @property
    def label_selector(self) -> str:
        return self.selector or f'model_name="{self.name}"'


class VariantGroup(_Strict):
    """Variants that can serve each other's traffic (same task, other size/precision/GPU)."""

    name: str = Field(min_length=1)
    variants: list[str] = Field(min_length=2)
    quality_floor: float = Field(default=0.0, ge=0, le=1)


class Schedules(_Strict):
    retrain_interval_s: float = Field(default=3600, ge=10)
    reconcile_interval_s: float = Field(default=30, ge=1)
    jitter_s: float = Field(default=5, ge=0)
    retrain_budget_s: float = Field(default=300, gt=0)
    reconcile_budget_s: float = Field(default=20, gt=0)


class ForecastConfig(_Strict):
    quantiles: list[float] = Field(default=[0.5, 0.9, 0.99], min_length=1)
    provisioning_quantile: float = Field(default=0.9, gt=0, lt=1)
    horizon_s: float = Field(default=1800, gt=0, description="How far ahead to forecast; "
                             "raised to cover each variant's cold start")
    model_dir: Path | None = Field(default=None, description="Where fitted models persist")

    @model_validator(mode="after")
    def _levels(self) -> ForecastConfig:
        for q in self.quantiles:
            if not 0 < q < 1:
                raise ValueError(f"quantile {q} must be strictly between 0 and 1")
        return self


class ApiConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    token_env: str = Field(default="FORESCALE_API_TOKEN",
                           description="Env var with the bearer token for POST endpoints")
    token_file: Path | None = None
    protect_reads: bool = False


class LeaderElection(_Strict):
    enabled: bool = False
    lease_name: str = "forescale-leader"
    lease_namespace: str = "forescale"
    lease_duration_s: float = Field(default=15, gt=0)
    renew_deadline_s: float = Field(default=10, gt=0)
    retry_period_s: float = Field(default=2, gt=0)


class StateConfig(_Strict):
    """Where stabilisation windows and recent decisions survive restarts.

    `auto`: a ConfigMap when forescale talks to Kubernetes (scale mode or leader election),
    else `file` if set, else nothing (the demo).
    """

    backend: Literal["auto", "configmap", "file", "none"] = "auto"
    configmap_namespace: str = Field(default="forescale",
                                     pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    configmap_name: str = Field(default="forescale-state",
                                pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    file: Path | None = None

    @model_validator(mode="after")
    def _file(self) -> StateConfig:
        if self.backend == "file" and self.file is None:
            raise ValueError("state.backend 'file' needs state.file (a path)")
        return self


class Config(_Strict):
    prometheus: PrometheusConfig = PrometheusConfig()
    actuation: ActuationMode = ActuationMode.DRY_RUN
    schedules: Schedules = Schedules()
    forecast: ForecastConfig = ForecastConfig()
    api: ApiConfig = ApiConfig()
    leader_election: LeaderElection = LeaderElection()
    state: StateConfig = StateConfig()
    gpu_quotas: dict[str, int] = Field(default_factory=dict,
                                       description="Max GPUs per GPU type across variants")
    variants: list[VariantConfig] = Field(min_length=1)
    groups: list[VariantGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique, repeated: {', '.join(dup)}")
        for g in self.groups:
            unknown = [v for v in g.variants if v not in names]
            if unknown:
                raise ValueError(f"group {g.name!r} names unknown variants {unknown}; "
                                 f"known: {names}")
        for gpu, quota in self.gpu_quotas.items():
            if quota < 0:
                raise ValueError(f"gpu_quotas.{gpu} must be >= 0, got {quota}")
        return self

    def variant(self, name: str) -> VariantConfig:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def mode_of(self, variant: VariantConfig) -> ActuationMode:
        return variant.actuation or self.actuation


def _loc(cfg: Any, loc: tuple[int | str, ...]) -> str:
    """Turn pydantic's location into the path a person would write, naming variants."""
    parts: list[str] = []
    node: Any = cfg
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) \
                and isinstance(node[item], dict) else None
            parts[-1] = f"{parts[-1]}[{item}]" + (f"({name})" if name else "") \
                if parts else f"[{item}]"
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, raw: Any, source: str) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not str(x).startswith("function-after"))
        where = _loc(raw, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see deploy/config.example.yaml)"
        value = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(value, dict | list) \
            else f" (got {value!r})"
        lines.append(f"  - {where}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least 'variants', "
                          f"got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; every failure is a `ConfigError` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}:{where}: not valid YAML: {problem}") from None
    return parse_config(raw, str(p))
