"""PNG plots for people: history, the forecast band and the replicas line in one picture."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np

from controller.service import Service


def _dates(ts: np.ndarray) -> np.ndarray:
    """Epoch seconds as matplotlib date numbers (days since 1970, UTC)."""
    return np.asarray(ts, dtype=np.float64) / 86_400.0


def forecast_figure(service: Service, variant: str, history_s: float = 2 * 86_400) -> bytes:
    """History (last two days), forecast quantile band, and desired replicas over time."""
    fc = service.forecast(variant)
    rt = service.variants[variant]
    hist = service.source.history(variant, fc.issued_at - history_s, fc.issued_at, fc.step_s)
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    ax.plot(_dates(hist.timestamps()), hist.values, color="#444", lw=1, label="actual load")
    t = _dates(fc.timestamps())
    levels = sorted(fc.quantiles)
    if len(levels) >= 2:
        ax.fill_between(t, fc.quantiles[levels[0]], fc.quantiles[levels[-1]], alpha=0.25,
                        color="tab:blue", label=f"forecast p{levels[0]*100:g}-p{levels[-1]*100:g}")
    mid = 0.5 if 0.5 in fc.quantiles else levels[len(levels) // 2]
    ax.plot(t, fc.quantiles[mid], color="tab:blue", lw=1.5, label=f"forecast p{mid*100:g}")
    ax.set_ylabel("requests/s")
    trained = datetime.fromtimestamp(fc.trained_to or 0.0, UTC)
    ax.set_title(f"{variant}: {fc.model} (trained to {trained:%Y-%m-%d %H:%M} UTC)")
    recs = [r for r in rt.log if r.desired is not None]
    if recs:
        ax2 = ax.twinx()
        ax2.step(_dates(np.array([r.ts for r in recs])),
                 np.array([r.desired or 0 for r in recs], dtype=np.float64),
                 where="post", color="tab:red", lw=1.2, label="desired replicas")
        ax2.set_ylabel("replicas", color="tab:red")
        ax2.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    fig.autofmt_xdate()
    if service.attribution:
        fig.text(0.01, 0.01, service.attribution, fontsize=7, color="#777")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
