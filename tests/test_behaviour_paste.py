"""A pasted HPA `behavior` block behaves in forescale as it did in the HPA (issue 12).

A user replacing an HPA pastes its `behavior` (as `kubectl get hpa -o yaml` prints it) into a
variant's `behaviour`. The same recommendations must then give the same replicas through
forescale's normalise stage (`models.decide.normalise` + `next_state`, the state carried as
`models.policy` commits decisions, with the `ScalingPolicy` the `Service` builds from the
config) as through the emulated HPA (`models.hpa.hpa_step` with `parse_hpa_behavior` of the
block, the port of the HPA's `reconcileAutoscaler` held against upstream's tests).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from controller.actuators import DryRunTarget
from controller.config import Config, parse_config
from controller.service import Service
from models.behaviour import Reason as HPAReasonT
from models.behaviour import ReasonCode as HPAReason
from models.behaviour import parse_hpa_behavior
from models.decide import (
    Decision,
    ReasonCode,
    Recommendation,
    ScalingPolicy,
    ScalingState,
    next_state,
    normalise,
)
from models.hpa import HPAState, hpa_step

FORESCALE = Path(sys.executable).parent / "forescale"

#: An HPA's `behavior` as `kubectl get hpa -o yaml` prints it: fast up (the larger of +100% or
#: +4 pods per 15 s), cautious down (the smaller of -1 pod or -10% per 60 s, after 120 s).
PASTED = """\
scaleUp:
  stabilizationWindowSeconds: 0
  selectPolicy: Max
  policies:
  - type: Percent
    value: 100
    periodSeconds: 15
  - type: Pods
    value: 4
    periodSeconds: 15
scaleDown:
  stabilizationWindowSeconds: 120
  selectPolicy: Min
  policies:
  - type: Pods
    value: 1
    periodSeconds: 60
  - type: Percent
    value: 10
    periodSeconds: 60
"""

MIN_REPLICAS, MAX_REPLICAS = 2, 30
TICK_S = 15.0


def config_text(behaviour: str) -> str:
    """A forescale config whose one variant carries `behaviour` (indented under the key)."""
    block = "\n".join("      " + line for line in behaviour.splitlines())
    return (
        "actuation: dry-run\n"
        "variants:\n"
        "  - name: llm\n"
        "    deployment: {namespace: llm, name: llm}\n"
        "    profile: {capacity_rps: 4, cold_start_s: 180}\n"
        f"    min_replicas: {MIN_REPLICAS}\n"
        f"    max_replicas: {MAX_REPLICAS}\n"
        "    behaviour:\n"
        f"{block}\n"
    )


class _NoSource:
    """The service is only built here, never run: no metric is ever read."""

    def history(self, *args: object) -> None:
        raise AssertionError("not read")

    def live(self, *args: object) -> None:
        raise AssertionError("not read")


def service_policy(config: Config) -> ScalingPolicy:
    """The ScalingPolicy forescale's `Service` runs for the variant (`policy_settings`)."""
    svc = Service(config, _NoSource(), {"llm": DryRunTarget({"llm": MIN_REPLICAS})})  # type: ignore[arg-type]
    return svc.variants["llm"].policy.settings.scaling


def recommendations(seed: int, ticks: int = 300) -> list[int]:
    """Seeded recommendations: a drifting level with noise, bursts up (2-5x for 1-6 ticks, now
    and then past the maximum), sudden drops (now and then below the minimum), and a quiet
    spell (ticks 100-219, a fifth of the level) that brings the fleet down to its minimum,
    where +4 pods allows more than +100%."""
    rng = np.random.default_rng(seed)
    level, burst, mult = 5.0, 0, 1.0
    out = []
    for i in range(ticks):
        level = float(np.clip(level * math.exp(rng.normal(0, 0.15)), 2, 12))
        if burst == 0 and rng.random() < 0.08:
            burst, mult = int(rng.integers(1, 7)), float(rng.uniform(2, 5))
        x = level * (mult if burst else 1.0) * (0.2 if 100 <= i < 220 else 1.0)
        burst = max(0, burst - 1)
        if rng.random() < 0.05:
            x = level * rng.uniform(0.0, 0.3)
        out.append(max(0, round(x + rng.normal(0, 1))))
    return out


def hpa_changed_codes(decision_reasons: tuple[HPAReasonT, ...], proposal: int,
                      stabilised: int, replicas: int) -> set[str]:
    """The HPA's reasons for the steps that changed the number, as forescale's trail keeps them."""
    stab, limit = decision_reasons
    codes = set()
    if stabilised != proposal:
        codes.add(str(stab.code))
    if replicas != stabilised:
        codes.add(str(limit.code))
    return codes


def test_pasted_block_validates_and_is_the_behaviour_the_service_runs() -> None:
    config = parse_config(yaml.safe_load(config_text(PASTED)), "pasted")
    policy = service_policy(config)
    assert policy.behaviour == parse_hpa_behavior(yaml.safe_load(PASTED))
    assert (policy.min_replicas, policy.max_replicas) == (MIN_REPLICAS, MAX_REPLICAS)


def test_pasted_block_gives_the_hpas_replicas_at_every_tick() -> None:
    """Six seeded sequences of 300 ticks every 15 s; the clamps each part of the block sets are
    all exercised over them (checked at the end, so the sequences cannot go stale quietly)."""
    behaviour = parse_hpa_behavior(yaml.safe_load(PASTED))
    policy = service_policy(parse_config(yaml.safe_load(config_text(PASTED)), "pasted"))
    clamps: Counter[str] = Counter()
    limits: set[str] = set()
    for seed in range(1, 7):
        hpa_state, hpa_current = HPAState(), 4
        fs_state = ScalingState(current_replicas=4)
        for i, rec in enumerate(recommendations(seed)):
            now = 1_000.0 + i * TICK_S
            hpa, hpa_state = hpa_step(hpa_state, now, hpa_current, [rec], MIN_REPLICAS,
                                      MAX_REPLICAS, behaviour)
            current = fs_state.current_replicas
            n, reasons = normalise(
                Recommendation.of(rec, ReasonCode.REACTIVE, f"replayed recommendation {rec}",
                                  current), policy, fs_state, now)
            decision = Decision(n, current, math.nan, 1.0, reasons, recommendation=rec)
            fs_state = next_state(fs_state, decision, now, policy)

            assert n == hpa.replicas, (seed, i, rec, hpa.reasons, reasons)
            assert hpa.normalised is not None
            codes = hpa_changed_codes(hpa.reasons, rec, hpa.normalised.stabilised, hpa.replicas)
            # the same clamps bit, for the same reasons
            assert {r.code for r in reasons} - {ReasonCode.REACTIVE.value} == codes, (seed, i)
            clamps.update(codes)
            limits.update(r.message.split(" allows ")[0] for r in hpa.reasons
                          if r.code in (HPAReason.SCALE_UP_LIMIT, HPAReason.SCALE_DOWN_LIMIT)
                          and str(r.code) in codes)
            hpa_current = hpa.replicas
    for code in HPAReason.SCALE_UP_LIMIT, HPAReason.SCALE_DOWN_LIMIT, \
            HPAReason.SCALE_DOWN_STABILISED, HPAReason.TOO_MANY_REPLICAS, \
            HPAReason.TOO_FEW_REPLICAS:
        assert clamps[str(code)] > 0, (code, clamps)
    # selectPolicy Max up: +100% won from 4 or more, +4 pods from fewer
    assert any(m.startswith("Percent 100%/15s from ") for m in limits), limits
    assert any(m.startswith("Pods 4 pods/15s from ") for m in limits), limits
    # selectPolicy Min down: -1 pod won where -10% would have removed more (from 20 or more)
    starts = [int(m.split(" from ")[1].split()[0]) for m in limits
              if m.startswith("Pods 1 pods/60s from ")]
    assert starts and max(starts) >= 20, limits


def test_invalid_pasted_block_is_refused_naming_field_and_value(tmp_path: Path) -> None:
    bad = PASTED.replace("    periodSeconds: 60\n  - type: Percent",
                         "    periodSeconds: 3600\n  - type: Percent")
    bad = bad.replace("selectPolicy: Min", "selectPolicy: Minimum")
    p = tmp_path / "cfg.yaml"
    p.write_text(config_text(bad), encoding="utf-8")
    proc = subprocess.run([str(FORESCALE), "validate-config", str(p)], capture_output=True,
                          text=True, timeout=120, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "behaviour.scaleDown.policies[0].periodSeconds" in err, err
    assert "3600" in err, err
    assert "behaviour.scaleDown.selectPolicy" in err, err
    assert "'Minimum'" in err, err

    p.write_text(config_text(PASTED), encoding="utf-8")
    ok = subprocess.run([str(FORESCALE), "validate-config", str(p)], capture_output=True,
                        text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr


def _drive_both(start: int, recs: list[int]) -> tuple[list[int], list[int]]:
    """Replicas per tick from the emulated HPA and from forescale's normalise stage, both
    starting from `start` replicas (as observed: someone scaled the workload by hand)."""
    behaviour = parse_hpa_behavior(yaml.safe_load(PASTED))
    policy = service_policy(parse_config(yaml.safe_load(config_text(PASTED)), "pasted"))
    hpa_state, hpa_current, fs_state = HPAState(), start, ScalingState(current_replicas=start)
    hpa_out, fs_out = [], []
    for i, rec in enumerate(recs):
        now = 1_000.0 + i * TICK_S
        hpa, hpa_state = hpa_step(hpa_state, now, hpa_current, [rec], MIN_REPLICAS,
                                  MAX_REPLICAS, behaviour)
        hpa_current = hpa.replicas
        current = fs_state.current_replicas
        n, reasons = normalise(Recommendation.of(rec, ReasonCode.REACTIVE, "replayed", current),
                               policy, fs_state, now)
        fs_state = next_state(fs_state, Decision(n, current, math.nan, 1.0, reasons,
                                                 recommendation=rec), now, policy)
        hpa_out.append(hpa.replicas)
        fs_out.append(n)
    return hpa_out, fs_out


