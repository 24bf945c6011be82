"""Learning-rate schedule shapes."""

from __future__ import annotations

import pytest

from robustify.config import ScheduleConfig
from robustify.train.schedules import SCHEDULES, build_schedule

T = [i / 1000 for i in range(1001)]


@pytest.mark.parametrize("decay", ["linear", "cosine", "exponential"])
def test_slow_start_fast_decay_shape(decay):
    cfg = ScheduleConfig(name="slow-start-fast-decay", rise_fraction=0.7, start_factor=0.01, end_factor=0.0,
                         decay=decay)
    f = build_schedule(cfg)
    values = [f(t) for t in T]
    peak = max(range(len(T)), key=values.__getitem__)
    assert values[0] == pytest.approx(0.01)  # starts near zero
    assert T[peak] == pytest.approx(0.7, abs=0.002)  # peaks where the rise ends
    assert values[peak] == pytest.approx(1.0)
    rise, fall = values[: peak + 1], values[peak:]
    assert all(a <= b for a, b in zip(rise, rise[1:], strict=False))  # monotone slow rise
    assert all(a >= b for a, b in zip(fall, fall[1:], strict=False))  # monotone fall
    assert values[-1] <= 1e-3  # ends near zero
    # slow start, fast decay: the fall is steeper than the rise
    rise_slope = (values[peak] - values[0]) / T[peak]
    fall_slope = (values[peak] - values[-1]) / (1 - T[peak])
    assert fall_slope > 2 * rise_slope


def test_cyclic_triangle():
    f = build_schedule(ScheduleConfig(name="cyclic", peak_fraction=0.4))
    assert f(0) == 0 and f(0.4) == pytest.approx(1) and f(1) == pytest.approx(0)
    assert f(0.2) == pytest.approx(0.5) and f(0.7) == pytest.approx(0.5)


def test_cosine_and_piecewise_and_constant():
    cos = build_schedule(ScheduleConfig(name="cosine", warmup_fraction=0.1, end_factor=0.0))
    assert cos(0) == 0 and cos(0.1) == pytest.approx(1) and cos(1) == pytest.approx(0, abs=1e-9)
    pw = build_schedule(ScheduleConfig(name="piecewise", milestones=[0.5, 0.75], gamma=0.1))
    assert [pw(0.1), pw(0.6), pw(0.9)] == pytest.approx([1, 0.1, 0.01])
    assert build_schedule(ScheduleConfig(name="constant"))(0.3) == 1


def test_registry_names():
    assert {"slow-start-fast-decay", "cyclic", "cosine", "piecewise"} <= set(SCHEDULES)
