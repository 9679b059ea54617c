"""The HTTP API: forecasts, plans, the decision log, retrain, health and /metrics.

Responses are typed (pydantic) so /docs documents them; bad parameters get 422 with a message
that names the parameter and what is allowed. Reads never train: forecasts are cached per
training generation in the service.
"""

from __future__ import annotations

import hmac
import math
import os
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from controller.protocols import PermanentError, TemporaryError
from controller.service import Service


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class QuantilePath(BaseModel):
    quantile: float
    values: list[float]


class ForecastOut(BaseModel):
    variant: str
    model: str
    issued_at: str
    step_s: int
    timestamps: list[str]
    quantiles: list[QuantilePath]
    trained_from: str | None
    trained_to: str | None
    scores: dict[str, float | None]
    unit: str = "requests/s"


class ForecastResponse(BaseModel):
    forecasts: list[ForecastOut]


class VariantOut(BaseModel):
    name: str
    deployment: str
    state: str
    model: str | None
    current_replicas: int | None
    desired_replicas: int | None
    min_replicas: int
    max_replicas: int
    capacity_rps_at_slo: float | None
    cold_start_s: float
    gpu_type: str
    gpus_per_replica: int
    cost_per_replica_hour: float
    actuation: str


class PlanItem(BaseModel):
    variant: str
    ts: str
    outcome: str
    current: int | None
    desired: int | None
    predictive: int | None
    reactive: int | None
    demand_rps: float | None
    unserved_rps: float
    cost_per_hour: float | None
    reasons: list[dict[str, Any]]
    message: str


class PlanResponse(BaseModel):
    ts: str
    total_cost_per_hour: float
    variants: list[PlanItem]


class DecisionOut(BaseModel):
    ts: str
    variant: str
    outcome: str
    current: int | None
    desired: int | None
    predictive: int | None
    reactive: int | None
    reactive_why: str
    demand_rps: float | None
    model: str | None
    mode: str
    state: str
    reasons: list[dict[str, Any]]
    message: str
    live: dict[str, float | int | None]


class RetrainResponse(BaseModel):
    generation: int
    trained: dict[str, str]
    failed: dict[str, str]
    seconds: float


class Health(BaseModel):
    status: str
    detail: dict[str, str] = {}


def _error(status: int, msg: str) -> HTTPException:
    return HTTPException(status_code=status, detail=msg)


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """Build the app around a running service; `token` protects mutating endpoints."""
    app = FastAPI(title="forescale", version="0.1.0",
                  description="Predictive, variant-aware autoscaler for LLM inference")
    cfg = service.config

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            raise _error(503, "no API token configured (set "
                         f"{cfg.api.token_env} or api.token_file): mutating endpoints are off")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def read_guard(authorization: Annotated[str | None, Header()] = None) -> None:
        if cfg.api.protect_reads:
            require_token(authorization)

    def known(variant: str) -> list[str]:
        if variant in service.variants:
            return [variant]
        for g in cfg.groups:
            if g.name == variant:
                return list(g.variants)
        names = sorted(service.variants) + [g.name for g in cfg.groups]
        raise _error(422, f"variant={variant!r} is not a configured variant or group; "
                     f"known: {', '.join(names)}")

    def parse_quantiles(raw: str | None) -> list[float] | None:
        if raw is None:
            return None
        out = []
        for part in raw.split(","):
            try:
                q = float(part)
            except ValueError:
                raise _error(422, f"quantiles: {part!r} is not a number; give levels in "
                             "(0, 1) separated by commas, e.g. 0.5,0.9,0.99") from None
            if not 0 < q < 1 or not math.isfinite(q):
                raise _error(422, f"quantiles: {q} must be strictly between 0 and 1")
            out.append(q)
        return out

    @app.get("/forecast", response_model=ForecastResponse, dependencies=[Depends(read_guard)])
    def forecast(variant: Annotated[str, Query(min_length=1, max_length=128)],
                 horizon: Annotated[int | None, Query(ge=1, le=2016)] = None,
                 quantiles: Annotated[str | None, Query(max_length=200)] = None,
                 ) -> ForecastResponse:
        qs = parse_quantiles(quantiles)
        out = []
        for name in known(variant):
            try:
                fc = service.forecast(name, horizon, qs)
            except TemporaryError as exc:
                raise _error(503, str(exc)) from None
            except PermanentError as exc:
                raise _error(502, str(exc)) from None
            out.append(ForecastOut(
                variant=name, model=fc.model, issued_at=_iso(fc.issued_at) or "",
                step_s=fc.step_s, timestamps=[_iso(float(t)) or "" for t in fc.timestamps()],
                quantiles=[QuantilePath(quantile=q, values=[float(x) for x in fc.quantiles[q]])
                           for q in sorted(fc.quantiles) if qs is None or q in qs],
                trained_from=_iso(fc.trained_from), trained_to=_iso(fc.trained_to),
                scores={k: _num(v) for k, v in fc.scores.items()}))
        return ForecastResponse(forecasts=out)

    @app.get("/forecast.png", dependencies=[Depends(read_guard)],
             responses={200: {"content": {"image/png": {}}}})
    def forecast_png(variant: Annotated[str, Query(min_length=1, max_length=128)]) -> Response:
        from controller.plots import forecast_figure

        names = known(variant)
        try:
            png = forecast_figure(service, names[0])
        except TemporaryError as exc:
            raise _error(503, str(exc)) from None
        return Response(content=png, media_type="image/png")

    @app.get("/variants", response_model=list[VariantOut], dependencies=[Depends(read_guard)])
    def variants() -> list[VariantOut]:
        out = []
        for name, rt in service.variants.items():
            v = rt.config
            last = rt.last
            out.append(VariantOut(
                name=name, deployment=f"{v.deployment.namespace}/{v.deployment.name}",
                state=rt.state, model=rt.model.model_name if rt.model else None,
                current_replicas=last.current if last else None,
                desired_replicas=last.desired if last else None,
                min_replicas=v.min_replicas, max_replicas=v.max_replicas,
                capacity_rps_at_slo=v.profile.capacity_rps, cold_start_s=v.profile.cold_start_s,
                gpu_type=v.profile.gpu_type, gpus_per_replica=v.profile.gpus_per_replica,
                cost_per_replica_hour=v.profile.cost_per_replica_hour,
                actuation=cfg.mode_of(v).value))
        return out

    @app.get("/plan", response_model=PlanResponse, dependencies=[Depends(read_guard)])
    def plan() -> PlanResponse:
        items = []
        total = 0.0
        for name, rt in service.variants.items():
            last = rt.last
            if last is None:
                continue
            cost = None if last.desired is None else \
                last.desired * rt.config.profile.cost_per_replica_hour
            total += cost or 0.0
            cap = rt.last_decision.capacity_per_replica if rt.last_decision else 0.0
            unserved = 0.0
            if last.demand is not None and last.desired is not None:
                unserved = max(0.0, last.demand - last.desired * cap)
            items.append(PlanItem(
                variant=name, ts=_iso(last.ts) or "", outcome=last.outcome,
                current=last.current, desired=last.desired, predictive=last.predictive,
                reactive=last.reactive, demand_rps=last.demand, unserved_rps=unserved,
                cost_per_hour=cost, reasons=list(last.reasons), message=last.message))
        return PlanResponse(ts=_iso(service.clock()) or "", total_cost_per_hour=total,
                            variants=items)

    @app.get("/decisions", response_model=list[DecisionOut], dependencies=[Depends(read_guard)])
    def decisions(variant: Annotated[str | None, Query(max_length=128)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[DecisionOut]:
        names = known(variant) if variant else list(service.variants)
        recs = sorted((r for n in names for r in service.variants[n].log), key=lambda r: r.ts)
        return [DecisionOut(**{**asdict(r), "ts": _iso(r.ts), "demand_rps": r.demand,
                               "reasons": list(r.reasons)}) for r in recs[-limit:]]

    @app.post("/retrain", response_model=RetrainResponse, dependencies=[Depends(require_token)])
    def retrain(variant: Annotated[str | None, Query(max_length=128)] = None
                ) -> RetrainResponse:
        names = known(variant) if variant else None
        try:
            report = service.retrain(names)
        except TemporaryError as exc:
            raise _error(409, str(exc)) from None
        return RetrainResponse(generation=service.generation,
                               trained={n: m.model_name for n, m in report.models.items()},
                               failed=report.failed, seconds=report.seconds)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    def readyz() -> Response:
        missing = [n for n, rt in service.variants.items() if rt.model is None]
        if missing:
            return JSONResponse(status_code=503, content=Health(
                status="warming-up", detail={n: "no model yet" for n in missing}).model_dump())
        return JSONResponse(content=Health(status="ready").model_dump())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app


def load_token(token_env: str, token_file: Any) -> str | None:
    """The API token from a file (a mounted Secret) or env; never from the config itself."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None
    value = os.environ.get(token_env, "").strip()
    return value or None


__all__ = ["create_app", "load_token"]
