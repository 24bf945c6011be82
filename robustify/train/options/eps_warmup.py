"""Epsilon warm-up (``threat.eps_warmup_fraction``): the *training* radius ramps linearly from 0 to eps.

Fine-tuning a non-robust backbone at the full eps from the first step destroys much of what it knew before it
learns anything robust (Ngnawé et al. 2026, "Epsilon-Scheduling"; Debenedetti et al. 2022 warm eps up for ViTs).
Here the training eps of step t of a stage is ``eps * min(1, t / (fraction * T))`` (t = minibatches done in the
stage, T = the stage's minibatches), and the method's step size alpha scales with it, whether it is the method's
default (a multiple of eps) or set in the recipe. The share of eps is passed into the method's step on its
StepContext (``ctx.eps_share``, read through ``Method.budget``): no attribute of the method changes.
The position is computed from the checkpointed position (epoch, minibatch), so a resumed run ramps exactly as an
uninterrupted one.

The option (:class:`EpsWarmup`) owns the key's check, the plan's note, the step hook, the history's ``train_eps``
fields, the record's ``eps_warmup_fraction`` and the card's line. This module only changes what the *training step*
sees: the probe, the divergence guard and every evaluation read
``cfg.threat.eps`` themselves and always use the full eps. It must not change the config or the method's settings
outside the step it wraps.

Must not: change the eps of the probe, the guard or any evaluation (always the full eps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...errors import ConfigError
from ...publish.runrecord import eps_text
from .base import Option


def factor(fraction: float, progress: float) -> float:
    """The share of eps used at ``progress`` (the stage's minibatches done / its total, in [0, 1])."""
    if fraction <= 0:
        return 1.0
    return min(1.0, max(progress, 0.0) / fraction)


def stage_progress(epoch: int, batch: int, epochs: int, batches_per_epoch: int) -> float:
    """Where minibatch ``batch`` (0-based) of ``epoch`` (1-based) lies in a stage of ``epochs`` x ``batches``."""
    return ((epoch - 1) * batches_per_epoch + batch) / max(epochs * batches_per_epoch, 1)


@contextlib.contextmanager
def scaled(ctx: Any, share: float) -> Iterator[None]:
    """Run one training step at ``share`` of eps: the step's context (the method's StepContext) carries the share,
    which the method applies to its eps and alpha (``Method.budget``: its own alpha rule, 1.25 eps, eps,
    2.5 eps / steps, follows the scaled eps; an explicit ``method.alpha`` scales with it); back to 1 afterwards."""
    ctx.eps_share = share
    try:
        yield
    finally:
        ctx.eps_share = 1.0


def history_fields(cfg: Any, epoch: int, epochs: int, batches_per_epoch: int) -> dict[str, float]:
    """The training eps of an epoch for its history row (with warm-up on, for an attack method): at its first and
    its last minibatch. ``cfg``: the stage's FinetuneConfig."""
    fraction, eps = cfg.threat.eps_warmup_fraction, cfg.threat.eps
    if fraction <= 0 or cfg.method.name == "natural":
        return {}
    first = factor(fraction, stage_progress(epoch, 0, epochs, batches_per_epoch))
    last = factor(fraction, stage_progress(epoch, batches_per_epoch - 1, epochs, batches_per_epoch))
    return {"train_eps_start": eps * first, "train_eps": eps * last}


class EpsWarmup(Option):
    """``threat.eps_warmup_fraction`` > 0 with an attack method: the training eps ramps 0 -> eps over that share."""

    name = "eps_warmup"
    keys = {"threat.eps_warmup_fraction": "F"}
    title = "the training eps ramps from 0 over that share of each stage"

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return cfg.threat.eps_warmup_fraction > 0 and cfg.method.name != "natural"

    @classmethod
    def check(cls, cfg: Any) -> None:
        if not 0 <= cfg.threat.eps_warmup_fraction <= 1:
            raise ConfigError(f"threat.eps_warmup_fraction={cfg.threat.eps_warmup_fraction:g} is outside [0, 1]; it "
                              "is the share of each stage over which the training eps ramps from 0, e.g. 0.3 (0: off)")

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: eps warm-up, the training eps ramps 0 -> {cfg.threat.eps:.4g} over the first "
                f"{cfg.threat.eps_warmup_fraction:.0%} of the stage (no extra passes; evaluations at the full eps)"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        fraction = cfg.threat.eps_warmup_fraction
        return {"eps_warmup_fraction": fraction} if fraction > 0 else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        opts = record.training.options or {}
        warm = [(h.get("epoch"), h["train_eps"]) for h in record.history if "train_eps" in h]
        if "eps_warmup_fraction" not in opts and not warm:
            return []
        per_epoch = ", ".join(f"{e}: {eps_text(v) if v > 0 else '0'}" for e, v in warm)
        return [f"- Epsilon warm-up: the training eps rose linearly from 0 to {eps_text(record.training.eps)} "
                f"over the first {opts.get('eps_warmup_fraction', 0):.0%} of each stage (eps at the end of each "
                f"epoch: {per_epoch or 'not recorded'}); the probe and every evaluation used the full eps."]

    def step_scope(self, run: Any, epoch: int, batch: int) -> contextlib.AbstractContextManager:
        share = factor(self.cfg.threat.eps_warmup_fraction,
                       stage_progress(epoch, batch, run.epochs, run.loaders.batches_per_epoch))
        return scaled(run.ctx, share)

    def history_fields(self, run: Any, epoch: int) -> dict[str, Any]:
        return history_fields(self.cfg, epoch, run.epochs, run.loaders.batches_per_epoch)
