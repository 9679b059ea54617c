"""The HPA v2 `behavior` and its normalisation pipeline, as pure functions of history and `now`.

A port (our own Python, not a transliteration) of the Kubernetes HPA controller's
`normalizeDesiredReplicasWithBehaviors` (pkg/controller/podautoscaler/horizontal.go):

    stabilise   scale up no higher than the lowest recommendation in the scale-up window, and
                down no lower than the highest in the scale-down window; only recommendations
                *strictly newer* than `now - window` count (upstream: `timestamp.After(cutoff)`)
    rate limit  per policy, the replicas at the start of its period are the current replicas
                minus those added plus those removed by scale events inside the period (both
                directions are netted); Pods adds/removes `value`, Percent multiplies (rounded up
                on the way up, truncated on the way down, as upstream); `selectPolicy` Max takes
                the policy allowing the largest change, Min the smallest, Disabled none
    min / max   the HPA's bounds, with the reason of whichever clamp bit

Why ours takes the history as arguments: upstream reads `time.Now()` and controller maps, so its
tests need a fake controller per case; here a replay, the service and the tests feed the same
functions. Every function returns its value *and* a `Reason` carrying the HPA's condition reason
(`ScaleUpLimit`, `TooFewReplicas`, ...) so that a decision reads like the HPA's status.

One documented simplification: upstream overwrites a stored scale event once it is older than its
own direction's longest policy period, which can hide it from the opposite direction's netting
when that direction has a longer period; we count every event inside the period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]

#: The controller's `--horizontal-pod-autoscaler-downscale-stabilization` default: the API
#: server leaves `scaleDown.stabilizationWindowSeconds` unset and the controller fills this in.
DEFAULT_SCALE_DOWN_STABILISATION_S = 300.0
#: The API default for `scaleUp.stabilizationWindowSeconds`.
DEFAULT_SCALE_UP_STABILISATION_S = 0.0
#: API validation bounds (pkg/apis/autoscaling/validation): window <= 1 h, period in (0, 30 min].
MAX_STABILISATION_S = 3600
MAX_PERIOD_S = 1800

#: (time s, replicas before, replicas after) — one rescale the controller made.
ScaleEvent = tuple[float, int, int]
#: (time s, unstabilised recommendation) — one tick's pre-normalisation desired replicas.
Recommendation = tuple[float, int]


class ReasonCode(StrEnum):
    """The HPA's condition reasons for the step that set the number (AbleToScale/ScalingLimited)."""

    SCALE_UP_STABILISED = "ScaleUpStabilized"
    SCALE_DOWN_STABILISED = "ScaleDownStabilized"
    READY_FOR_NEW_SCALE = "ReadyForNewScale"
    SCALE_UP_LIMIT = "ScaleUpLimit"
    SCALE_DOWN_LIMIT = "ScaleDownLimit"
    TOO_FEW_REPLICAS = "TooFewReplicas"
    TOO_MANY_REPLICAS = "TooManyReplicas"
    DESIRED_WITHIN_RANGE = "DesiredWithinRange"
    SCALING_DISABLED = "ScalingDisabled"


@dataclass(frozen=True)
class Reason:
    """A condition reason and a sentence a human can act on."""

    code: ReasonCode
    message: str


@dataclass(frozen=True)
class Limited:
    """A value computed by one step of the pipeline and why it is what it is."""

    value: int
    reason: Reason


@dataclass(frozen=True)
class ScalingPolicyRule:
    """One HPA `HPAScalingPolicy`: change by `value` pods or percent per `period_s` seconds."""

    type: PolicyType
    value: int
    period_s: float

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise ValueError(f"policy type must be 'Pods' or 'Percent', got {self.type!r}")
        if self.value <= 0:
            raise ValueError(f"policy value must be greater than 0, got {self.value!r}")
        if not 0 < self.period_s <= MAX_PERIOD_S:
            raise ValueError(
                f"policy period_s must be in (0, {MAX_PERIOD_S}], got {self.period_s!r}"
            )

    def describe(self) -> str:
        unit = "%" if self.type == "Percent" else " pods"
        return f"{self.type} {self.value}{unit}/{self.period_s:g}s"


@dataclass(frozen=True)
class ScalingRules:
    """One direction of HPA `behavior`: stabilisation window, policies and how to pick among them.

    `stabilisation_s` None means the controller's default for the direction (0 s up, 300 s down).
    """

    stabilisation_s: float | None
    select: SelectPolicy
    policies: tuple[ScalingPolicyRule, ...]

    def __post_init__(self) -> None:
        if self.select not in ("Max", "Min", "Disabled"):
            raise ValueError(f"select must be 'Max', 'Min' or 'Disabled', got {self.select!r}")
        if (
            self.stabilisation_s is not None
            and not 0 <= self.stabilisation_s <= MAX_STABILISATION_S
        ):
            raise ValueError(
                f"stabilisation_s must be in [0, {MAX_STABILISATION_S}], "
                f"got {self.stabilisation_s!r}"
            )
        if not self.policies and self.select != "Disabled":
            raise ValueError("policies must hold at least one policy unless select is 'Disabled'")

    def window_s(self, default: float) -> float:
        return default if self.stabilisation_s is None else self.stabilisation_s

    def longest_period_s(self) -> float:
        return max((p.period_s for p in self.policies), default=0.0)


@dataclass(frozen=True)
class Behaviour:
    """HPA v2 `spec.behavior`: how fast and how eagerly to follow the recommendation."""

    scale_up: ScalingRules
    scale_down: ScalingRules

    @classmethod
    def hpa_defaults(cls) -> Behaviour:
        """The HPA's defaults (autoscaling/v2 defaults.go plus the controller's 300 s window).

        Up: no stabilisation, the larger of +4 pods or +100% per 15 s. Down: 300 s
        stabilisation, -100% per 15 s.
        """
        return cls(
            scale_up=ScalingRules(
                stabilisation_s=DEFAULT_SCALE_UP_STABILISATION_S,
                select="Max",
                policies=(
                    ScalingPolicyRule("Pods", 4, 15.0),
                    ScalingPolicyRule("Percent", 100, 15.0),
                ),
            ),
            scale_down=ScalingRules(
                stabilisation_s=DEFAULT_SCALE_DOWN_STABILISATION_S,
                select="Max",
                policies=(ScalingPolicyRule("Percent", 100, 15.0),),
            ),
        )

    @classmethod
    def seed_typical(cls) -> Behaviour:
        """The slow HPA typical of the seed deployments forescale is compared against.

        Up: +2 pods per 60 s after a 60 s stabilisation; down: -1 pod per 120 s after 300 s.
        """
        return cls(
            scale_up=ScalingRules(60.0, "Max", (ScalingPolicyRule("Pods", 2, 60.0),)),
            scale_down=ScalingRules(300.0, "Max", (ScalingPolicyRule("Pods", 1, 120.0),)),
        )

    def up_window_s(self) -> float:
        return self.scale_up.window_s(DEFAULT_SCALE_UP_STABILISATION_S)

    def down_window_s(self) -> float:
        return self.scale_down.window_s(DEFAULT_SCALE_DOWN_STABILISATION_S)

    def history_s(self) -> float:
        """How far back recommendations and scale events can still matter."""
        return max(
            self.up_window_s(),
            self.down_window_s(),
            self.scale_up.longest_period_s(),
            self.scale_down.longest_period_s(),
        )


# ---------------------------------------------------------------------------------------------
# The HPA's YAML shape, as a user pastes it from `kubectl get hpa -o yaml`.


class _PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    type: Literal["Pods", "Percent"]
    value: int = Field(gt=0)
    period_seconds: int = Field(alias="periodSeconds", gt=0, le=MAX_PERIOD_S)


class _RulesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    stabilization_window_seconds: int | None = Field(
        default=None, alias="stabilizationWindowSeconds", ge=0, le=MAX_STABILISATION_S
    )
    select_policy: Literal["Max", "Min", "Disabled"] | None = Field(
        default=None, alias="selectPolicy"
    )
    policies: list[_PolicySpec] | None = None

    @model_validator(mode="after")
    def _needs_a_policy(self) -> _RulesSpec:
        if self.policies is not None and not self.policies and self.select_policy != "Disabled":
            raise ValueError("must specify at least one policy unless selectPolicy is Disabled")
        return self

    def to_rules(self, default: ScalingRules) -> ScalingRules:
        """Field by field onto the direction's defaults, as the API server's defaulting does."""
        policies = default.policies
        if self.policies is not None:
            policies = tuple(
                ScalingPolicyRule(p.type, p.value, float(p.period_seconds)) for p in self.policies
            )
        window = default.stabilisation_s
        if self.stabilization_window_seconds is not None:
            window = float(self.stabilization_window_seconds)
        return ScalingRules(window, self.select_policy or default.select, policies)


class HPABehaviorSpec(BaseModel):
    """The HPA's `behavior` block exactly as Kubernetes accepts it (camelCase, integer seconds).

    Missing directions or fields take the HPA defaults; the API server's validation rules apply
    (value > 0, periodSeconds in (0, 1800], stabilizationWindowSeconds in [0, 3600]).
    """

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    scale_up: _RulesSpec | None = Field(default=None, alias="scaleUp")
    scale_down: _RulesSpec | None = Field(default=None, alias="scaleDown")

    def to_behaviour(self) -> Behaviour:
        defaults = Behaviour.hpa_defaults()
        up = self.scale_up.to_rules(defaults.scale_up) if self.scale_up else defaults.scale_up
        down = (
            self.scale_down.to_rules(defaults.scale_down)
            if self.scale_down
            else defaults.scale_down
        )
        return Behaviour(up, down)


class BehaviourError(ValueError):
    """A `behavior` block the HPA would refuse; the message names each field and value."""


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "behavior"


def parse_hpa_behavior(data: Mapping[str, Any] | None) -> Behaviour:
    """A pasted HPA `behavior` block as a `Behaviour`; `BehaviourError` names what is wrong."""
    if data is None:
        return Behaviour.hpa_defaults()
    try:
        return HPABehaviorSpec.model_validate(data).to_behaviour()
    except ValidationError as exc:
        problems = [
            f"{_loc(tuple(e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        ]
        raise BehaviourError("invalid HPA behavior: " + "; ".join(problems)) from None


# ---------------------------------------------------------------------------------------------
# The pipeline.


def stabilise(
    recommendations: Sequence[Recommendation],
    now: float,
    prenormalised: int,
    current: int,
    behaviour: Behaviour,
) -> Limited:
    """Bring the recommendation within the stabilisation windows (upstream
    `stabilizeRecommendationWithBehaviors`).

    The scale-up bound is the lowest of `prenormalised` and the recommendations strictly newer
    than `now - up window`; the scale-down bound the highest over the down window. The result is
    `current` raised to the up bound and lowered to the down bound: it never goes below current
    on the way up nor above it on the way down. `recommendations` is the history *before* this
    tick (record `(now, prenormalised)` afterwards, see `record_recommendation`).
    """
    up_cutoff = now - behaviour.up_window_s()
    down_cutoff = now - behaviour.down_window_s()
    up_bound = prenormalised
    down_bound = prenormalised
    for t, value in recommendations:
        if t > up_cutoff:
            up_bound = min(up_bound, value)
        if t > down_cutoff:
            down_bound = max(down_bound, value)
    value = min(max(current, up_bound), down_bound)
    if value == prenormalised:
        return Limited(
            value, Reason(ReasonCode.READY_FOR_NEW_SCALE, "recommended size matches current size")
        )
    if prenormalised >= current:
        return Limited(
            value,
            Reason(
                ReasonCode.SCALE_UP_STABILISED,
                f"recent recommendations were lower than {prenormalised}: applying the lowest "
                f"over the last {behaviour.up_window_s():g}s, {value}",
            ),
        )
    return Limited(
        value,
        Reason(
            ReasonCode.SCALE_DOWN_STABILISED,
            f"recent recommendations were higher than {prenormalised}: applying the highest "
            f"over the last {behaviour.down_window_s():g}s, {value}",
        ),
    )


def _moved(events: Sequence[ScaleEvent], now: float, period_s: float) -> tuple[int, int]:
    """Replicas added and removed by scale events strictly newer than `now - period_s`."""
    cutoff = now - period_s
    added = removed = 0
    for t, before, after in events:
        if t > cutoff:
            if after > before:
                added += after - before
            else:
                removed += before - after
    return added, removed


def scale_up_limit(
    current: int, events: Sequence[ScaleEvent], now: float, rules: ScalingRules
) -> Limited:
    """The most replicas the scale-up policies allow now (upstream
    `calculateScaleUpLimitWithScalingRules`); may be below `current` after a burst of scale-ups.
    """
    if rules.select == "Disabled":
        return Limited(
            current,
            Reason(ReasonCode.SCALE_UP_LIMIT, "scale-up is disabled (selectPolicy Disabled)"),
        )
    best: tuple[int, ScalingPolicyRule, int] | None = None
    for policy in rules.policies:
        added, removed = _moved(events, now, policy.period_s)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start + policy.value
        else:
            proposed = math.ceil(start * (1 + policy.value / 100))
        better = best is None or (
            proposed > best[0] if rules.select == "Max" else proposed < best[0]
        )
        if better:
            best = (proposed, policy, start)
    assert best is not None  # ScalingRules guarantees a policy unless Disabled
    proposed, policy, start = best
    return Limited(
        proposed,
        Reason(
            ReasonCode.SCALE_UP_LIMIT,
            f"{policy.describe()} from {start} at the period's start allows {proposed} "
            f"(selectPolicy {rules.select})",
        ),
    )


def scale_down_limit(
    current: int, events: Sequence[ScaleEvent], now: float, rules: ScalingRules
) -> Limited:
    """The fewest replicas the scale-down policies allow now (upstream
    `calculateScaleDownLimitWithBehaviors`); may exceed `current` after a burst of scale-downs.
    """
    if rules.select == "Disabled":
        return Limited(
            current,
            Reason(ReasonCode.SCALE_DOWN_LIMIT, "scale-down is disabled (selectPolicy Disabled)"),
        )
    best: tuple[int, ScalingPolicyRule, int] | None = None
    for policy in rules.policies:
        added, removed = _moved(events, now, policy.period_s)
        start = current + removed - added
        if policy.type == "Pods":
            proposed = start - policy.value
        else:
            # upstream: int32(float64(start) * (1 - value/100)), truncation toward zero
            proposed = int(start * (1 - policy.value / 100))
        # Max selects the largest change, i.e. the lowest replica count
        better = best is None or (
            proposed < best[0] if rules.select == "Max" else proposed > best[0]
        )
        if better:
            best = (proposed, policy, start)
    assert best is not None
    proposed, policy, start = best
    return Limited(
        proposed,
        Reason(
            ReasonCode.SCALE_DOWN_LIMIT,
            f"{policy.describe()} from {start} at the period's start allows {proposed} "
            f"(selectPolicy {rules.select})",
        ),
    )


def _rate_and_bounds(
    desired: int,
    current: int,
    min_replicas: int,
    max_replicas: int,
    events: Sequence[ScaleEvent],
    now: float,
    behaviour: Behaviour,
) -> Limited:
    """Upstream `convertDesiredReplicasWithBehaviorRate`: rate limits, then min/max."""
    within = Reason(
        ReasonCode.DESIRED_WITHIN_RANGE, "the desired count is within the acceptable range"
    )
    if desired > current:
        limit = scale_up_limit(current, events, now, behaviour.scale_up)
        ceiling = max(limit.value, current)  # never below current because of past scale-ups
        if max_replicas > ceiling:
            bound, reason = ceiling, limit.reason
        else:
            bound = max_replicas
            reason = Reason(
                ReasonCode.TOO_MANY_REPLICAS,
                f"the desired replica count {desired} is more than the maximum {max_replicas}",
            )
        return Limited(bound, reason) if desired > bound else Limited(desired, within)
    if desired < current:
        limit = scale_down_limit(current, events, now, behaviour.scale_down)
        floor = min(limit.value, current)
        if min_replicas < floor:
            bound, reason = floor, limit.reason
        else:
            bound = min_replicas
            reason = Reason(
                ReasonCode.TOO_FEW_REPLICAS,
                f"the desired replica count {desired} is less than the minimum {min_replicas}",
            )
        return Limited(bound, reason) if desired < bound else Limited(desired, within)
    return Limited(desired, within)


@dataclass(frozen=True)
class Normalised:
    """The pipeline's answer: final replicas, the stabilised value, and both steps' reasons."""

    replicas: int
    stabilised: int
    stabilisation: Reason
    limit: Reason

    @property
    def reasons(self) -> tuple[Reason, Reason]:
        return (self.stabilisation, self.limit)


def normalise(
    prenormalised: int,
    current: int,
    min_replicas: int,
    max_replicas: int,
    recommendations: Sequence[Recommendation],
    events: Sequence[ScaleEvent],
    now: float,
    behaviour: Behaviour,
) -> Normalised:
    """The HPA's `normalizeDesiredReplicasWithBehaviors`: stabilise, then rate limits, then
    min/max, each with its reason.
    """
    if min_replicas < 0 or max_replicas < min_replicas:
        raise ValueError(
            f"need 0 <= min_replicas <= max_replicas, got min_replicas={min_replicas!r}, "
            f"max_replicas={max_replicas!r}"
        )
    if current < 0 or prenormalised < 0:
        raise ValueError(
            f"replica counts must be >= 0, got current={current!r}, prenormalised={prenormalised!r}"
        )
    stable = stabilise(recommendations, now, prenormalised, current, behaviour)
    final = _rate_and_bounds(
        stable.value, current, min_replicas, max_replicas, events, now, behaviour
    )
    return Normalised(final.value, stable.value, stable.reason, final.reason)


def record_recommendation(
    recommendations: Sequence[Recommendation], now: float, value: int, behaviour: Behaviour
) -> tuple[Recommendation, ...]:
    """The history after this tick: `(now, value)` appended, entries no window can see dropped."""
    keep_after = now - max(behaviour.up_window_s(), behaviour.down_window_s())
    kept = tuple(r for r in recommendations if r[0] > keep_after)
    return (*kept, (now, value))


def record_scale_event(
    events: Sequence[ScaleEvent], now: float, before: int, after: int, behaviour: Behaviour
) -> tuple[ScaleEvent, ...]:
    """The scale events after a rescale from `before` to `after` (none when they are equal),
    without events older than every policy period.
    """
    longest = max(behaviour.scale_up.longest_period_s(), behaviour.scale_down.longest_period_s())
    kept = tuple(e for e in events if e[0] > now - longest)
    return kept if before == after else (*kept, (now, before, after))
