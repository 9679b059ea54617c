"""Profiles: validation, YAML parsing, and the shipped example profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.capacity import capacity_at_slo
from models.profile import SLO, PerfPoint, ProfileError, VariantProfile, parse_profiles

PROFILES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "profiles"


def _point(c: float, x: float, ttft: float) -> dict[str, float]:
    return {"concurrency": c, "request_throughput": x, "ttft_p95_s": ttft}


def test_curve_is_sorted_by_concurrency() -> None:
    p = VariantProfile(curve=(PerfPoint(**_point(8, 2, 1)), PerfPoint(**_point(1, 0.5, 0.2))))
    assert [pt.concurrency for pt in p.curve] == [1, 8]


def test_duplicate_concurrency_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="two points at concurrency 4"):
        VariantProfile(curve=(PerfPoint(**_point(4, 1, 1)), PerfPoint(**_point(4, 1.1, 1))))


def test_profile_without_curve_or_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity_rps"):
        VariantProfile()


def test_half_a_request_mix_is_refused() -> None:
    with pytest.raises(ValueError, match="mean_output_tokens"):
        VariantProfile(capacity_rps=1.0, mean_input_tokens=100)


def test_controller_fields_keep_working() -> None:
    p = VariantProfile(capacity_rps=2.0, gpus_per_replica=4, gpu_hourly_usd=2.5)
    assert p.cost_per_replica_hour == 10.0
    assert (p.capacity_rps, p.cold_start_s, p.gpu_type, p.quality, p.base_ttft_s) == \
        (2.0, 300.0, "generic", 1.0, 0.5)


def test_parse_profiles_accepts_top_level_profiles_key_or_bare_mapping() -> None:
    spec = {"a": {"capacity_rps": 1.0}}
    assert parse_profiles({"profiles": spec})["a"].capacity_rps == 1.0
    assert parse_profiles(spec)["a"].capacity_rps == 1.0


def test_parse_profiles_names_every_bad_field() -> None:
    raw = {"profiles": {"good": {"capacity_rps": 1.0},
                        "bad": {"capacity_rps": -1, "gpu_count": 2},
                        "worse": "not a mapping"}}
    with pytest.raises(ProfileError) as err:
        parse_profiles(raw, "p.yaml")
    text = str(err.value)
    assert "p.yaml" in text and "bad.capacity_rps" in text and "bad.gpu_count" in text
    assert "worse: must be a mapping" in text


def test_parse_profiles_refuses_empty_document() -> None:
    with pytest.raises(ProfileError, match="non-empty"):
        parse_profiles({"profiles": {}})


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_load_state_provenance_and_meet_a_default_slo(path: Path) -> None:
    profiles = parse_profiles(yaml.safe_load(path.read_text()), str(path))
    assert profiles
    for name, profile in profiles.items():
        assert "illustrative" in profile.provenance, f"{name} must say it is not measured"
        assert capacity_at_slo(profile, SLO()).rps > 0
