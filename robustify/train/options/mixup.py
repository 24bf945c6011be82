"""Mixup and CutMix through timm (``train.mixup_alpha``, ``train.cutmix_alpha``, ``train.mixup_prob``,
``train.mixup_switch_prob``, ``train.mixup_mode``; with ``train.label_smoothing`` folded into the soft targets).

The heavy ImageNet recipes that RobustBench ranks (Singh et al. 2023, nmndeep/revisiting-at; Liu et al. 2023, ARES
2.0) train on timm's ``Mixup`` with ``SoftTargetCrossEntropy``. Each training minibatch (after any pseudo-labelled
examples are appended) goes through ``timm.data.Mixup`` exactly as timm's own train.py does: the images are mixed
with the flipped minibatch (or a CutMix box pasted from it) and the labels become soft targets
(``mixup_target``, smoothed by ``train.label_smoothing``); the method's training loss (the StepContext's ``loss``)
becomes ``timm.loss.SoftTargetCrossEntropy``.

What the attack maximises: the references attack the *mixed* images against the *soft* targets (revisiting-at
passes the mixed minibatch and its soft targets to its APGD; ARES 2.0's training attack switches to
SoftTargetCrossEntropy under mixup), so here too: every method receives the mixed images and soft targets, and its
attack's cross-entropy (``attacks.cross_entropy``, torch's cross-entropy of probability targets, summed) is the
soft-target CE times the batch size: the same gradient direction. TRADES' attack and KL term compare two predictions
and never see a label; its clean CE term is the soft-target CE. The probe and every evaluation use the clean,
hard-labelled examples (they never pass through this option).

Seeding: timm's Mixup draws from NumPy's global RNG. Each draw here runs with that RNG seeded from (train.seed,
epoch, minibatch, process) and restored afterwards, so a resumed run (mid-epoch too) mixes exactly what the
uninterrupted one mixed, and nothing else that uses NumPy's global RNG is shifted. Each process draws its own
mixing (as timm's distributed training does: every rank its own RNG); the partner of an example is the flipped
*local* minibatch, so the mixing depends on the world size, as the local minibatches themselves do.

Must not: touch the probe or the evaluation, or keep state outside the position it is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from ...errors import ConfigError
from .base import Option


def mixing(cfg: Any) -> bool:
    """Whether mixup or CutMix is on for a stage's config."""
    return cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0


def draw_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The 32-bit NumPy seed of one minibatch's mixing, a pure function of its position (SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, epoch, batch, rank, 0x6D6978]).generate_state(1, np.uint32)[0])


def build(cfg: Any, num_classes: int) -> Mixup:
    """timm's Mixup with the recipe's settings."""
    t = cfg.train
    return Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, prob=t.mixup_prob,
                 switch_prob=t.mixup_switch_prob, mode=t.mixup_mode, label_smoothing=t.label_smoothing,
                 num_classes=num_classes)


def mix(mixer: Mixup, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mixer(x, y)`` with NumPy's global RNG seeded by ``seed`` (and restored). timm needs an even minibatch; with
    an odd one (a pseudo-labelled share can make it so) the last example is left unmixed, with its (smoothed) one-hot
    target, as timm's ``mixup_target`` gives it at lam = 1."""
    even = x.shape[0] - x.shape[0] % 2
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        x_mix, y_mix = mixer(x[:even].clone(), y[:even])
    finally:
        np.random.set_state(state)
    if even == x.shape[0]:
        return x_mix, y_mix
    tail = mixup_target(y[even:], mixer.num_classes, 1.0, mixer.label_smoothing)
    return torch.cat([x_mix, x[even:]]), torch.cat([y_mix, tail.to(y_mix.dtype)])


class MixupOption(Option):
    """Mixup / CutMix: the registered unit (checks, plan note, record, card, soft-target loss, the mixing)."""

    name = "mixup"
    keys = {"train.mixup_alpha": "0.8", "train.cutmix_alpha": "1.0", "train.mixup_prob": "1.0",
            "train.mixup_switch_prob": "0.5", "train.mixup_mode": "batch"}
    title = "timm's mixup / CutMix with soft-target cross-entropy"

    def __init__(self, cfg: Any, slot: Any = None):
        super().__init__(cfg, slot)
        self.mixer: Mixup | None = None
        self.rank = 0

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return mixing(cfg)

    @classmethod
    def check(cls, cfg: Any) -> None:
        t = cfg.train
        for key, value in {"train.mixup_alpha": t.mixup_alpha, "train.cutmix_alpha": t.cutmix_alpha}.items():
            if value < 0:
                raise ConfigError(f"{key}={value:g} is negative; use 0 (off) or a Beta parameter > 0 such as 0.8 "
                                  "(mixup) or 1.0 (CutMix)")
        for key, value in {"train.mixup_prob": t.mixup_prob, "train.mixup_switch_prob": t.mixup_switch_prob}.items():
            if not 0 <= value <= 1:
                raise ConfigError(f"{key}={value:g} is outside [0, 1]; it is a probability, e.g. 1.0 (mixup_prob) or "
                                  "0.5 (mixup_switch_prob)")
        if mixing(cfg) and t.mixup_prob == 0:
            raise ConfigError("train.mixup_prob=0 with mixup or CutMix on mixes nothing; use a probability > 0, or "
                              "train.mixup_alpha=0 and train.cutmix_alpha=0 to switch mixing off")
        from ..methods import METHODS

        method = METHODS.get(cfg.method.name)
        if mixing(cfg) and method is not None and not method.soft_targets:
            raise ConfigError(f"train.mixup_alpha={t.mixup_alpha:g} / train.cutmix_alpha={t.cutmix_alpha:g} with "
                              f"method.name={cfg.method.name!r} is not accepted: the method reads its labels as class "
                              "indices and mixup gives soft targets; use another method, or label smoothing alone "
                              "(train.label_smoothing)")

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: {describe(record_of(cfg))}; the attack maximises the soft-target CE of the mixed "
                "images; no extra passes"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        return {"mixup": record_of(cfg)} if mixing(cfg) else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        entry = (record.training.options or {}).get("mixup")
        if entry is None:
            return []
        return [f"- Trained with {describe(entry)} (timm's Mixup and SoftTargetCrossEntropy); the training attack "
                "maximised the soft-target cross-entropy of the mixed images. The probe and the evaluation use unmixed "
                "images with their own labels."]

    def setup(self, run: Any) -> None:
        self.rank = run.accelerator.process_index
        self.attach(run.ctx, run.stepper, run.raw)

    def attach(self, ctx: Any, stepper: Any, model: torch.nn.Module) -> None:
        self.mixer = build(self.cfg, model.num_classes)
        ctx.loss = SoftTargetCrossEntropy()

    def batch(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mix(self.mixer, x, y, draw_seed(self.cfg.train.seed, epoch, batch, self.rank))


def record_of(cfg: Any) -> dict[str, Any]:
    """The run record's ``training.options.mixup`` entry."""
    t = cfg.train
    return {"mixup_alpha": t.mixup_alpha, "cutmix_alpha": t.cutmix_alpha, "prob": t.mixup_prob,
            "switch_prob": t.mixup_switch_prob, "mode": t.mixup_mode, "label_smoothing": t.label_smoothing}


def describe(entry: dict[str, Any]) -> str:
    """One phrase for the plan and the card: which mixing, how often, with what smoothing."""
    kinds = [f"{name} (alpha {entry[key]:g})" for name, key in (("mixup", "mixup_alpha"), ("CutMix", "cutmix_alpha"))
             if entry.get(key, 0) > 0]
    text = " or ".join(kinds)
    if len(kinds) == 2:
        text += f", CutMix with probability {entry.get('switch_prob', 0.5):g}"
    unit = {"batch": "minibatch", "pair": "pair of examples", "elem": "example"}.get(entry.get("mode", "batch"), "")
    text += f", mixing probability {entry.get('prob', 1.0):g} per {unit}"
    smoothing = entry.get("label_smoothing", 0)
    return text + (f", label smoothing {smoothing:g}" if smoothing else "")
