"""Variant cost-performance profiles and SLOs, loaded from YAML by the controller.

Pure data with validation: a profile says what one replica of a variant on a GPU type can
sustain and what it costs, so replica math never needs a cluster.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PerfPoint(BaseModel):
    """One measured point of a serving benchmark (vLLM benchmark_serving, guidellm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: float = Field(gt=0, description="Concurrent requests in flight per replica")
    request_throughput: float = Field(gt=0, description="Completed requests/s per replica")
    output_token_throughput: float | None = Field(default=None, gt=0,
                                                  description="Generated tokens/s per replica")
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
    must be given; `curve` wins when both are.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    base_ttft_s: float = Field(default=0.5, gt=0, description="TTFT at low load, seconds")
    capacity_rps: float | None = Field(default=None, gt=0,
                                       description="Requests/s per replica at the SLO")
    curve: tuple[PerfPoint, ...] = ()
    provenance: str = Field(default="illustrative", description="Where the figures come from")

    @model_validator(mode="after")
    def _needs_capacity(self) -> VariantProfile:
        if self.capacity_rps is None and not self.curve:
            raise ValueError("profile needs either 'capacity_rps' or a 'curve' of measured "
                             "points")
        return self

    @property
    def cost_per_replica_hour(self) -> float:
        return self.gpus_per_replica * self.gpu_hourly_usd
