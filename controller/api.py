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
    #: The forecast quantile provisioned for, and how it was chosen (calibrated or feedback).
    provisioning_quantile: float
    headroom: str


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


class GroupPlan(BaseModel):
    name: str
    #: variant -> share of the group's served traffic, for the router.
    routing: dict[str, float]
    #: variant -> replicas the optimiser would run (advisory).
    replicas: dict[str, int]
    unserved_rps: float
    solver: str
    optimal: bool
    reasons: list[str]


class PlanResponse(BaseModel):
    ts: str
    total_cost_per_hour: float
    variants: list[PlanItem]
    groups: list[GroupPlan] = []


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


def _check_token(token: str | None, authorization: str | None, token_env: str) -> None:
    """Bearer-token check with a constant-time compare; no token configured = writes off."""
    if token is None:
        raise _error(503, f"no API token configured (set {token_env} or api.token_file): "
                     "mutating endpoints are off")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def _check_read(protect: bool, token: str | None, authorization: str | None,
                token_env: str) -> None:
    """Reads are open unless `api.protect_reads` is set."""
    if protect:
        _check_token(token, authorization, token_env)


def _known(service: Service, variant: str) -> list[str]:
    """The variants a name stands for: itself, or a group's members; 422 otherwise."""
    if variant in service.variants:
        return [variant]
    for g in service.config.groups:
        if g.name == variant:
            return list(g.variants)
    names = sorted(service.variants) + [g.name for g in service.config.groups]
    raise _error(422, f"variant={variant!r} is not a configured variant or group; "
                 f"known: {', '.join(names)}")


def _parse_quantiles(raw: str | None) -> list[float] | None:
    if raw is None:
        return None
    out = []
    for part in raw.split(","):
        try:
            q = float(part)
        except ValueError:
            raise _error(422, f"quantiles: {part!r} is not a number; give levels in (0, 1) "
                         "separated by commas, e.g. 0.5,0.9,0.99") from None
        if not 0 < q < 1 or not math.isfinite(q):
            raise _error(422, f"quantiles: {q} must be strictly between 0 and 1")
        out.append(q)
    return out


def _forecast_out(service: Service, name: str, horizon: int | None,
                  qs: list[float] | None) -> ForecastOut:
    try:
        fc = service.forecast(name, horizon, qs)
    except TemporaryError as exc:
        raise _error(503, str(exc)) from None
    except PermanentError as exc:
        raise _error(502, str(exc)) from None
    return ForecastOut(
        variant=name, model=fc.model, issued_at=_iso(fc.issued_at) or "", step_s=fc.step_s,
        timestamps=[_iso(float(t)) or "" for t in fc.timestamps()],
        quantiles=[QuantilePath(quantile=q, values=[float(x) for x in fc.quantiles[q]])
                   for q in sorted(fc.quantiles) if qs is None or q in qs],
        trained_from=_iso(fc.trained_from), trained_to=_iso(fc.trained_to),
        scores={k: _num(v) for k, v in fc.scores.items()})


def _variant_out(service: Service, name: str) -> VariantOut:
    rt = service.variants[name]
    v = rt.config
    last = rt.last
    return VariantOut(
        name=name, deployment=f"{v.deployment.namespace}/{v.deployment.name}", state=rt.state,
        model=rt.model.model_name if rt.model else None,
        current_replicas=last.current if last else None,
        desired_replicas=last.desired if last else None,
        min_replicas=v.min_replicas, max_replicas=v.max_replicas,
        capacity_rps_at_slo=service.capacity(rt).rps, cold_start_s=v.profile.cold_start_s,
        gpu_type=v.profile.gpu_type, gpus_per_replica=v.profile.gpus_per_replica,
        cost_per_replica_hour=v.profile.cost_per_replica_hour,
        actuation=service.config.mode_of(v).value,
        provisioning_quantile=rt.headroom.quantile, headroom=rt.headroom_reason)


def _plan(service: Service) -> PlanResponse:
    items = []
    for name, rt in service.variants.items():
        last, d = rt.last, rt.last_decision
        if last is None:
            continue
        cost = None if last.desired is None else \
            last.desired * rt.config.profile.cost_per_replica_hour
        # The record and its decision agree on demand and replicas; a record with neither
        # (the variant held on an error) has nothing unserved to show.
        unserved = d.unserved_rps if d is not None and last.demand is not None \
            and last.desired is not None else 0.0
        items.append(PlanItem(
            variant=name, ts=_iso(last.ts) or "", outcome=last.outcome, current=last.current,
            desired=last.desired, predictive=last.predictive, reactive=last.reactive,
            demand_rps=last.demand, unserved_rps=unserved, cost_per_hour=cost,
            reasons=list(last.reasons), message=last.message))
    return PlanResponse(ts=_iso(service.clock()) or "",
                        total_cost_per_hour=sum(i.cost_per_hour or 0.0 for i in items),
                        variants=items, groups=_group_plans(service))


def _group_plans(service: Service) -> list[GroupPlan]:
    a = service.allocation
    if a is None:
        return []
    out = []
    for g in service.config.groups:
        out.append(GroupPlan(
            name=g.name, routing=dict(a.routing.get(g.name, {})),
            replicas={n: int(a.replicas.get(n, 0)) for n in g.variants},
            unserved_rps=float(a.unserved_rps.get(g.name, 0.0)),
            solver=a.solver, optimal=a.optimal, reasons=list(a.reasons)))
    return out


def _decisions(service: Service, variant: str | None, limit: int) -> list[DecisionOut]:
    names = _known(service, variant) if variant else list(service.variants)
    recs = sorted((r for n in names for r in service.variants[n].log), key=lambda r: r.ts)
    return [DecisionOut(**{**asdict(r), "ts": _iso(r.ts), "demand_rps": r.demand,
                           "reasons": list(r.reasons)}) for r in recs[-limit:]]


def _retrain(service: Service, variant: str | None) -> RetrainResponse:
    names = _known(service, variant) if variant else None
    try:
        report = service.retrain(names)
    except TemporaryError as exc:
        raise _error(409, str(exc)) from None
    return RetrainResponse(generation=service.generation,
                           trained={n: m.model_name for n, m in report.models.items()},
                           failed=report.failed, seconds=report.seconds)


def _readyz(service: Service) -> Response:
    missing = [n for n, rt in service.variants.items() if rt.model is None]
    if missing:
        return JSONResponse(status_code=503, content=Health(
            status="warming-up", detail={n: "no model yet" for n in missing}).model_dump())
    return JSONResponse(content=Health(status="ready").model_dump())


def _png(service: Service, variant: str) -> Response:
    from controller.plots import forecast_figure

    try:
        png = forecast_figure(service, _known(service, variant)[0])
    except TemporaryError as exc:
        raise _error(503, str(exc)) from None
    return Response(content=png, media_type="image/png")


VariantQ = Annotated[str, Query(min_length=1, max_length=128)]
OptVariantQ = Annotated[str | None, Query(max_length=128)]
AuthH = Annotated[str | None, Header()]


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """Build the app around a running service; `token` protects mutating endpoints."""
    app = FastAPI(title="forescale", version="0.1.0",
                  description="Predictive, variant-aware autoscaler for LLM inference")
    api = service.config.api

    def require_token(authorization: AuthH = None) -> None:
        _check_token(token, authorization, api.token_env)

    def read_guard(authorization: AuthH = None) -> None:
        _check_read(api.protect_reads, token, authorization, api.token_env)

    reads = [Depends(read_guard)]

    @app.get("/forecast", response_model=ForecastResponse, dependencies=reads)
    def forecast(variant: VariantQ, horizon: Annotated[int | None, Query(ge=1, le=2016)] = None,
                 quantiles: Annotated[str | None, Query(max_length=200)] = None,
                 ) -> ForecastResponse:
        qs = _parse_quantiles(quantiles)
        return ForecastResponse(forecasts=[_forecast_out(service, n, horizon, qs)
                                           for n in _known(service, variant)])

    @app.get("/forecast.png", dependencies=reads,
             responses={200: {"content": {"image/png": {}}}})
    def forecast_png(variant: VariantQ) -> Response:
        return _png(service, variant)

    @app.get("/variants", response_model=list[VariantOut], dependencies=reads)
    def variants() -> list[VariantOut]:
        return [_variant_out(service, n) for n in service.variants]

    @app.get("/plan", response_model=PlanResponse, dependencies=reads)
    def plan() -> PlanResponse:
        return _plan(service)

    @app.get("/decisions", response_model=list[DecisionOut], dependencies=reads)
    def decisions(variant: OptVariantQ = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[DecisionOut]:
        return _decisions(service, variant, limit)

    @app.post("/retrain", response_model=RetrainResponse,
              dependencies=[Depends(require_token)])
    def retrain(variant: OptVariantQ = None) -> RetrainResponse:
        return _retrain(service, variant)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    def readyz() -> Response:
        return _readyz(service)

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
