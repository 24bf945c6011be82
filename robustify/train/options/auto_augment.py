"""RandAugment, AutoAugment and AugMix through timm's transform factory (``data.auto_augment``).

``data.augment: timm`` trains on timm's ``create_transform(is_training=True)`` (random-resized crop, flip, colour
jitter); ``data.auto_augment`` names timm's policy in its own syntax, which replaces the colour jitter as in timm's
train.py: ``rand-m9-mstd0.5-inc1`` (RandAugment, as DeiT, ConvNeXt and Singh et al. 2023 use it), ``original`` or
``v0`` (AutoAugment), ``augmix-m5-w4-d2`` (AugMix). The transform itself is built by the data path
(``Preprocessing.train_transform``); this option owns the key's checks, the plan note, the record and the card line.

Seeding: each example's transform runs with the Python, NumPy and torch RNGs seeded from (train.seed, epoch,
example) (``preprocessing.seeded_transform``; RandAugment picks its operations with NumPy's global RNG), so a
resumed run augments exactly as the uninterrupted one, and an example is augmented identically whichever worker,
process or world size decodes it.

Where it cannot run: the policies are PIL transforms, so they need ``data.augment: timm`` (the CPU workers decode and
augment each image); ``data.decode: device`` decodes JPEGs on the GPU, where no PIL transform runs, and is refused.
The probe, the evaluation and the exported ``pretrained_cfg`` never see the policy.

Must not: build the transform (the data path does) or reach the probe or the evaluation.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from .base import Option

EXAMPLES = "rand-m9-mstd0.5-inc1 (RandAugment), original (AutoAugment) or augmix-m5-w4-d2 (AugMix)"


def policy(cfg: Any) -> str | None:
    """The stage's policy string, or None when off (an empty string is off too)."""
    return cfg.data.auto_augment or None


class AutoAugmentOption(Option):
    """``data.auto_augment``: the registered unit (checks, plan note, record, card)."""

    name = "auto-augment"
    keys = {"data.auto_augment": "rand-m9-mstd0.5-inc1"}
    title = "timm's RandAugment / AutoAugment (with data.augment=timm)"

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return policy(cfg) is not None

    @classmethod
    def check(cls, cfg: Any) -> None:
        name = policy(cfg)
        if name is None:
            return
        if cfg.data.decode == "device":
            raise ConfigError(f"data.auto_augment={name!r} with data.decode=device is not accepted: the policy is a "
                              "PIL transform and device decoding runs none; use data.decode=workers with "
                              "data.augment=timm")
        if cfg.data.augment != "timm":
            raise ConfigError(f"data.auto_augment={name!r} with data.augment={cfg.data.augment!r} is not accepted: the "
                              "policy is part of timm's training transform; set data.augment=timm")
        from timm.data import create_transform

        try:  # timm parses its own policy syntax: building the transform is the check
            create_transform(input_size=(3, 32, 32), is_training=True, auto_augment=name)
        except (AssertionError, ValueError, KeyError, IndexError) as e:
            raise ConfigError(f"data.auto_augment={name!r} is not a timm policy ({e}); use e.g. {EXAMPLES}") from None

    @classmethod
    def plan_notes(cls, stage: str, cfg: Any, data_passes: int) -> list[str]:
        return [f"stage {stage}: timm's {policy(cfg)} policy in the training transform, seeded per example; the probe "
                "and the evaluation are not augmented"]

    @classmethod
    def record(cls, cfg: Any) -> dict[str, Any]:
        return {"auto_augment": policy(cfg)} if cls.active(cfg) else {}

    @classmethod
    def card_lines(cls, record: Any) -> list[str]:
        name = (record.training.options or {}).get("auto_augment")
        if name is None:
            return []
        return [f"- Training images augmented with timm's `{name}` policy (after the random-resized crop and flip)."]
