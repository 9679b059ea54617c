"""Cost accounting."""

from __future__ import annotations

import pytest

from models.cost import cost_per_1k_tokens, fleet_cost, gpu_hours


def test_fleet_cost_counts_gpus_and_price() -> None:
    c = fleet_cost(3, 4, 2.0, tokens_per_s=1000.0)
    assert (c.gpu_hours_per_hour, c.cost_per_hour) == (12.0, 24.0)
    assert c.cost_per_1k_tokens == pytest.approx(24.0 / 3600.0)


@pytest.mark.parametrize("tokens", [None, 0.0, -1.0, float("nan")])
def test_cost_per_1k_tokens_is_undefined_when_nothing_is_served(tokens: float | None) -> None:
    assert cost_per_1k_tokens(10.0, tokens) is None


def test_gpu_hours_integrates_replicas_over_steps() -> None:
    assert gpu_hours([1, 2, 3], step_s=600, gpus_per_replica=2) == pytest.approx(2.0)


def test_fleet_cost_refuses_negative_replicas() -> None:
    with pytest.raises(ValueError, match="replicas >= 0"):
        fleet_cost(-1, 1, 1.0)
