"""The HTTP API: forecasts, plans, the decision log, retrain, health and /metrics.

Responses are typed (pydantic) so /docs documents every field with its unit. Reads never
train: forecasts are cached per training generation in the service, pictures per variant,
model generation, forecast step and latest decision here.

Every error, whatever its status (401, 404, 405, 409, 422, 502, 503), has one shape
(`ErrorResponse`)::

    {"error": {"status": 422, "message": "horizon_s: ...",
               "errors": [{"parameter": "horizon_s", "value": "x", "message": "..."}]}}

`errors` lists each parameter at fault (empty when the error is not about a parameter).
A query parameter given twice (`?variant=a&variant=b`) or one the endpoint does not know
(`?horizon=4`) is a 422 naming it, rather than the last value silently winning or the
parameter silently ignored.

`/docs` and `/redoc` load their JavaScript and CSS from this process (the `fastapi-offline`
package ships them), so they work in an air-gapped cluster.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

# Imported here, not at the first picture: importing matplotlib holds the GIL for about a
# second, which stalled the event loop (and /healthz) under the first burst of requests.
from controller.plots import forecast_png
from controller.protocols import PermanentError, TemporaryError
from controller.service import Service

#: Longest forecast served, in steps (two weeks of 10-minute steps).
MAX_HORIZON_STEPS = 2016
#: Pictures drawn at once; more distinct pictures asked for at the same time get 503 with
#: Retry-After instead of a queue that grows without bound (each holds a core for ~0.3 s).
MAX_CONCURRENT_RENDERS = 2
#: Pictures kept (about 75 KB each).
PNG_CACHE_SIZE = 64
#: Seconds a client should wait before asking again after a 503.
RETRY_AFTER_S = 2


# ---------------------------------------------------------------------- errors

class ErrorItem(BaseModel):
    parameter: str = Field(description="The query parameter or header at fault")
    value: Any = Field(default=None, description="The value given (null when missing)")
    message: str = Field(description="What is wrong and what is allowed")


class ErrorBody(BaseModel):
    status: int = Field(description="The HTTP status code, repeated")
    message: str = Field(description="One line for people")
    errors: list[ErrorItem] = Field(default=[], description="Each parameter at fault")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


class ApiError(Exception):
    """An error answered in the `ErrorResponse` shape."""

    def __init__(self, status: int, message: str, errors: Sequence[ErrorItem] = (),
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, list(errors)
        self.headers = headers


def _bad(parameter: str, value: Any, message: str) -> ApiError:
    """A 422 naming one parameter."""
    return ApiError(422, f"{parameter}: {message}",
                    [ErrorItem(parameter=parameter, value=value, message=message)])


def _unavailable(message: str) -> ApiError:
    return ApiError(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


def _error_json(status: int, message: str, errors: Sequence[ErrorItem] = (),
                headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(status=status, message=message, errors=list(errors)))
    return JSONResponse(status_code=status, content=jsonable_encoder(body), headers=headers)


def _validation_items(exc: RequestValidationError) -> list[ErrorItem]:
    items = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        # ("query", "horizon_s") -> "horizon_s"; the location alone for a whole-body error.
        name = ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc) or "request"
        value = err.get("input")
        try:
            value = jsonable_encoder(value)
        except (TypeError, ValueError):
            value = repr(value)
        items.append(ErrorItem(parameter=name, value=value, message=str(err.get("msg", ""))))
    return items


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_json(exc.status, exc.message, exc.errors, exc.headers)

    async def validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        items = _validation_items(exc)
        message = "; ".join(f"{i.parameter}: {i.message}" for i in items) or "invalid request"
        return _error_json(422, message, items)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        return _error_json(exc.status_code, str(exc.detail), headers=headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)


_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "A parameter is invalid, repeated or unknown"},
    503: {"model": ErrorResponse, "description": "Not available yet (warming up) or busy; "
          "see Retry-After"},
}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
    503: {"model": ErrorResponse, "description": "No API token configured: writes are off"},
}


# ---------------------------------------------------------------------- query checks

_ALLOWED_QUERY: dict[int, frozenset[str]] = {}


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _allowed_query(route: APIRoute) -> frozenset[str]:
    """The query parameters a route declares (its own and its dependencies'), cached."""
    allowed = _ALLOWED_QUERY.get(id(route))
    if allowed is None:
        allowed = _ALLOWED_QUERY[id(route)] = frozenset(_query_names(route.dependant))
    return allowed


async def strict_query(request: Request) -> None:
    """Refuse repeated and unknown query parameters, naming them (see the module doc)."""
    route = request.scope.get("route")
    allowed = _allowed_query(route) if isinstance(route, APIRoute) else None
    seen: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        seen.setdefault(key, []).append(value)
    items = []
    for key, values in seen.items():
        if len(values) > 1:
            items.append(ErrorItem(parameter=key, value=values,
                                   message=f"given {len(values)} times; give it once"))
        elif allowed is not None and key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            items.append(ErrorItem(parameter=key, value=values[0],
                                   message=f"unknown parameter; this endpoint takes: {known}"))
    if items:
        raise ApiError(422, "; ".join(f"{i.parameter}: {i.message}" for i in items), items)


# ---------------------------------------------------------------------- response models

def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class QuantilePath(BaseModel):
    quantile: float = Field(description="Quantile level in (0, 1), e.g. 0.9 for p90")
    values: list[float] = Field(description="Forecast load per step, requests/s (the mean "
                                "rate over the step starting at the matching timestamp)")


class ForecastOut(BaseModel):
    variant: str = Field(description="Model variant")
    model: str = Field(description="Forecasting model that produced this forecast")
    issued_at: str = Field(description="Forecast origin, ISO 8601 UTC: the end of the last "
                           "observed step")
    step_s: int = Field(description="Length of one forecast step, seconds")
    horizon_steps: int = Field(description="Number of steps forecast")
    horizon_s: int = Field(description="Time covered by the forecast, seconds "
                           "(horizon_steps x step_s)")
    timestamps: list[str] = Field(description="Start of each step, ISO 8601 UTC")
    quantiles: list[QuantilePath] = Field(description="One path per quantile level")
    trained_from: str | None = Field(description="Start of the training window, ISO 8601 UTC")
    trained_to: str | None = Field(description="End of the training window, ISO 8601 UTC")
    scores: dict[str, float | None] = Field(description="Backtest scores of the model "
                                            "(ratios to the naive baseline unless named "
                                            "otherwise; null when not computed)")
    unit: str = Field(default="requests/s", description="Unit of the quantile values")
    history_gaps: int = Field(default=0, description="Windows of the training history with "
                              "no data, treated as missing (not as zero load)")


class ForecastResponse(BaseModel):
    forecasts: list[ForecastOut] = Field(description="One per variant (a group gives each "
                                         "member)")


class VariantOut(BaseModel):
    name: str = Field(description="Variant name")
    deployment: str = Field(description="The Deployment scaled, namespace/name")
    state: str = Field(description="predictive, reactive-fallback or warming-up")
    model: str | None = Field(description="Forecasting model serving the variant")
    current_replicas: int | None = Field(description="Replicas at the last decision")
    desired_replicas: int | None = Field(description="Replicas decided at the last decision")
    min_replicas: int = Field(description="Configured floor, replicas")
    max_replicas: int = Field(description="Configured ceiling, replicas")
    capacity_rps_at_slo: float | None = Field(description="Requests/s one replica serves "
                                              "within the SLO, as decisions use it: the "
                                              "profile's, corrected by the live fleet")
    capacity_profile_rps: float | None = Field(description="Requests/s one replica serves "
                                               "within the SLO by the profile alone")
    capacity_correction: str = Field(description="How the live fleet corrected the "
                                     "profile's capacity (bounded to 0.5-1.5x), and on what "
                                     "evidence")
    cold_start_s: float = Field(description="Time from ordering a replica to it serving, "
                                "seconds: the p90 measured on this cluster once three "
                                "scale-ups are on record, the configured value before")
    cold_start_configured_s: float = Field(description="The profile's cold start, seconds "
                                           "(the prior)")
    cold_start: str = Field(description="How the cold start was obtained (measured or "
                            "configured, over how many scale-ups)")
    gpu_type: str = Field(description="GPU type of one replica")
    gpus_per_replica: int = Field(description="GPUs per replica")
    cost_per_replica_hour: float = Field(description="Cost of one replica, USD per hour")
    actuation: str = Field(description="dry-run, scale or metric")
    provisioning_quantile: float = Field(description="Forecast quantile level provisioned "
                                         "for, in (0, 1)")
    headroom: str = Field(description="How the provisioning quantile was chosen "
                          "(calibrated or feedback)")
    origin: str = Field(description="Who declares the variant: config (the file) or "
                        "VariantAutoscaler <namespace>/<name>")


class _DecisionFields(BaseModel):
    """What every view of one decision says (a plan's line and the decision log's record)."""

    variant: str = Field(description="Variant name")
    ts: str = Field(description="Time of the decision, ISO 8601 UTC")
    outcome: str = Field(description="scaled, held, dry-run, metric, follower or failed")
    current: int | None = Field(description="Replicas before the decision")
    desired: int | None = Field(description="Replicas decided")
    predictive: int | None = Field(description="Replicas the forecast alone asks for")
    reactive: int | None = Field(description="Reactive floor from live signals, replicas")
    demand_rps: float | None = Field(description="Forecast demand provisioned for, "
                                     "requests/s")
    reasons: list[dict[str, Any]] = Field(description="Each step of the decision with its "
                                          "reason code")
    message: str = Field(description="The decision in one line")


class PlanItem(_DecisionFields):
    unserved_rps: float = Field(description="Demand the desired replicas cannot serve within "
                                "the SLO, requests/s")
    cost_per_hour: float | None = Field(description="Cost of the desired replicas, USD/hour")


class GroupPlan(BaseModel):
    name: str = Field(description="Group name")
    routing: dict[str, float] = Field(description="variant -> share of the group's served "
                                      "traffic, in [0, 1], for the router")
    replicas: dict[str, int] = Field(description="variant -> replicas the optimiser would "
                                     "run (advisory)")
    unserved_rps: float = Field(description="Group demand left unserved, requests/s")
    solver: str = Field(description="Optimiser used (MILP or greedy)")
    optimal: bool = Field(description="True when the solver proved optimality")
    reasons: list[str] = Field(description="Why the allocation is what it is")


class PlanResponse(BaseModel):
    ts: str = Field(description="Time of the plan, ISO 8601 UTC")
    total_cost_per_hour: float = Field(description="Cost of all desired replicas, USD/hour")
    variants: list[PlanItem] = Field(description="The last decision per variant")
    groups: list[GroupPlan] = Field(default=[], description="Per variant group")


class DecisionOut(_DecisionFields):
    reactive_why: str = Field(description="Which live signal set the reactive floor")
    model: str | None = Field(description="Forecasting model used")
    mode: str = Field(description="Actuation mode: dry-run, scale or metric")
    state: str = Field(description="predictive, reactive-fallback or warming-up")
    live: dict[str, float | int | None] = Field(description="Live signals read (request_rate "
                                                "in requests/s, queue in requests, "
                                                "kv_cache in [0, 1], ttft_p95 in seconds)")


class RetrainResponse(BaseModel):
    generation: int = Field(description="Training generation after this retrain")
    trained: dict[str, str] = Field(description="variant -> model now serving")
    failed: dict[str, str] = Field(description="variant -> why it is served by a fallback")
    seconds: float = Field(description="Duration of the retrain, seconds")


class Health(BaseModel):
    status: str = Field(description="ok, ready or warming-up")
    detail: dict[str, str] = Field(default={}, description="variant -> what it is waiting "
                                   "for (variants without a model yet)")


# ---------------------------------------------------------------------- handlers' bodies

def _check_token(token: str | None, creds: HTTPAuthorizationCredentials | None,
                 token_env: str) -> None:
    """Bearer-token check with a constant-time compare; no token configured = writes off."""
    if token is None:
        raise ApiError(503, f"no API token configured (set {token_env} or api.token_file): "
                       "mutating endpoints are off")
    given = creds.credentials.strip() if creds is not None else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token",
                       [ErrorItem(parameter="Authorization", value=None,
                                  message="expected 'Authorization: Bearer <token>'")],
                       headers={"WWW-Authenticate": "Bearer"})


def _known(service: Service, variant: str, parameter: str = "variant") -> list[str]:
    """The variants a name stands for: itself, or a group's members; 422 otherwise."""
    if variant in service.variants:
        return [variant]
    for g in service.groups:
        if g.name == variant:
            return list(g.variants)
    names = sorted(service.variants) + [g.name for g in service.groups]
    raise _bad(parameter, variant, f"{variant!r} is not a configured variant or group; "
               f"known: {', '.join(names)}")


def _parse_quantiles(raw: str | None) -> list[float] | None:
    if raw is None:
        return None
    out = []
    for part in raw.split(","):
        try:
            q = float(part)
        except ValueError:
            raise _bad("quantiles", raw, f"{part!r} is not a number; give levels in (0, 1) "
                       "separated by commas, e.g. 0.5,0.9,0.99") from None
        if not 0 < q < 1 or not math.isfinite(q):
            raise _bad("quantiles", raw, f"{q} must be strictly between 0 and 1")
        out.append(q)
    return out


def _horizon(service: Service, horizon_s: int | None, horizon_steps: int | None) -> int | None:
    """Steps to forecast from seconds or steps (one of them), None for the default."""
    if horizon_s is not None and horizon_steps is not None:
        raise ApiError(422, "horizon_s and horizon_steps: give one or the other", [
            ErrorItem(parameter="horizon_s", value=horizon_s, message="given with "
                      "horizon_steps; give one"),
            ErrorItem(parameter="horizon_steps", value=horizon_steps, message="given with "
                      "horizon_s; give one")])
    if horizon_steps is not None:
        return horizon_steps
    if horizon_s is None:
        return None
    step = service.config.prometheus.step_s
    steps = math.ceil(horizon_s / step)
    if steps > MAX_HORIZON_STEPS:
        raise _bad("horizon_s", horizon_s, f"at most {MAX_HORIZON_STEPS * step} s "
                   f"({MAX_HORIZON_STEPS} steps of {step} s)")
    return steps


def _forecast_out(service: Service, name: str, horizon: int | None,
                  qs: list[float] | None) -> ForecastOut:
    try:
        fc = service.forecast(name, horizon, qs)
    except TemporaryError as exc:
        raise _unavailable(str(exc)) from None
    except PermanentError as exc:
        raise ApiError(502, str(exc)) from None
    return ForecastOut(
        variant=name, model=fc.model, issued_at=_iso(fc.issued_at) or "", step_s=fc.step_s,
        horizon_steps=fc.horizon, horizon_s=fc.horizon * fc.step_s,
        timestamps=[_iso(float(t)) or "" for t in fc.timestamps()],
        quantiles=[QuantilePath(quantile=q, values=[float(x) for x in fc.quantiles[q]])
                   for q in sorted(fc.quantiles) if qs is None or q in qs],
        trained_from=_iso(fc.trained_from), trained_to=_iso(fc.trained_to),
        scores={k: _num(v) for k, v in fc.scores.items()},
        history_gaps=service.variants[name].history_gaps if name in service.variants else 0)


def _variant_out(service: Service, name: str) -> VariantOut:
    rt = service.variants[name]
    v = rt.config
    last = rt.last
    return VariantOut(
        name=name, origin=rt.origin,
        deployment=f"{v.target.namespace}/{v.target.name}", state=rt.state,
        model=rt.model.model_name if rt.model else None,
        current_replicas=last.current if last else None,
        desired_replicas=last.desired if last else None,
        min_replicas=v.min_replicas, max_replicas=v.max_replicas,
        capacity_rps_at_slo=rt.policy.capacity_rps,
        capacity_profile_rps=service.capacity(rt).rps,
        capacity_correction=rt.policy.capacity_reason if v.profile.correct_online
        else "off (profile.correct_online: false): the profile's capacity as measured",
        cold_start_s=rt.policy.cold_start_s,
        cold_start_configured_s=v.profile.cold_start_s,
        cold_start=rt.policy.cold_start.explain(),
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
    for g in service.groups:
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
        raise ApiError(409, str(exc)) from None
    return RetrainResponse(generation=service.generation,
                           trained={n: m.model_name for n, m in report.models.items()},
                           failed=report.failed, seconds=report.seconds)


def _readyz(service: Service) -> Response:
    """503 until the variants the process started with have a model (`Service.ready`); then
    200, listing in `detail` the variants still warming up (added while running), which are
    decided reactively meanwhile and do not take the API out of its Service."""
    warming = service.warming_up()
    if not service.ready():
        return JSONResponse(status_code=503, content=Health(
            status="warming-up", detail=warming).model_dump())
    return JSONResponse(content=Health(status="ready", detail=warming).model_dump())


class PngRenderer:
    """`/forecast.png` without letting pictures starve the API.

    Pictures are drawn in the threadpool (never on the event loop, which serves /healthz),
    cached per (variant, model generation, forecast step, latest decision), and drawn once
    however many clients ask for the same picture at once (they share the result). At most
    `max_concurrent` distinct pictures are drawn at a time; past that the answer is 503 with
    Retry-After, so a burst of clients costs a bounded amount of CPU and memory.
    Only the event loop touches the cache and the in-flight table: no lock is needed.
    """

    def __init__(self, service: Service, max_concurrent: int = MAX_CONCURRENT_RENDERS,
                 cache_size: int = PNG_CACHE_SIZE) -> None:
        self.service = service
        self.max_concurrent = max_concurrent
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._inflight: dict[tuple[Any, ...], asyncio.Future[bytes]] = {}
        #: Pictures drawn (for tests and the load bench: how often the cache missed).
        self.renders = 0
        #: Requests that waited for a drawing already in flight instead of starting one.
        self.shared = 0

    @property
    def cached(self) -> int:
        """Pictures held in the cache now (at most `cache_size`)."""
        return len(self._cache)

    def key(self, name: str) -> tuple[Any, ...]:
        svc = self.service
        step = svc.config.prometheus.step_s
        last = svc.variants[name].last
        return (name, svc.generation, math.floor(svc.clock() / step) * step,
                None if last is None else last.ts)

    def _draw(self, name: str) -> bytes:
        return forecast_png(self.service, name)

    async def get(self, name: str) -> bytes:
        key = self.key(name)
        png = self._cache.get(key)
        if png is not None:
            self._cache.move_to_end(key)
            return png
        pending = self._inflight.get(key)
        if pending is not None:
            self.shared += 1
            return await asyncio.shield(pending)
        if len(self._inflight) >= self.max_concurrent:
            raise _unavailable(f"busy drawing {len(self._inflight)} other pictures; retry "
                               f"in {RETRY_AFTER_S} s")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.renders += 1
            png = await run_in_threadpool(self._draw, name)
        except TemporaryError as exc:
            error = _unavailable(str(exc))
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" log if nobody waited
            raise error from None
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._inflight[key]
        future.set_result(png)
        self._cache[key] = png
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return png


# ---------------------------------------------------------------------- the app

VariantQ = Annotated[str, Query(min_length=1, max_length=128, description="Variant or group "
                                "name (a group gives each member)")]
OptVariantQ = Annotated[str | None, Query(max_length=128, description="Variant or group name; "
                                          "all variants when omitted")]
HorizonSQ = Annotated[int | None, Query(ge=1, description="How far ahead to forecast, "
                                        "seconds (rounded up to whole steps, at most "
                                        f"{MAX_HORIZON_STEPS} steps; default: the configured "
                                        "horizon, at least one cold start ahead). Give this "
                                        "or horizon_steps.")]
HorizonStepsQ = Annotated[int | None, Query(ge=1, le=MAX_HORIZON_STEPS, description="How far "
                                            "ahead to forecast, in steps of step_s seconds "
                                            "(see the response's step_s). Give this or "
                                            "horizon_s.")]
QuantilesQ = Annotated[str | None, Query(max_length=200, description="Quantile levels in "
                                         "(0, 1), comma-separated, e.g. 0.5,0.9,0.99 "
                                         "(default: the configured levels)")]
LimitQ = Annotated[int, Query(ge=1, le=1000, description="Most recent decisions to return, "
                              "count")]

bearer = HTTPBearer(auto_error=False, scheme_name="bearerToken",
                    description="The API token from FORESCALE_API_TOKEN (api.token_env) or "
                    "api.token_file, as 'Authorization: Bearer <token>'")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def create_app(service: Service, token: str | None = None,
               png: PngRenderer | None = None) -> FastAPI:
    """Build the app around a running service; `token` protects mutating endpoints;
    `png` draws `/forecast.png` (default: a `PngRenderer` of the service)."""
    app = FastAPIOffline(title="forescale", version="0.1.0",
                         description="Predictive, variant-aware autoscaler for LLM inference. "
                         "Every error has the shape of ErrorResponse.",
                         swagger_ui_parameters={"validatorUrl": None})
    _install_error_handlers(app)
    api = service.config.api

    def require_token(creds: Creds) -> None:
        _check_token(token, creds, api.token_env)

    renderer = png or PngRenderer(service)
    for router in (_reads(service, renderer, require_token, api.protect_reads),
                   _writes(service, require_token), _probes(service)):
        app.include_router(router)
    return app


def _reads(service: Service, renderer: PngRenderer, require_token: Any,
           protect: bool) -> APIRouter:
    reads = [Depends(strict_query)]
    read_errors = dict(_ERRORS)
    if protect:  # api.protect_reads
        reads.append(Depends(require_token))
        read_errors.update({401: _AUTH_ERRORS[401]})
    r = APIRouter(dependencies=reads, responses=read_errors)

    @r.get("/forecast", response_model=ForecastResponse)
    def forecast(variant: VariantQ, horizon_s: HorizonSQ = None,
                 horizon_steps: HorizonStepsQ = None, quantiles: QuantilesQ = None,
                 ) -> ForecastResponse:
        """Quantile forecast of the load (requests/s) per step, with the model that made it."""
        qs = _parse_quantiles(quantiles)
        steps = _horizon(service, horizon_s, horizon_steps)
        return ForecastResponse(forecasts=[_forecast_out(service, n, steps, qs)
                                           for n in _known(service, variant)])

    @r.get("/forecast.png", response_class=Response,
           responses={200: {"content": {"image/png": {}},
                            "description": "Recent load, forecast band, replicas decided"}})
    async def forecast_png(variant: VariantQ) -> Response:
        """The forecast as a picture (a group shows its first member)."""
        png = await renderer.get(_known(service, variant)[0])
        return Response(content=png, media_type="image/png")

    @r.get("/variants", response_model=list[VariantOut])
    def variants() -> list[VariantOut]:
        """Each variant's config, capacity, replicas and state."""
        return [_variant_out(service, n) for n in service.variants]

    @r.get("/plan", response_model=PlanResponse)
    def plan() -> PlanResponse:
        """The current decision per variant, with reasons, cost and unserved demand."""
        return _plan(service)

    @r.get("/decisions", response_model=list[DecisionOut])
    def decisions(variant: OptVariantQ = None, limit: LimitQ = 50) -> list[DecisionOut]:
        """The decision log, oldest first."""
        return _decisions(service, variant, limit)

    return r


def _writes(service: Service, require_token: Any) -> APIRouter:
    w = APIRouter(dependencies=[Depends(strict_query), Depends(require_token)],
                  responses={**_ERRORS, 409: {"model": ErrorResponse, "description":
                                              "A retrain is already running"},
                             **_AUTH_ERRORS})

    @w.post("/retrain", response_model=RetrainResponse)
    def retrain(variant: OptVariantQ = None) -> RetrainResponse:
        """Retrain now (all variants, or one variant or group)."""
        return _retrain(service, variant)

    return w


def _probes(service: Service) -> APIRouter:
    probes = APIRouter(dependencies=[Depends(strict_query)])

    # Probes are `async` on purpose: they run on the event loop, not in the threadpool that
    # forecasts and pictures use, so a busy threadpool never delays them.
    @probes.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @probes.get("/readyz", response_model=Health,
                responses={503: {"model": Health, "description": "A variant the process "
                                 "started with has no model yet"}})
    async def readyz() -> Response:
        """Readiness: the variants the process started with have a model or a fallback
        (variants added while it runs warm up without affecting it; `detail` lists them)."""
        return _readyz(service)

    @probes.get("/metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                                 "description": "Prometheus text exposition"}})
    def metrics() -> Response:
        """forescale's own metrics, for Prometheus."""
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return probes


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


__all__ = ["ApiError", "ErrorResponse", "PngRenderer", "create_app", "load_token"]
