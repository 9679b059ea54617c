"""Config validation: good files load, bad ones are refused naming field, value and rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import ConfigError, load_config, parse_config

VARIANT: dict[str, Any] = {
    "name": "llama-8b",
    "deployment": {"namespace": "llm", "name": "llama-8b"},
    "profile": {"capacity_rps": 4.0, "cold_start_s": 180},
}


def with_variant(**changes: Any) -> dict[str, Any]:
    return {"variants": [{**VARIANT, **changes}]}


def test_minimal_config_gets_vllm_defaults() -> None:
    cfg = parse_config(with_variant())
    v = cfg.variants[0]
    assert v.signals.requests.replace("$selector", v.label_selector) == \
        'sum(rate(vllm:request_success_total{model_name="llama-8b"}[2m]))'
    assert "vllm:time_to_first_token_seconds_bucket" in v.signals.ttft_p95
    assert "vllm:num_requests_waiting" in v.signals.queue_depth
    assert "vllm:gpu_cache_usage_perc" in v.signals.kv_cache_usage
    assert cfg.actuation.value == "dry-run"
    assert cfg.schedules.retrain_interval_s == 3600
    assert cfg.schedules.reconcile_interval_s == 30


BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no variants", {"variants": []}, ["variants", "at least 1"]),
    ("unknown top-level field", {**with_variant(), "promethus": {}},
     ["promethus", "unknown field"]),
    ("bad actuation mode", {**with_variant(), "actuation": "yolo"},
     ["actuation", "'dry-run', 'scale' or 'metric'", "'yolo'"]),
    ("negative capacity", with_variant(profile={"capacity_rps": -1}),
     ["variants[0](llama-8b).profile.capacity_rps", "greater than 0", "-1"]),
    ("profile without capacity or curve", with_variant(profile={"cold_start_s": 10}),
     ["variants[0](llama-8b).profile", "capacity_rps", "curve"]),
    ("min above max", with_variant(min_replicas=5, max_replicas=2),
     ["variants[0](llama-8b)", "min_replicas (5) must not exceed max_replicas (2)"]),
    ("bad namespace", with_variant(deployment={"namespace": "LLM_prod", "name": "x"}),
     ["variants[0](llama-8b).deployment.namespace", "'LLM_prod'"]),
    ("typo in variant field", with_variant(max_replica=3),
     ["variants[0](llama-8b).max_replica", "unknown field"]),
    ("prometheus url without scheme", {**with_variant(), "prometheus": {"url": "prom:9090"}},
     ["prometheus.url", "'prom:9090'"]),
    ("quantile out of range", {**with_variant(), "forecast": {"quantiles": [0.5, 1.5]}},
     ["forecast", "quantile 1.5 must be strictly between 0 and 1"]),
    ("group names unknown variant",
     {**with_variant(), "groups": [{"name": "chat", "variants": ["llama-8b", "ghost"]}]},
     ["group 'chat' names unknown variants ['ghost']"]),
    ("duplicate variant names", {"variants": [VARIANT, VARIANT]},
     ["variant names must be unique", "llama-8b"]),
    ("reconcile interval zero", {**with_variant(), "schedules": {"reconcile_interval_s": 0}},
     ["schedules.reconcile_interval_s", "greater than or equal to 1", "0"]),
    ("negative gpu quota", {**with_variant(), "gpu_quotas": {"H100": -2}},
     ["gpu_quotas.H100 must be >= 0, got -2"]),
]


@pytest.mark.parametrize(("case", "raw", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_with_a_clear_message(case: str, raw: dict[str, Any],
                                                   expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml")
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["a"], "cfg.yaml")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("variants:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+, column \d+: not valid YAML"):
        load_config(p)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_demo_config_is_valid() -> None:
    from controller.runner import data_path

    cfg = load_config(data_path("demo.yaml"))
    assert [v.name for v in cfg.variants] == ["servegen-m-large", "servegen-m-mid",
                                              "servegen-m-small"]


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(with_variant(min_replicas=2)))
    assert load_config(p).variants[0].min_replicas == 2
