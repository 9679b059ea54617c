"""deploy/config.example.yaml: loads with the real loader, sets and documents every field."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from controller.config import ActuationMode, Config, load_config
from models.profile import parse_profiles

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "config.example.yaml"
KUSTOMIZE_COPY = ROOT / "deploy" / "kubernetes" / "config.yaml"
PROFILES = ROOT / "deploy" / "profiles"


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside an annotation such as `X`, `X | None`, `list[X]`, `tuple[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found += _submodels(arg)
    return found


def _unset_fields(model: type[BaseModel], nodes: list[Any], path: str, text: str) -> list[str]:
    """Fields of `model` (recursively) that no node of the example sets.

    A nullable sub-model left null (e.g. `basic_auth: null`) counts as documented when each of
    its fields is named in the file's comments. A field with an alias (the HPA's camelCase
    `scaleUp`, `stabilizationWindowSeconds`) is set under either spelling, as the loader takes.
    """
    dicts = [n for n in nodes if isinstance(n, dict)]
    missing: list[str] = []
    for name, field in model.model_fields.items():
        keys = {name} if field.alias is None else {name, field.alias}
        values = [d[k] for d in dicts for k in keys if k in d]
        if not values:
            missing.append(f"{path}.{name}")
            continue
        children: list[Any] = []
        for v in values:
            children += v if isinstance(v, list | tuple) else [v]
        for sub in _submodels(field.annotation):
            if all(c is None for c in children):
                missing += [f"{path}.{name}.{f} (not in comments)"
                            for f, info in sub.model_fields.items()
                            if f not in text and (info.alias is None or info.alias not in text)]
            else:
                missing += _unset_fields(sub, children, f"{path}.{name}", text)
    return missing


def test_example_config_loads_with_the_real_loader() -> None:
    cfg = load_config(EXAMPLE)
    assert [v.name for v in cfg.variants] == ["llama-3.1-70b", "llama-3.1-8b", "support-8b-ft"]
    assert {v.profile.gpu_type for v in cfg.variants} == {"H100", "L4"}
    assert set(cfg.gpu_quotas) == {"H100", "L4"}
    assert cfg.groups and set(cfg.groups[0].variants) <= {v.name for v in cfg.variants}
    assert cfg.leader_election.enabled, "the Kubernetes manifests run two replicas"
    modes = {cfg.mode_of(v) for v in cfg.variants}
    assert ActuationMode.METRIC in modes, "one variant shows the KEDA path"


def test_example_sets_every_schema_field_so_each_is_documented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert _unset_fields(Config, [yaml.safe_load(text)], "config", text) == []


def test_example_comments_every_top_level_section() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")):
            above = lines[i - 1].strip()
            assert above.startswith("#"), f"top-level key without a comment: {line!r}"


def test_example_default_signals_are_the_schema_defaults() -> None:
    """The example spells out the default PromQL; it must not drift from the code."""
    cfg = load_config(EXAMPLE)
    first = cfg.variants[0]
    assert first.signals == type(first.signals)()


# Variants whose profile is a copy of one in deploy/profiles/ (the config embeds profiles).
COPIED_PROFILES = {
    "llama-3.1-70b": ("example-chat.yaml", "llama-70b-fp16-h100"),
    "llama-3.1-8b": ("example-chat.yaml", "llama-8b-l4"),
}


def test_example_profiles_match_deploy_profiles() -> None:
    cfg = load_config(EXAMPLE)
    for variant, (file, name) in COPIED_PROFILES.items():
        raw = yaml.safe_load((PROFILES / file).read_text(encoding="utf-8"))
        expected = parse_profiles(raw, file)[name]
        assert cfg.variant(variant).profile == expected, (
            f"variant {variant} no longer matches deploy/profiles/{file}:{name}; copy it again")


def test_kustomize_config_is_a_copy_of_the_example() -> None:
    assert KUSTOMIZE_COPY.read_bytes() == EXAMPLE.read_bytes(), (
        "deploy/kubernetes/config.yaml differs from deploy/config.example.yaml: "
        "cp deploy/config.example.yaml deploy/kubernetes/config.yaml")
