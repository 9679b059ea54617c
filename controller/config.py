"""forescale's configuration: one YAML file, validated by pydantic models.

Every field is documented here and in `deploy/config.example.yaml`. A bad file is refused at
start with the field's path, the value and what is allowed (`ConfigError`), never a traceback.

Beyond the schema, a config is refused when it would run other than it reads:

- a key given twice in one mapping (YAML keeps the last silently: `actuation: dry-run` then
  `actuation: scale` would scale a fleet reviewed as a dry run) names the key and both lines;
- a value pydantic would coerce: `true` where a number belongs, `2.0` or `"5"` where a whole
  number belongs, `1` where true/false belongs, `.inf`/`.nan` anywhere;
- a count past its bound (`MAX_REPLICAS`, `MAX_GPUS`);
- a secret or CA file (`api.token_file`, `prometheus.bearer_token_file`,
  `prometheus.basic_auth.password_file`, `prometheus.ca_file`) that is not a readable file
  *when the config is loaded* (a missing file would silently mean "no token"). Relative paths
  are from the working directory; the shipped examples name no file;
- PromQL in `signals` or a `selector` with unbalanced brackets or an unclosed string;
- a file that is not UTF-8 text (the byte offset is named).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.behaviour import MAX_STABILISATION_S, HPABehaviorSpec
from models.behaviour import Behaviour as HPABehaviour
from models.profile import SLO, VariantProfile


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is meant for the person who wrote it."""


#: Upper bound of `min_replicas`/`max_replicas`: far above any real fleet of one variant, low
#: enough that a typo (`1e29`, an extra digit) is refused rather than ordered.
MAX_REPLICAS = 10_000
#: Upper bound of a `gpu_quotas` entry.
MAX_GPUS = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping (naming both lines) instead
    of keeping the last. Keys brought in by a merge (`<<: *anchor`) may still be overridden:
    that is what a merge is for."""

    def construct_mapping(self, node: yaml.MappingNode,
                          deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                mark = key_node.start_mark
                try:
                    first = seen.setdefault(key, mark)
                except TypeError:  # unhashable: SafeConstructor names it below
                    continue
                if first is not mark:
                    columns = f" (columns {first.column + 1} and {mark.column + 1})" \
                        if first.line == mark.line else ""
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} on line {first.line + 1} and line "
                        f"{mark.line + 1}{columns} (YAML would keep the last silently)", mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """' line L, column C: not valid YAML: problem' from any PyYAML error."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f" character {exc.position + 1}: not valid YAML: unacceptable character " \
               f"#x{exc.character if isinstance(exc.character, int) else 0:04x}"
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}: not valid YAML: {problem}"


def load_yaml_strict(text: str, source: str) -> Any:
    """Parse YAML as `yaml.safe_load` does, but refuse duplicate keys; every failure is a
    `ConfigError` naming `source`, the line and the problem. For every YAML file forescale
    reads as configuration (the config, profiles)."""
    try:
        return yaml.load(text, Loader=StrictKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:{_yaml_problem(exc)}") from None


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """Read a YAML file as text and parse it with `load_yaml_strict`. A file that cannot be
    read, is binary or is not UTF-8 is a `ConfigError` naming the path (and byte offset)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read {what}: {exc.strerror or exc}") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{p}: not a text file (a NUL byte at byte offset {nul}); the "
                          f"{what} must be YAML text in UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset "
                          f"{exc.start} cannot be decoded; the {what} must be YAML text in "
                          "UTF-8") from None
    return load_yaml_strict(text, str(p))


def _readable_file(path: Path) -> Path:
    """A secret or CA file must be there when the config is loaded: a missing token file
    would otherwise mean 'no token' at the first request, long after review."""
    if not path.exists():
        raise ValueError(f"no such file: {path} (it must exist when the config is loaded)")
    if not path.is_file():
        raise ValueError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file is not readable by this process: {path}")
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


def _whole_number(low: int, high: int) -> BeforeValidator:
    """A count from `low` to `high`, and nothing pydantic would coerce into one (`true`,
    `2.0`, `"5"`, `1e29` which YAML reads as text): one message that says the bound."""
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value
    return BeforeValidator(check)


MinReplicas = Annotated[int, _whole_number(0, MAX_REPLICAS)]
MaxReplicas = Annotated[int, _whole_number(1, MAX_REPLICAS)]
GpuCount = Annotated[int, _whole_number(0, MAX_GPUS)]

_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _string_end(query: str, start: int) -> int:
    """Index of the quote closing the string that opens at `start`, or -1. Backticks are raw
    strings in PromQL; in single and double quotes a backslash escapes the next character."""
    quote = query[start]
    i = start + 1
    while i < len(query):
        if query[i] == "\\" and quote != "`":
            i += 2
            continue
        if query[i] == quote:
            return i
        i += 1
    return -1


def promql_balance_problem(query: str) -> str | None:
    """What is unbalanced in a PromQL expression (brackets (), [], {} and quotes, string
    literals and `#` comments respected), or None. Not a parser: it catches the typo that
    would otherwise fail at every reconcile, with the character position."""
    stack: list[tuple[str, int]] = []
    i = 0
    while i < len(query):
        c = query[i]
        if c in "\"'`":
            end = _string_end(query, i)
            if end < 0:
                return f"string opened with {c} at character {i + 1} is never closed"
            i = end
        elif c == "#":
            newline = query.find("\n", i)
            i = len(query) if newline < 0 else newline
        elif c in "([{":
            stack.append((c, i))
        elif c in _CLOSERS:
            if not stack:
                return f"{c!r} at character {i + 1} closes nothing"
            opener, at = stack.pop()
            if opener != _CLOSERS[c]:
                return f"{c!r} at character {i + 1} does not close {opener!r} at character " \
                       f"{at + 1}"
        i += 1
    if stack:
        opener, at = stack[-1]
        return f"{opener!r} at character {at + 1} is never closed"
    return None


def _balanced(query: str) -> str:
    problem = promql_balance_problem(query)
    if problem is not None:
        raise ValueError(f"unbalanced PromQL: {problem}")
    return query


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActuationMode(StrEnum):
    DRY_RUN = "dry-run"
    SCALE = "scale"
    METRIC = "metric"


class BasicAuth(_Strict):
    username: str = Field(min_length=1)
    password_file: ReadableFile | None = Field(default=None,
                                               description="File holding the password")
    password_env: str | None = Field(default=None, description="Env var holding the password")


class PrometheusConfig(_Strict):
    """Where history and live signals come from. Secrets only from files or env, never inline."""

    url: str = Field(default="http://prometheus.monitoring:9090", pattern=r"^https?://\S+$")
    bearer_token_file: ReadableFile | None = None
    bearer_token_env: str | None = None
    basic_auth: BasicAuth | None = None
    ca_file: ReadableFile | None = Field(default=None, description="CA bundle to verify TLS")
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


class ScaleTargetRefConfig(_Strict):
    """Any workload with a scale subresource, named as an HPA's `scaleTargetRef` names it
    (StatefulSet, LeaderWorkerSet, an operator's scaling adapter), plus its namespace."""

    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    api_version: str = Field(default="apps/v1",
                             pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+"
                                     r"((alpha|beta)[0-9]+)?$",
                             description="group/version, e.g. leaderworkerset.x-k8s.io/v1")
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=63)
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

    @field_validator("*")
    @classmethod
    def _balanced(cls, query: str) -> str:
        return _balanced(query)


class Targets(_Strict):
    """Per-replica targets for the reactive floor (HPA-style `ceil(current*observed/target)`)."""

    queue_per_replica: float = Field(default=4.0, gt=0)
    kv_cache_usage: float = Field(default=0.85, gt=0, le=1)


class Behaviour(HPABehaviorSpec):
    """How the forecast is followed: utilisation target, dead band, and the HPA's `behavior`.

    `scaleUp` / `scaleDown` take the HPA's own `behavior` block (camelCase, as `kubectl get hpa
    -o yaml` prints it), so the block of the HPA being replaced can be pasted as is; they are
    normalised by the HPA's own pipeline (`models.behaviour`), and missing fields take the
    HPA's defaults, except one: without a `scaleDown.stabilizationWindowSeconds`, a scale-down
    waits the break-even hold (the longer of the profile's cold start and the training step,
    `models.decide.break_even_hold_s`) instead of the HPA's 300 s, since a replica removed and
    re-ordered within a cold start costs more GPU time than keeping it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    target_utilisation: float = Field(
        default=0.9, gt=0, le=1,
        description="Share of a replica's capacity at SLO to plan for. The provisioning "
                    "quantile covers forecast error; this margin covers what the capacity "
                    "profile does not: imbalance across replicas, profile error")
    tolerance: float = Field(
        default=0.0, ge=0, lt=1,
        description="Hold while the forecast's need is within this share of the current "
                    "replicas (the HPA's dead band; 0: the forecast is already smooth and "
                    "scale-downs are stabilised)")

    def rules(self, hold_s: float) -> HPABehaviour:
        """The behaviour the pipeline runs: the block's, the scale-down window defaulting to
        `hold_s` (capped at the HPA's 3600 s) when the block does not set one."""
        b = self.to_behaviour()
        if self.scale_down is None or self.scale_down.stabilization_window_seconds is None:
            b = replace(b, scale_down=replace(b.scale_down, stabilisation_s=min(
                hold_s, float(MAX_STABILISATION_S))))
        return b


class VariantConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$", max_length=63)
    deployment: DeploymentRef | None = Field(
        default=None, description="An apps/v1 Deployment to scale (or scale_target_ref)")
    scale_target_ref: ScaleTargetRefConfig | None = Field(
        default=None, description="Any workload with a scale subresource (or deployment)")
    selector: str = Field(default="", description="PromQL label matchers for this variant; "
                          "default: model_name=\"<name>\"")
    signals: Signals = Signals()
    profile: VariantProfile
    slo: SLO = SLO()
    targets: Targets = Targets()
    behaviour: Behaviour = Behaviour()
    min_replicas: MinReplicas = 1
    max_replicas: MaxReplicas = 10
    actuation: ActuationMode | None = Field(default=None,
                                            description="Overrides the global actuation mode")
    provisioning_quantile: float | None = Field(
        default=None, gt=0, lt=1,
        description="Quantile provisioned for at start (then tuned from SLO misses); "
                    "default: forecast.provisioning_quantile")

    @field_validator("selector")
    @classmethod
    def _selector_balanced(cls, selector: str) -> str:
        return _balanced(selector)

    @model_validator(mode="after")
    def _bounds(self) -> VariantConfig:
        if (self.deployment is None) == (self.scale_target_ref is None):
            raise ValueError("give exactly one of deployment (an apps/v1 Deployment) and "
                             "scale_target_ref (any workload with a scale subresource)")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                             f"({self.max_replicas})")
        return self

    @property
    def target(self) -> ScaleTargetRefConfig:
        """What this variant scales (a `deployment` is an apps/v1 Deployment)."""
        if self.scale_target_ref is not None:
            return self.scale_target_ref
        assert self.deployment is not None  # the validator guarantees one of them
        return ScaleTargetRefConfig(namespace=self.deployment.namespace, kind="Deployment",
                                    name=self.deployment.name)

    @property
    def label_selector(self) -> str:
        return self.selector or f'model_name="{self.name}"'


class VariantGroup(_Strict):
    """Variants that can serve each other's traffic (same task, other size/precision/GPU)."""

    name: str = Field(min_length=1)
    variants: list[str] = Field(min_length=2)
    quality_floor: float = Field(default=0.0, ge=0, le=1)
    gpu_quotas: dict[str, GpuCount] = Field(
        default_factory=dict, description="Most GPUs per GPU type the group's members may "
        "use together; the global gpu_quotas still apply on top")


class Schedules(_Strict):
    retrain_interval_s: float = Field(
        default=3600, ge=10, le=7 * 86_400,
        description="How often models are brought up to date: a variant whose selection is "
                    "older than reselect_interval_s (or served by a fallback) is selected "
                    "again, every candidate backtested; the others keep their model, which "
                    "already takes every new sample into its buffer and its error record")
    reselect_interval_s: float = Field(
        default=86_400, ge=10, le=30 * 86_400,
        description="How old a model selection may get before every candidate is fitted "
                    "and backtested again (the expensive part of training)")
    reconcile_interval_s: float = Field(default=30, ge=1, le=3600)
    jitter_s: float = Field(default=5, ge=0, le=3600)
    retrain_budget_s: float = Field(default=300, gt=0, le=86_400)
    reconcile_budget_s: float = Field(default=20, gt=0, le=3600)


class ForecastConfig(_Strict):
    quantiles: list[float] = Field(
        default=[0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999], min_length=1,
        description="Levels forecast and served; the provisioning quantile is chosen between "
                    "them, so the top levels let bursty variants buy the headroom they need")
    provisioning_quantile: float = Field(default=0.9, gt=0, lt=1)
    horizon_s: float = Field(default=1800, gt=0, le=7 * 86_400,
                             description="How far ahead to forecast; raised to cover each "
                             "variant's cold start")
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
    token_file: ReadableFile | None = None
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


class CustomResourcesConfig(_Strict):
    """The VariantAutoscaler controller (`controller/crd.py`): variants declared as Kubernetes
    objects, started, changed and stopped while forescale runs, beside the file's variants."""

    enabled: bool = Field(default=False, description="Watch VariantAutoscaler objects")
    namespaces: list[Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                          max_length=63)]] = Field(
        default_factory=list,
        description="Namespaces watched, one watch each (the RoleBindings of "
                    "deploy/kubernetes/rbac.yaml); empty: all namespaces, which needs a "
                    "ClusterRoleBinding")
    resync_s: float = Field(default=300, ge=10, le=86_400,
                            description="Every object is listed and reconciled again this "
                                        "often, whatever the watch delivered")

    @field_validator("namespaces")
    @classmethod
    def _unique(cls, namespaces: list[str]) -> list[str]:
        dup = sorted({n for n in namespaces if namespaces.count(n) > 1})
        if dup:
            raise ValueError(f"namespaces repeated: {', '.join(dup)}")
        return namespaces


class KubernetesConfig(_Strict):
    custom_resources: CustomResourcesConfig = CustomResourcesConfig()


class Config(_Strict):
    prometheus: PrometheusConfig = PrometheusConfig()
    actuation: ActuationMode = ActuationMode.DRY_RUN
    schedules: Schedules = Schedules()
    forecast: ForecastConfig = ForecastConfig()
    api: ApiConfig = ApiConfig()
    leader_election: LeaderElection = LeaderElection()
    state: StateConfig = StateConfig()
    gpu_quotas: dict[str, GpuCount] = Field(default_factory=dict,
                                       description="Max GPUs per GPU type across variants")
    kubernetes: KubernetesConfig = KubernetesConfig()
    variants: list[VariantConfig] = Field(
        default_factory=list, description="Variants of this file; at least one unless "
        "kubernetes.custom_resources is enabled (then they may all be VariantAutoscalers)")
    groups: list[VariantGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> Config:
        if not self.variants and not self.kubernetes.custom_resources.enabled:
            raise ValueError("variants: at least 1 variant is needed (or enable "
                             "kubernetes.custom_resources and declare them as "
                             "VariantAutoscaler objects)")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique, repeated: {', '.join(dup)}")
        for g in self.groups:
            unknown = [v for v in g.variants if v not in names]
            if unknown:
                raise ValueError(f"group {g.name!r} names unknown variants {unknown}; "
                                 f"known: {names}")
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


def _coercion(value: Any, raw: Any) -> str | None:
    """What pydantic's lax mode changed when it turned `raw` into `value`, or None."""
    if isinstance(value, Enum | str | Path) or value is None:
        return None
    if isinstance(value, bool):
        return None if isinstance(raw, bool) else "expected true or false"
    if isinstance(raw, bool):
        return "expected a number, not true/false"
    if isinstance(raw, str):
        return "expected a number, not text (remove the quotes)"
    if isinstance(value, int) and isinstance(raw, float):
        return "expected a whole number"
    if isinstance(raw, float) and not math.isfinite(raw):
        return "expected a finite number"
    return None


def _coercions(value: Any, raw: Any, loc: tuple[int | str, ...] = ()
               ) -> list[tuple[tuple[int | str, ...], str, Any]]:
    """Walk a validated model beside the raw YAML it came from and list every value pydantic
    coerced (`true` into 1, `2.0` into 2, `"5"` into 5): such a config runs other than it
    reads. Covers every nested model, profiles included, without a strict type per field."""
    if isinstance(value, BaseModel) and isinstance(raw, dict):
        keys = {name: field.alias if field.alias is not None and field.alias in raw else name
                for name, field in type(value).model_fields.items()}
        return [c for name, key in keys.items() if key in raw
                for c in _coercions(getattr(value, name), raw[key], (*loc, key))]
    if isinstance(value, list | tuple) and isinstance(raw, list) and len(value) == len(raw):
        return [c for i, (v, r) in enumerate(zip(value, raw, strict=True))
                for c in _coercions(v, r, (*loc, i))]
    if isinstance(value, dict) and isinstance(raw, dict):
        return [c for k in raw if k in value for c in _coercions(value[k], raw[k], (*loc, k))]
    problem = _coercion(value, raw)
    return [] if problem is None else [(loc, problem, raw)]


def parse_config(raw: Any, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with at least 'variants', "
                          f"got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, source)) from None
    coerced = _coercions(cfg, raw)
    if coerced:
        lines = [f"{source}: invalid configuration ({len(coerced)} problem(s)):"]
        lines += [f"  - {_loc(raw, loc)}: {msg} (got {value!r})" for loc, msg, value in coerced]
        raise ConfigError("\n".join(lines))
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; every failure is a `ConfigError` naming the file."""
    return parse_config(read_yaml_file(path, "config"), str(path))
