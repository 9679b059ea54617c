"""Config validation: good files load, bad ones are refused naming field, value and rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import (
    ConfigError,
    Signals,
    load_config,
    load_yaml_strict,
    parse_config,
    promql_balance_problem,
    read_yaml_file,
)

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
     ["gpu_quotas.H100: expected a whole number from 0 to 100000 (got -2)"]),
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


# --- a config must run as it reads (issue 14): through `forescale validate-config` ---

FORESCALE = Path(sys.executable).parent / "forescale"
REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "deploy" / "config.example.yaml", REPO / "deploy" / "kubernetes" / "config.yaml",
           REPO / "controller" / "data" / "demo.yaml"]

GOOD_YAML = """\
actuation: dry-run
variants:
  - name: a
    deployment: {namespace: llm, name: a}
    profile: {capacity_rps: 4, cold_start_s: 180}
"""


def validate(tmp_path: Path, text: str | bytes) -> tuple[int, str]:
    """Run `forescale validate-config` on `text` as a real process: exit code, stderr with
    the console's line wrapping undone."""
    p = tmp_path / "cfg.yaml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    proc = subprocess.run([str(FORESCALE), "validate-config", str(p)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout
    return proc.returncode, " ".join(proc.stderr.split())


def test_the_good_config_used_below_validates(tmp_path: Path) -> None:
    code, _ = validate(tmp_path, GOOD_YAML)
    assert code == 0


REFUSED: list[tuple[str, str, list[str]]] = [
    ("duplicate top-level key", GOOD_YAML + "actuation: scale\n",
     ["line 6, column 1", "duplicate key 'actuation' on line 1 and line 6"]),
    ("duplicate key in a variant",
     GOOD_YAML + "    max_replicas: 4\n    min_replicas: 1\n    max_replicas: 40\n",
     ["duplicate key 'max_replicas' on line 6 and line 8"]),
    ("boolean replica count", GOOD_YAML + "    min_replicas: true\n",
     ["variants[0](a).min_replicas: expected a whole number from 0 to 10000 (got True)"]),
    ("1e29 replicas", GOOD_YAML + "    max_replicas: 1e29\n",
     ["variants[0](a).max_replicas: expected a whole number from 1 to 10000 (got '1e29')"]),
    ("a hundred thousand replicas", GOOD_YAML + "    max_replicas: 100000\n",
     ["variants[0](a).max_replicas: expected a whole number from 1 to 10000 (got 100000)"]),
    ("fractional replicas", GOOD_YAML + "    max_replicas: 2.0\n",
     ["variants[0](a).max_replicas: expected a whole number from 1 to 10000 (got 2.0)"]),
    ("boolean in a profile", GOOD_YAML.replace("cold_start_s: 180", "cold_start_s: true"),
     ["variants[0](a).profile.cold_start_s: expected a number, not true/false (got True)"]),
    ("quoted number", GOOD_YAML.replace("capacity_rps: 4", 'capacity_rps: "4"'),
     ["variants[0](a).profile.capacity_rps: expected a number, not text", "(got '4')"]),
    ("number for a flag", "api: {protect_reads: 1}\n" + GOOD_YAML,
     ["api.protect_reads: expected true or false (got 1)"]),
    ("infinite timeout", "prometheus: {stale_after_s: .inf}\n" + GOOD_YAML,
     ["prometheus.stale_after_s: expected a finite number (got inf)"]),
    ("huge gpu quota", "gpu_quotas: {H100: 1000000}\n" + GOOD_YAML,
     ["gpu_quotas.H100: expected a whole number from 0 to 100000 (got 1000000)"]),
    ("missing api token file", "api: {token_file: /nonexistent/forescale-token}\n" + GOOD_YAML,
     ["api.token_file: no such file: /nonexistent/forescale-token (it must exist when the "
      "config is loaded)"]),
    ("missing bearer token file",
     "prometheus: {bearer_token_file: /nonexistent/bearer}\n" + GOOD_YAML,
     ["prometheus.bearer_token_file: no such file: /nonexistent/bearer"]),
    ("missing basic-auth password file",
     "prometheus: {basic_auth: {username: u, password_file: /nonexistent/pw}}\n" + GOOD_YAML,
     ["prometheus.basic_auth.password_file: no such file: /nonexistent/pw"]),
    ("missing CA file", "prometheus: {ca_file: /nonexistent/ca.pem}\n" + GOOD_YAML,
     ["prometheus.ca_file: no such file: /nonexistent/ca.pem"]),
    ("a directory as token file", "api: {token_file: /tmp}\n" + GOOD_YAML,
     ["api.token_file: not a regular file: /tmp"]),
    ("unclosed parenthesis in a signal",
     GOOD_YAML + "    signals: {queue_depth: 'sum(vllm:num_requests_waiting{$selector}'}\n",
     ["variants[0](a).signals.queue_depth: unbalanced PromQL: '(' at character 4 is never "
      "closed"]),
    ("crossed brackets in a signal",
     GOOD_YAML + "    signals: {requests: 'sum(rate(x{$selector}[2m)])'}\n",
     ["variants[0](a).signals.requests: unbalanced PromQL: ')' at character 25 does not "
      "close '[' at character 22"]),
    ("unclosed string in a selector", GOOD_YAML + "    selector: 'model_name=\"a'\n",
     ["variants[0](a).selector: unbalanced PromQL: string opened with \" at character 12 is "
      "never closed"]),
    ("binary file", "\x00\x01\x02".join(["actuation", "x"]),
     ["cfg.yaml: not a text file (a NUL byte at byte offset 9)"]),
]


@pytest.mark.parametrize(("case", "text", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_validate_config_refuses_a_config_that_would_run_other_than_it_reads(
        tmp_path: Path, case: str, text: str, expected: list[str]) -> None:
    code, err = validate(tmp_path, text)
    assert code == 2, f"{case}: exit {code}, {err}"
    for fragment in expected:
        assert fragment in err, f"{case}: {fragment!r} not in {err!r}"


def test_validate_config_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    code, err = validate(tmp_path, GOOD_YAML.encode() + b"# caf\xe9\n")
    assert code == 2
    assert f"{tmp_path / 'cfg.yaml'}: not UTF-8 text: byte 0xe9 at byte offset " \
           f"{len(GOOD_YAML) + 5} cannot be decoded" in err


def test_secret_files_that_exist_are_accepted(tmp_path: Path) -> None:
    for name in ("token", "bearer", "pw", "ca.pem"):
        (tmp_path / name).write_text("x\n")
    code, err = validate(tmp_path, f"api: {{token_file: {tmp_path / 'token'}}}\n"
                         f"prometheus:\n  bearer_token_file: {tmp_path / 'bearer'}\n"
                         f"  ca_file: {tmp_path / 'ca.pem'}\n"
                         f"  basic_auth: {{username: u, password_file: {tmp_path / 'pw'}}}\n"
                         + GOOD_YAML)
    assert code == 0, err


def test_promql_in_strings_and_comments_does_not_count_as_brackets(tmp_path: Path) -> None:
    code, err = validate(tmp_path, GOOD_YAML + "    signals:\n"
                         "      queue_depth: 'sum(x{$selector, path=~\"/v1/(chat|\\\"\"}) # ('\n"
                         "      running: 'sum(y{path=`a)b`})'\n")
    assert code == 0, err


@pytest.mark.parametrize(("query", "problem"), [
    ("sum(rate(x[2m]))", None),
    ('sum(x{a="}"})', None),
    ("sum(x{a='\\''})", None),
    ("sum(x) # )", None),
    ("sum(x))", "')' at character 7 closes nothing"),
    ("sum(x{a=\"b})", "string opened with \" at character 9 is never closed"),
    ("rate(x[2m)", "')' at character 10 does not close '[' at character 7"),
    ("sum(x", "'(' at character 4 is never closed"),
])
def test_promql_balance_respects_string_literals(query: str, problem: str | None) -> None:
    assert promql_balance_problem(query) == problem


def test_the_default_signals_are_balanced() -> None:
    for name, query in Signals().model_dump().items():
        assert promql_balance_problem(query) is None, name


def test_strict_yaml_keeps_safe_load_semantics_on_the_shipped_configs() -> None:
    for path in SHIPPED:
        text = path.read_text(encoding="utf-8")
        assert load_yaml_strict(text, str(path)) == yaml.safe_load(text), path


def test_strict_yaml_lets_a_merge_be_overridden_but_not_a_key_repeated() -> None:
    text = "base: &b {x: 1, y: 2}\nv:\n  <<: *b\n  y: 3\n"
    assert load_yaml_strict(text, "m.yaml") == {"base": {"x": 1, "y": 2},
                                                 "v": {"x": 1, "y": 3}}
    with pytest.raises(ConfigError, match=r"m\.yaml: line 2, column 13: not valid YAML: "
                                          r"duplicate key 'y' on line 2 and line 2 "
                                          r"\(columns 7 and 13\)"):
        load_yaml_strict("a:\n  b: {y: 1, y: 2}\n", "m.yaml")


def test_read_yaml_file_names_what_it_reads(tmp_path: Path) -> None:
    p = tmp_path / "profile.yaml"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"profile\.yaml: not UTF-8 text: byte 0xff at byte "
                                          r"offset 0 cannot be decoded; the profile must be"):
        read_yaml_file(p, "profile")


def test_a_variant_scales_any_workload_named_as_an_hpa_scale_target_ref() -> None:
    raw = with_variant(scale_target_ref={
        "namespace": "llm", "api_version": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet", "name": "llama-70b"})
    del raw["variants"][0]["deployment"]
    v = parse_config(raw).variants[0]
    assert (v.target.api_version, v.target.kind, v.target.name) == \
        ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "llama-70b")
    dep = parse_config(with_variant()).variants[0].target
    assert (dep.api_version, dep.kind) == ("apps/v1", "Deployment")


@pytest.mark.parametrize("change", ["both", "neither", "bad-kind"])
def test_a_variant_names_exactly_one_valid_target(change: str) -> None:
    raw = with_variant(scale_target_ref={"namespace": "llm", "kind": "StatefulSet",
                                         "name": "s"})
    if change == "neither":
        del raw["variants"][0]["deployment"]
        del raw["variants"][0]["scale_target_ref"]
    elif change == "bad-kind":
        del raw["variants"][0]["deployment"]
        raw["variants"][0]["scale_target_ref"]["kind"] = "statefulset"
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    text = str(err.value)
    if change == "bad-kind":
        assert "scale_target_ref.kind" in text and "'statefulset'" in text
    else:
        assert "exactly one of deployment" in text
