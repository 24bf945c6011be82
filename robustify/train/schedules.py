"""Learning-rate schedules, as a registry of functions of training progress.

A schedule maps progress ``t`` in [0, 1] (optimizer steps done / total optimizer steps) to a factor of the peak
learning rate. The trainer sets the learning rate before every optimizer step, so schedules are stepped per
iteration and do not depend on epoch length, world size or gradient accumulation.

``slow-start-fast-decay`` is the schedule of Jeddi, Shafiee and Wong (2020) for adversarial *fine-tuning*: a long,
gentle linear rise from a tiny learning rate, then a short, steep fall to near zero. The paper does not fix one
set of constants for every network; robustify's defaults (``rise_fraction: 0.7``, ``start_factor: 0.01``,
``end_factor: 0.0``, ``decay: linear``) are ours, chosen so that 70% of a short run is spent warming up from
1% of the peak and the last 30% falls to zero. All of them are recipe keys.

Must not: hold state: a schedule is a function of training progress.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .. import sections
from ..config import FinetuneConfig, ScheduleConfig, flatten
from ..errors import ConfigError

Schedule = Callable[[float], float]
SCHEDULES: dict[str, Callable[[ScheduleConfig], Schedule]] = {}


def register_schedule(name: str):
    def wrap(fn: Callable[[ScheduleConfig], Schedule]) -> Callable[[ScheduleConfig], Schedule]:
        SCHEDULES[name] = fn
        return fn

    return wrap


def _decay(shape: str, u: float, end: float) -> float:
    """Fall from 1 to ``end`` as u goes 0 → 1."""
    if shape == "linear":
        return 1.0 - (1.0 - end) * u
    if shape == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * u))
    # exponential: geometric fall to max(end, 1e-3), a "fast decay" that is steep at the start of the fall
    floor = max(end, 1e-3)
    return floor ** u


@register_schedule("slow-start-fast-decay")
def slow_start_fast_decay(cfg: ScheduleConfig) -> Schedule:
    rise, start, end = cfg.rise_fraction, cfg.start_factor, cfg.end_factor

    def factor(t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        if t < rise:
            return start + (1.0 - start) * t / rise
        return _decay(cfg.decay, (t - rise) / max(1.0 - rise, 1e-12), end)

    return factor


@register_schedule("cyclic")
def cyclic(cfg: ScheduleConfig) -> Schedule:
    """Fast AT's one-cycle triangle: 0 → peak at ``peak_fraction`` → 0 (Wong et al. 2020; Smith 2017)."""
    peak = cfg.peak_fraction

    def factor(t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        return t / peak if t < peak else (1.0 - t) / max(1.0 - peak, 1e-12)

    return factor


@register_schedule("cosine")
def cosine(cfg: ScheduleConfig) -> Schedule:
    warm, end = cfg.warmup_fraction, cfg.end_factor

    def factor(t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        if t < warm:
            return t / warm
        return _decay("cosine", (t - warm) / max(1.0 - warm, 1e-12), end)

    return factor


@register_schedule("piecewise")
def piecewise(cfg: ScheduleConfig) -> Schedule:
    """Step decay (Madry et al., Rice et al.): multiply by ``gamma`` at each milestone (fractions of the run)."""
    milestones = sorted(cfg.milestones)

    def factor(t: float) -> float:
        return cfg.gamma ** sum(t >= m for m in milestones)

    return factor


@register_schedule("constant")
def constant(cfg: ScheduleConfig) -> Schedule:
    return lambda t: 1.0


def build_schedule(cfg: ScheduleConfig) -> Schedule:
    return SCHEDULES[cfg.name](cfg)


def validate_section(cfg: FinetuneConfig) -> None:
    """The ``schedule`` section's checks: a registered name and the shape parameters' ranges (called by
    :func:`robustify.config.validate`)."""
    if cfg.schedule.name not in SCHEDULES:
        raise ConfigError(f"schedule.name={cfg.schedule.name!r} is not accepted; choose one of: {', '.join(SCHEDULES)}")
    flat = flatten({"schedule": cfg.to_dict()["schedule"]})
    if not 0 < cfg.schedule.gamma <= 1:
        raise ConfigError(f"schedule.gamma={cfg.schedule.gamma:g} is outside (0, 1]; it multiplies the learning rate "
                          "at each milestone, e.g. 0.1")
    ms = cfg.schedule.milestones
    if any(not 0 < m < 1 for m in ms) or any(a >= b for a, b in zip(ms, ms[1:], strict=False)):
        raise ConfigError(f"schedule.milestones={ms} is not accepted; use increasing fractions of the run in (0, 1), "
                          "e.g. [0.5, 0.75]")
    for key in ("schedule.rise_fraction", "schedule.peak_fraction", "schedule.warmup_fraction",
                "schedule.start_factor", "schedule.end_factor"):
        if not 0 <= flat[key] <= 1:
            raise ConfigError(f"{key}={flat[key]} is outside [0, 1]; use a fraction such as 0.5")


sections.register("schedule", validate_section)  # config.validate runs it (robustify/sections.py)


# ----------------------------------------------------------------------------- warm-up for a scaled peak lr
# Goyal et al. (2017) scaled the lr linearly with the global batch and needed a gradual warm-up of 5 epochs (of 90)
# from the unscaled lr; a fine-tuning run is short, so the rule here is the shorter of 5 epochs and a quarter of it.
WARMUP_EPOCHS = 5
WARMUP_MAX_FRACTION = 0.25


def rise_fraction_of(schedule: Schedule, points: int = 2000) -> float:
    """The share of the run before the schedule first reaches its peak (0 for a schedule that starts there)."""
    for i in range(points + 1):
        if schedule(i / points) >= 0.999:
            return i / points
    return 1.0


def warmup_for_scaled_lr(schedule: Schedule, scale: float, epochs: int) -> tuple[Schedule, str]:
    """Make sure a peak lr scaled up ``scale`` times (``schedule.lr_scale_rule``) is reached gradually.

    Long enough means: the schedule starts at or below the stated (unscaled) lr, and takes at least
    ``min(5 epochs, 25% of the run)`` to reach the peak. The slow start (rise over 70% from 1%) and the cyclic
    triangle (rise over 40% from 0) already are such a warm-up; a schedule that is not (constant, piecewise, cosine
    without ``warmup_fraction``) gets a linear warm-up from the stated lr over that length, multiplied into it.
    Returns the schedule to use and a note for the run's first line ('' when the lr is not scaled up).
    """
    if scale <= 1.0:
        return schedule, ""
    needed = min(WARMUP_EPOCHS / max(epochs, 1), WARMUP_MAX_FRACTION)
    rise, start = rise_fraction_of(schedule), schedule(0.0)
    if start <= 1.0 / scale + 1e-9 and rise >= needed - 1e-9:
        return schedule, (f"warm-up: the schedule rises from {start:.0%} of the peak over {rise:.0%} of the run, "
                          f"enough for the x{scale:.3g} lr (needs {needed:.0%})")
    floor = 1.0 / scale

    def warmed(t: float) -> float:
        return min(1.0, floor + (1.0 - floor) * t / needed) * schedule(t)

    return warmed, (f"warm-up added: the x{scale:.3g} lr rises linearly from the stated lr over the first "
                    f"{needed:.0%} of the run (the schedule alone rises over {rise:.0%} from {start:.0%})")
