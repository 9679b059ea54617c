"""`forescale replay`: the harness that runs forescale's own `Service` on a load trace.

A subpackage so that it reads as what it is, a harness: `drive` runs the service on a virtual
clock against simulated fleets, `sim` is the fleet physics, `peers` the policies emulated for
comparison (HPAs, a KEDA-style queue scaler, the oracle), `harness` plans, scores and reports.
"""

from controller.replay.harness import (
    FORESCALE,
    POLICIES,
    REACTIVE,
    IsoSlo,
    PolicyOutcome,
    ReplayError,
    ReplayPlan,
    ReplayResult,
    check_output,
    config_for_series,
    plan,
    plot,
    render_table,
    replay_plan,
    run_peer,
    run_replay,
    write_report,
)

__all__ = ["FORESCALE", "POLICIES", "REACTIVE", "IsoSlo", "PolicyOutcome", "ReplayError",
           "ReplayPlan", "ReplayResult", "check_output", "config_for_series", "plan", "plot",
           "render_table", "replay_plan", "run_peer", "run_replay", "write_report"]
