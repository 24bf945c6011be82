"""Label smoothing without mixup (``train.label_smoothing``), through timm's ``LabelSmoothingCrossEntropy``.

The training loss of every method (the StepContext's ``loss``: the CE of the training inputs, TRADES' clean term,
free/DEAT's replays) becomes timm's label-smoothed cross-entropy, ``(1 - s) * NLL + s * mean over classes of
-log p``, as in timm's train.py when mixup is off (Singh et al. 2023 train with 0.1). With mixup or CutMix on, the
smoothing goes into Mixup's soft targets instead (train/options/mixup.py) and this option is off, again as timm does.

What the attack maximises: the plain cross-entropy against the hard label, unchanged (the references smooth only the
training loss: revisiting-at's APGD and ARES 2.0's training attack use the plain CE without mixup). The probe and the
evaluation use hard labels and never see the smoothing.

Must not: change the attack's objective, the probe or the evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.loss import LabelSmoothingCrossEntropy

from ...errors import ConfigError
from .base import Option
from .mixup import mixing


class LabelSmoothingOption(Option):
    """``train.label_smoothing`` without mixup: the registered unit (check, plan note, record, card, the loss)."""

    name = "label-smoothing"
    keys = {"train.label_smoothing": "0.1"}
    title = "timm's label smoothing of the training loss"

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return cfg.train.label_smoothing > 0 and not mixing(cfg)

    @classmethod
    def check(cls, cfg: Any) -> None:
        if not 0 <= cfg.train.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing={cfg.train.label_smoothing:g} is outside [0, 1); use e.g. 0.1, "
                              "or 0 (off)")

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: label smoothing {cfg.train.label_smoothing:g} in the training loss (timm's "
                "LabelSmoothingCrossEntropy); the attack keeps the plain cross-entropy; no extra passes"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        return {"label_smoothing": cfg.train.label_smoothing} if cls.active(cfg) else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        smoothing = (record.training.options or {}).get("label_smoothing")
        if smoothing is None:
            return []
        return [f"- Trained with label smoothing {smoothing:g} (timm's LabelSmoothingCrossEntropy); the training "
                "attack maximised the plain cross-entropy."]

    def attach(self, ctx: Any, stepper: Any, model: torch.nn.Module) -> None:
        ctx.loss = LabelSmoothingCrossEntropy(smoothing=self.cfg.train.label_smoothing)
