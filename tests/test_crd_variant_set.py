"""The Service's variant set changing while it runs: what the VariantAutoscaler controller and
a reloaded config file rely on (fixed clock, in-memory load, dry-run actuators)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.actuators import DryRunTarget
from controller.config import ConfigError, VariantConfig, parse_config
from controller.metrics import ForescaleMetrics
from controller.service import Service
from forecaster.base import History
from tests.test_service import T0, ArraySource, daily_load, service_config

NOW = T0 + 3 * 86_400


def variant(name: str, **changes: Any) -> VariantConfig:
    return VariantConfig.model_validate({
        "name": name, "deployment": {"namespace": "llm", "name": name},
        "profile": {"capacity_rps": 10.0, "cold_start_s": 120}, "max_replicas": 40,
        **changes})


def make() -> tuple[Service, DryRunTarget]:
    dry = DryRunTarget({"v": 5})
    svc = Service(service_config(), ArraySource(daily_load()), {"v": dry},
                  clock=lambda: NOW, metrics=ForescaleMetrics())

    def factory(v: VariantConfig) -> DryRunTarget:
        dry.replicas.setdefault(v.name, 1)
        return dry

    svc.target_factory = factory
    return svc, dry


def test_an_added_variant_is_trained_and_decided_for_and_a_second_name_is_refused() -> None:
    svc, _ = make()
    assert not svc.ready() and svc.warming_up() == {"v": "no model yet"}
    svc.add_variant(variant("w"), "VariantAutoscaler llm/w")
    svc.retrain(["v"])
    # The process is ready once what it started with is served; the newcomer warms up on
    # its own, said per variant, not by taking the whole API out of its Service.
    assert svc.ready() and svc.metrics.registry.get_sample_value("forescale_ready") == 1
    assert list(svc.warming_up()) == ["w"]
    assert "added while running, by VariantAutoscaler llm/w" in svc.warming_up()["w"]
    svc.retrain(["w"])
    assert svc.ready() and svc.variants["w"].model is not None and not svc.warming_up()
    (_, rec) = svc.reconcile()
    assert rec.variant == "w" and rec.desired is not None and rec.desired > 1
    with pytest.raises(ConfigError, match="'w' is already defined by VariantAutoscaler "
                                          "llm/w; refusing the one from config"):
        svc.add_variant(variant("w"))


def test_a_limit_change_keeps_the_model_and_a_query_change_retrains() -> None:
    svc, _ = make()
    svc.add_variant(variant("w"), "cr")
    svc.retrain()
    model = svc.variants["w"].model
    assert not svc.update_variant(variant("w", max_replicas=2), "cr")
    assert svc.variants["w"].model is model
    assert svc.reconcile()[1].desired == 2  # the next decision obeys the new max
    assert svc.update_variant(variant("w", max_replicas=2, selector='model_name="x"'), "cr")
    assert svc.variants["w"].model is None and svc.variants["v"].model is not None
    assert svc.ready() and list(svc.warming_up()) == ["w"]
    with pytest.raises(ConfigError, match="not managed for config"):
        svc.update_variant(variant("w"))


class EditingSource(ArraySource):
    """Changes the variant's query while its history is being read for a retrain."""

    svc: Service

    def history(self, name: str, start: float, end: float, step_s: int) -> History:
        if name == "w" and self.svc.variants["w"].config.selector == "":
            self.svc.update_variant(variant("w", selector='model_name="new"'), "cr")
        return super().history(name, start, end, step_s)


def test_a_model_trained_under_a_spec_changed_meanwhile_is_discarded() -> None:
    source = EditingSource(daily_load())
    svc = Service(service_config(), source, {"v": DryRunTarget({"v": 5})},
                  clock=lambda: NOW, metrics=ForescaleMetrics())
    source.svc = svc
    svc.add_variant(variant("w"), "cr", target=DryRunTarget({"w": 1}))
    svc.retrain(["w"])
    assert svc.variants["w"].model is None  # trained on the old query: not installed
    svc.retrain(["w"])
    assert svc.variants["w"].model is not None


def test_a_removed_variant_is_never_scaled_again_and_its_series_are_gone() -> None:
    from prometheus_client import generate_latest

    svc, dry = make()
    svc.add_variant(variant("w"), "cr")
    svc.retrain()
    svc.reconcile()
    assert 'variant="w"' in generate_latest(svc.metrics.registry).decode()
    assert not svc.remove_variant("w", "config")  # not the config's to remove
    assert svc.remove_variant("w", "cr")
    applied = len(dry.applied)
    records = svc.reconcile()
    assert [r.variant for r in records] == ["v"]
    assert all(a[0] != "w" for a in dry.applied[applied:])
    assert 'variant="w"' not in generate_latest(svc.metrics.registry).decode()
    assert svc.ready()


def test_a_reloaded_file_adds_and_removes_variants_and_keeps_other_models() -> None:
    svc, _ = make()
    svc.retrain()
    model = svc.variants["v"].model
    raw = service_config().model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["variants"].append(variant("w").model_dump(mode="json", by_alias=True,
                                                   exclude_none=True))
    assert svc.apply_config(parse_config(raw))  # the new variant needs training
    assert set(svc.variants) == {"v", "w"} and svc.variants["v"].model is model
    raw["variants"] = raw["variants"][1:]
    svc.apply_config(parse_config(raw))
    assert set(svc.variants) == {"w"}


def test_without_a_target_factory_the_variant_set_is_fixed() -> None:
    svc = Service(service_config(), ArraySource(np.ones(10)), {"v": DryRunTarget({"v": 5})},
                  clock=lambda: NOW, metrics=ForescaleMetrics())
    with pytest.raises(ConfigError, match="restart forescale"):
        svc.add_variant(variant("w"))
    raw = service_config().model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["variants"].append(variant("w").model_dump(mode="json", by_alias=True,
                                                   exclude_none=True))
    with pytest.raises(ConfigError, match="restart forescale"):
        svc.apply_config(parse_config(raw))
    assert set(svc.variants) == {"v"}


def test_a_file_variant_named_like_a_resource_is_refused_on_reload() -> None:
    svc, _ = make()
    svc.add_variant(variant("w"), "VariantAutoscaler llm/w")
    raw = service_config().model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["variants"].append(variant("w").model_dump(mode="json", by_alias=True,
                                                   exclude_none=True))
    with pytest.raises(ConfigError, match="'w' by VariantAutoscaler llm/w"):
        svc.apply_config(parse_config(raw))
    assert svc.variants["w"].origin == "VariantAutoscaler llm/w"


def test_readyz_stays_200_while_a_variant_added_at_runtime_trains() -> None:
    """Both forescale replicas see a new VariantAutoscaler at once: a readiness that waited
    for its model would take the API out of its Service on every replica until it trained."""
    import httpx

    from controller.api import create_app
    from tests.support.http import serve_app

    svc, _ = make()
    with serve_app(create_app(svc, token=None)) as url:
        r = httpx.get(f"{url}/readyz")
        assert (r.status_code, r.json()["detail"]) == (503, {"v": "no model yet"})
        svc.retrain()
        svc.add_variant(variant("w"), "VariantAutoscaler llm/w")
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert list(r.json()["detail"]) == ["w"]
        (w,) = [x for x in httpx.get(f"{url}/variants").json() if x["name"] == "w"]
        assert w["state"] == "warming-up"
        svc.retrain(["w"])
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "detail": {}}


def test_stored_models_are_kept_per_variant_inputs(tmp_path: Path) -> None:
    """A model is stored under its own variant's inputs: another process serves each variant
    the model it had, and a changed query refuses that variant's stored model only."""
    raw = service_config().model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["forecast"]["model_dir"] = str(tmp_path)

    def start() -> Service:
        svc = Service(parse_config(raw), ArraySource(daily_load()),
                      {"v": DryRunTarget({"v": 5})}, clock=lambda: NOW,
                      metrics=ForescaleMetrics())
        svc.target_factory = lambda v: DryRunTarget({v.name: 1})
        return svc

    first = start()
    assert first.add_variant(variant("w"), "cr")  # nothing stored yet: to train
    first.retrain()
    names = {n: rt.model.model_name for n, rt in first.variants.items() if rt.model}
    assert set(names) == {"v", "w"}
    second = start()
    assert second.variants["v"].model is not None and second.ready()
    assert not second.add_variant(variant("w"), "cr")  # served by its stored model
    assert second.variants["w"].model.model_name == names["w"]  # type: ignore[union-attr]
    third = start()
    assert third.add_variant(variant("w", selector='model_name="x"'), "cr")
    assert third.variants["w"].model is None and third.variants["v"].model is not None
    # An edit back to the inputs the stored model was trained on serves it again.
    assert not third.update_variant(variant("w"), "cr")
    assert third.variants["w"].model is not None


def l4(name: str, gpus: int, quality: float) -> VariantConfig:
    return variant(name, profile={"capacity_rps": 10.0, "cold_start_s": 120, "gpu_type": "L4",
                                  "gpus_per_replica": gpus, "quality": quality})


def test_a_group_set_while_running_is_planned_under_its_quota_until_removed() -> None:
    from controller.config import VariantGroup

    clock = {"now": NOW}
    dry = DryRunTarget({"v": 5})
    svc = Service(service_config(), ArraySource(daily_load()), {"v": dry},
                  clock=lambda: clock["now"], metrics=ForescaleMetrics())
    svc.target_factory = lambda v: dry
    for v in (l4("big", 2, 0.9), l4("small", 1, 0.7)):
        dry.replicas[v.name] = 1
        svc.add_variant(v, "cr")
    svc.retrain()
    chat = VariantGroup(name="chat", variants=["big", "small"], quality_floor=0.8,
                        gpu_quotas={"L4": 8})
    svc.set_group(chat, "cr")
    assert svc.group_of("small") == chat
    together = {r.variant: r for r in svc.reconcile()}
    assert together["big"].desired * 2 + together["small"].desired <= 8  # type: ignore[operator]
    (why,) = [r["message"] for r in together["small"].reasons if r["code"] == "AtGpuQuota"]
    assert "group chat's L4 quota 8 GPUs, 6 used by its other members" in why
    assert svc.allocation is not None and set(svc.allocation.routing) == {"chat"}
    assert svc.allocation.routing["chat"].get("small", 0.0) == 0.0  # under the floor
    with pytest.raises(ConfigError, match="'chat' is already defined by cr; refusing"):
        svc.set_group(chat, "other")
    with pytest.raises(ConfigError, match="'small' is already in group 'chat'"):
        svc.set_group(VariantGroup(name="g2", variants=["small", "v"]), "cr")
    with pytest.raises(ConfigError, match=r"members \['gone'\] are not managed"):
        svc.set_group(VariantGroup(name="g3", variants=["v", "gone"]), "cr")
    assert not svc.remove_group("chat", "other")
    assert svc.remove_group("chat", "cr")
    clock["now"] += 120  # past the scale-up rate limit's period
    alone = {r.variant: r for r in svc.reconcile()}
    assert svc.allocation is None and svc.group_of("small") is None
    assert alone["big"].desired * 2 + alone["small"].desired > 8  # type: ignore[operator]
    assert all("AtGpuQuota" not in {r["code"] for r in rec.reasons} for rec in alone.values())


def test_a_file_group_named_like_a_running_one_is_refused_either_way() -> None:
    from controller.config import VariantGroup

    svc, _ = make()
    svc.add_variant(variant("w"), "cr")
    svc.set_group(VariantGroup(name="chat", variants=["v", "w"]), "cr")
    raw = service_config().model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["variants"].append(variant("x").model_dump(mode="json", by_alias=True,
                                                   exclude_none=True))
    raw["groups"] = [{"name": "chat", "variants": ["v", "x"]}]
    with pytest.raises(ConfigError, match="'chat' by cr"):
        svc.apply_config(parse_config(raw))
    assert [g.name for g in svc.groups] == ["chat"] and "x" not in svc.variants
