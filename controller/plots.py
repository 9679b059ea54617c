"""PNG plots for people: recent load, the forecast band, and the replicas decided, in one picture.

Drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure` on an Agg canvas), never
pyplot: pyplot keeps a process-wide registry of open figures that concurrent request threads
corrupt (figures left open, "more than 20 figures" warnings, memory that is never released).
A `Figure` made here is referenced by nothing else and freed when the function returns.

The time window is sized to the forecast (`history_window_s`): two days of history squeezed the
hour being forecast into the right edge, where the band could not be read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime

import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from controller.service import DecisionRecord, Service
from forecaster.base import Forecast

#: History shown before the forecast starts: this many forecast horizons...
HISTORY_HORIZONS = 4
#: ...but never less than this (seconds), so a short horizon still shows the day's trend.
MIN_HISTORY_S = 3 * 3600

_LOAD, _BAND, _CAP, _DESIRED, _CURRENT = "#222222", "tab:blue", "tab:green", "tab:red", "#888888"


def history_window_s(fc: Forecast) -> float:
    """Seconds of history to draw before the forecast's issue time."""
    return float(max(HISTORY_HORIZONS * fc.horizon * fc.step_s, MIN_HISTORY_S))


def _dates(ts: Sequence[float] | np.ndarray) -> np.ndarray:
    """Epoch seconds as matplotlib date numbers (days since 1970, UTC)."""
    return np.asarray(ts, dtype=np.float64) / 86_400.0


def _pct(q: float) -> str:
    return f"p{q * 100:g}"


def _load_panel(ax: Axes, fc: Forecast, hist_t: np.ndarray, hist_y: np.ndarray,
                capacity: tuple[np.ndarray, np.ndarray] | None, provisioned: float) -> None:
    """Actual load, the forecast median, its band(s), the provisioned quantile, and the
    capacity of the desired replicas: where the load line meets the capacity line is where
    requests would wait."""
    # Both series are per-window rates stamped at the window's start: drawn as steps that
    # hold across their window, the history ends exactly where the forecast begins.
    step = fc.step_s
    t = _dates(np.concatenate([fc.timestamps(), [fc.issued_at + fc.horizon * step]]))
    levels = sorted(fc.quantiles)

    def path(q: float) -> np.ndarray:
        values = np.asarray(fc.quantiles[q], dtype=np.float64)
        return np.concatenate([values, values[-1:]])

    if len(hist_t):
        ax.step(_dates(np.concatenate([hist_t, [hist_t[-1] + step]])),
                np.concatenate([hist_y, hist_y[-1:]]), where="post", color=_LOAD, lw=1.4,
                label=f"actual load ({step / 60:g}-min mean)")
    if len(levels) >= 2:
        lo, hi = levels[0], levels[-1]
        ax.fill_between(t, path(lo), path(hi), step="post", color=_BAND, alpha=0.18, lw=0,
                        label=f"forecast {_pct(lo)}–{_pct(hi)}")
    inner = [q for q in levels if 0.1 <= q <= 0.9]
    if len(inner) >= 2 and (inner[0], inner[-1]) != (levels[0], levels[-1]):
        ax.fill_between(t, path(inner[0]), path(inner[-1]), step="post", color=_BAND,
                        alpha=0.25, lw=0,
                        label=f"forecast {_pct(inner[0])}–{_pct(inner[-1])}")
    mid = 0.5 if 0.5 in fc.quantiles else levels[len(levels) // 2]
    ax.step(t, path(mid), where="post", color=_BAND, lw=1.8,
            label=f"forecast {_pct(mid)} (median)")
    if provisioned in fc.quantiles and provisioned != mid:
        ax.step(t, path(provisioned), where="post", color=_BAND, lw=1.2, ls="--",
                label=f"forecast {_pct(provisioned)} (provisioned for)")
    if capacity is not None:
        ax.step(_dates(capacity[0]), capacity[1], where="post", color=_CAP, lw=1.2,
                label="capacity of desired replicas at the SLO")
    ax.axvline(_dates([fc.issued_at])[0], color="#555555", lw=0.8, ls=":")
    ax.annotate("now", (_dates([fc.issued_at])[0], 1.0), xycoords=("data", "axes fraction"),
                xytext=(3, -12), textcoords="offset points", fontsize=8, color="#555555")
    ax.set_ylabel("requests/s")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.06)  # room above the band's top
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, ncol=2, framealpha=0.9)


def _replicas_panel(ax: Axes, recs: list[DecisionRecord], start: float, end: float,
                    min_r: int, max_r: int) -> None:
    """Desired and current replicas as steps (each holds until the next decision)."""
    if recs:
        ts = _dates([r.ts for r in recs] + [end])
        desired = [r.desired or 0 for r in recs]
        ax.step(ts, desired + desired[-1:], where="post", color=_DESIRED, lw=1.6,
                label="desired replicas (decided)")
        cur = [r.current for r in recs]
        if any(c is not None for c in cur):
            vals = [np.nan if c is None else float(c) for c in cur]
            ax.step(ts, vals + vals[-1:], where="post", color=_CURRENT, lw=1.2, ls="--",
                    label="current replicas")
        top = max(max(desired), max((c for c in cur if c is not None), default=0))
    else:
        ax.text(0.5, 0.5, "no decisions in this window yet", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="#777777")
        top = min_r
    ax.axhline(min_r, color="#bbbbbb", lw=0.8, ls=":", label=f"min replicas ({min_r})")
    if max_r <= 1.5 * max(top, 1):
        ax.axhline(max_r, color="#bbbbbb", lw=0.8, ls="-.", label=f"max replicas ({max_r})")
    ax.set_ylabel("replicas")
    ax.set_ylim(0, max(top, min_r) * 1.25 + 1)
    ax.set_xlim(_dates([start])[0], _dates([end])[0])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=4, framealpha=0.9)


def forecast_png(service: Service, variant: str) -> bytes:
    """The picture for `/forecast.png`, as PNG bytes."""
    buf = io.BytesIO()
    forecast_figure(service, variant).savefig(buf, format="png")
    return buf.getvalue()


def forecast_figure(service: Service, variant: str) -> Figure:
    """Load and forecast above, replicas below, on one time axis."""
    fc = service.forecast(variant)
    rt = service.variants[variant]
    v = rt.config
    past = history_window_s(fc)
    start = fc.issued_at - past
    end = float(fc.timestamps()[-1]) + fc.step_s
    hist = service.source.history(variant, start, fc.issued_at, fc.step_s)
    recs = [r for r in rt.log if r.desired is not None and start <= r.ts <= end]
    per_replica = service.capacity(rt).rps
    capacity = None
    if recs and math.isfinite(per_replica) and per_replica > 0:
        capacity = (np.array([r.ts for r in recs] + [end]),
                    np.array([(r.desired or 0) * per_replica for r in recs]
                             + [(recs[-1].desired or 0) * per_replica]))

    # Fixed margins: constrained layout measured every text twice and took half the time.
    fig = Figure(figsize=(11, 6.2), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.07, right=0.97, top=0.95, bottom=0.1, hspace=0.06)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
    _load_panel(top, fc, hist.timestamps(), np.asarray(hist.values, dtype=np.float64),
                capacity, service.config.forecast.provisioning_quantile)
    _replicas_panel(bottom, recs, start, end, v.min_replicas, v.max_replicas)
    bottom.xaxis_date()
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
    issued = datetime.fromtimestamp(fc.issued_at, UTC)
    bottom.set_xlabel(f"time (UTC), {issued:%Y-%m-%d}; last {past / 3600:g} h and the next "
                      f"{fc.horizon * fc.step_s / 60:g} min, {fc.step_s // 60:g}-minute steps")
    trained = datetime.fromtimestamp(fc.trained_to or 0.0, UTC)
    top.set_title(f"{variant}: forecast by {fc.model} (trained to {trained:%m-%d %H:%M} UTC)",
                  fontsize=11, loc="left")
    if service.attribution:
        fig.text(0.995, 0.005, service.attribution, fontsize=7, color="#777777", ha="right")
    return fig


__all__ = ["forecast_figure", "forecast_png", "history_window_s"]
