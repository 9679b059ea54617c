"""Variant cost-performance profiles and SLOs, loaded from YAML by the controller.

Pure data with validation: a profile says what one replica of a variant on a GPU type can
sustain and what it costs, so replica math never needs a cluster. `parse_profiles` turns an
already-parsed YAML mapping into profiles; reading the file is the controller's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ProfileError(ValueError):
    """A profile document that cannot be used; the message names the profile and the field."""


class PerfPoint(BaseModel):
    """One measured point of a serving benchmark (vLLM benchmark_serving, guidellm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: float = Field(gt=0, description="Concurrent requests in flight per replica")
    request_throughput: float = Field(gt=0, description="Completed requests/s per replica")
    output_token_throughput: float | None = Field(default=None, gt=0,
                                                  description="Generated tokens/s per replica")
    input_token_throughput: float | None = Field(default=None, gt=0,
                                                 description="Prompt tokens/s per replica")
    ttft_p95_s: float = Field(gt=0, description="Time to first token, p95, seconds")
    itl_p95_s: float | None = Field(default=None, gt=0,
                                    description="Inter-token latency, p95, seconds")


class SLO(BaseModel):
    """Latency targets and the share of requests that must meet them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_p95_s: float = Field(default=5.0, gt=0, description="TTFT target, seconds")
    itl_p95_s: float | None = Field(default=None, gt=0, description="ITL target, seconds")
    attainment_target: float = Field(default=0.99, gt=0, lt=1,
                                     description="Share of requests that must meet the SLO")


class VariantProfile(BaseModel):
    """What one replica of a variant delivers and costs.

    Either `curve` (measured points) or `capacity_rps` (a direct per-replica capacity at SLO)
    must be given; `curve` wins when both are. The curve is kept sorted by concurrency.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(default=None, description="Model served, e.g. a Hugging Face id")
    gpu_type: str = Field(default="generic", min_length=1)
    gpus_per_replica: int = Field(default=1, ge=1)
    gpu_hourly_usd: float = Field(default=2.0, ge=0, description="Price of one GPU-hour")
    cold_start_s: float = Field(default=300.0, ge=0, description="Pod created -> ready")
    quality: float = Field(default=1.0, ge=0, le=1, description="Task quality score")
    max_concurrency: int | None = Field(default=None, ge=1)
    kv_cache_tokens: int | None = Field(default=None, ge=1)
    mean_input_tokens: float | None = Field(default=None, gt=0,
                                            description="Request mix the curve was measured at")
    mean_output_tokens: float | None = Field(default=None, gt=0)
    input_token_weight: float = Field(
        default=0.1, ge=0,
        description="Cost of one prompt token relative to one generated token, used to "
                    "rescale capacity to another request mix (prefill is batched, decode is "
                    "sequential, so a prompt token is much cheaper)")
    base_ttft_s: float = Field(default=0.5, gt=0, description="TTFT at low load, seconds")
    capacity_rps: float | None = Field(default=None, gt=0,
                                       description="Requests/s per replica at the SLO")
    saturation_rps: float | None = Field(
        default=None, gt=0,
        description="Requests/s per replica when saturated (benchmark max throughput); "
                    "enables the queueing estimate for profiles with few points")
    curve: tuple[PerfPoint, ...] = ()
    provenance: str = Field(default="illustrative", description="Where the figures come from")
    correct_online: bool = Field(
        default=True,
        description="Let the live fleet correct this capacity within 0.5-1.5x: replicas "
                    "that queue show what one really serves, replicas serving more than the "
                    "profile within the SLO show it serves at least that; false trusts the "
                    "profile as measured")

    @field_validator("curve", mode="after")
    @classmethod
    def _sorted_curve(cls, curve: tuple[PerfPoint, ...]) -> tuple[PerfPoint, ...]:
        points = tuple(sorted(curve, key=lambda p: p.concurrency))
        for a, b in pairwise(points):
            if a.concurrency == b.concurrency:
                raise ValueError(f"curve has two points at concurrency {a.concurrency}; "
                                 "keep one (e.g. the median run)")
        return points

    @model_validator(mode="after")
    def _needs_capacity(self) -> VariantProfile:
        if self.capacity_rps is None and not self.curve:
            raise ValueError("profile needs either 'capacity_rps' or a 'curve' of measured "
                             "points")
        if (self.mean_input_tokens is None) != (self.mean_output_tokens is None):
            raise ValueError("give both 'mean_input_tokens' and 'mean_output_tokens' (the mix "
                             "the curve was measured at) or neither")
        return self

    @property
    def cost_per_replica_hour(self) -> float:
        return self.gpus_per_replica * self.gpu_hourly_usd


def parse_profiles(raw: Mapping[str, Any], source: str = "profiles") -> dict[str, VariantProfile]:
    """Profiles by name from a parsed YAML document.

    Accepts `{"profiles": {name: {...}}}` or directly `{name: {...}}`, so one file can hold a
    fleet's profiles or a single variant's. Every problem becomes one `ProfileError` that
    lists each bad field as `source: name.field: message`.
    """
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{source}: the top level must be a mapping of profile name to "
                           f"profile, got {type(raw).__name__}")
    body = raw.get("profiles", raw)
    if not isinstance(body, Mapping) or not body:
        raise ProfileError(f"{source}: 'profiles' must be a non-empty mapping of name to "
                           "profile")
    profiles: dict[str, VariantProfile] = {}
    problems: list[str] = []
    for name, spec in body.items():
        if not isinstance(spec, Mapping):
            problems.append(f"{name}: must be a mapping, got {type(spec).__name__}")
            continue
        try:
            profiles[str(name)] = VariantProfile.model_validate(dict(spec))
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(x) for x in (name, *err["loc"]))
                problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    if problems:
        raise ProfileError(f"{source}: invalid profiles:\n  - " + "\n  - ".join(problems))
    return profiles
