"""MadryLab ``robustness`` checkpoints (e.g. ``madrylab/robust-imagenet-models`` on the Hub) -> a timm state dict.

The layout, from the library's public loading code (``robustness/model_utils.py``, ``attacker.py``, ``train.py``,
``tools/helpers.py``): ``torch.save`` (with ``pickle_module=dill``) of a dict ``{"model": ..., "optimizer": ...,
"schedule": ..., "epoch": int, "amp": ...}`` (very old files use ``"state_dict"`` instead of ``"model"``). The state
dict is that of ``DataParallel(AttackerModel)``, so every key starts with ``module.``:

- ``module.model.*``: the classifier (torchvision-style names: ``conv1``, ``layer1.0.bn1``, ``fc``), which are
  also timm's names for ``resnet18``/``resnet50``/``wide_resnet50_2``: kept, prefix removed;
- ``module.attacker.model.*``: the same tensors again (the attacker's reference to the classifier): dropped;
- ``module.normalizer.new_mean`` / ``new_std`` (shape 3x1x1, also under ``module.attacker.normalize.``): the input
  normalization the library applies inside the model (after clamping to [0,1]); moved to ``pretrained_cfg``.

The file holds only dicts, tensors, numbers and strings, so ``torch.load(weights_only=True)`` needs no extra global
(``SAFE_GLOBALS`` is empty; a file that needs one is reported, not unpickled). Checked against robustness 1.2.1
itself (tests/test_originals_madrylab.py): an ``AttackerModel`` built by the library, saved as its ``train.py``
saves checkpoints (``torch.save(..., pickle_module=dill)`` with its optimizer and schedule), converts to a timm
folder whose logits equal those of the model the library's ``make_and_restore_model`` restores.

Must not: unpickle without weights_only=True, or keep the attacker's copy of the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import UserError
from .base import Converted, Converter, register, tensors_only

SAFE_GLOBALS: tuple[Any, ...] = ()
# the library's ImageNet architecture names (robustness/imagenet_models) -> timm; same module names and shapes
ARCHS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "resnet101": "resnet101",
         "resnet152": "resnet152", "wide_resnet50_2": "wide_resnet50_2", "wide_resnet50_4": "wide_resnet50_4"}
MODEL, ATTACKER, NORMALIZER = "model.", "attacker.", "normalizer."
# the library's ImageNet test transform (data_augmentation.py: Resize(256), CenterCrop(224); torchvision bilinear)
EVAL_CFG = {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center"}


def guess_arch(filename: str) -> str | None:
    """``resnet50_l2_eps3.ckpt`` -> ``resnet50``: the file names of ``madrylab/robust-imagenet-models``."""
    stem = filename.rsplit("/", 1)[-1]
    for name in sorted(ARCHS, key=len, reverse=True):
        if stem.startswith(name + "_"):
            return ARCHS[name]
    return None


def convert(obj: Any, arch: str, options: Mapping[str, Any]) -> Converted:
    what = options.get("what", "checkpoint")
    if not isinstance(obj, Mapping):
        raise UserError(f"{what} is not a MadryLab robustness checkpoint (a dict with 'model'); found "
                        f"{type(obj).__name__}")
    key = "model" if "model" in obj else "state_dict" if "state_dict" in obj else None
    if key is None:
        raise UserError(f"{what} is not a MadryLab robustness checkpoint: missing key 'model' (or the legacy "
                        f"'state_dict'); it has: {', '.join(map(str, list(obj)[:8]))}")
    state = tensors_only(obj[key], f"{what}['{key}']")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's prefix (absent if unwrapped)
    model = {k[len(MODEL):]: v for k, v in state.items() if k.startswith(MODEL)}
    if not model:
        raise UserError(f"{what}['{key}'] has no 'module.model.*' keys (the classifier); keys start with: "
                        f"{', '.join(sorted({k.split('.', 1)[0] for k in state}))}")
    mean = state.get(NORMALIZER + "new_mean")
    std = state.get(NORMALIZER + "new_std")
    if mean is None or std is None:
        raise UserError(f"{what}['{key}'] is missing key 'module.normalizer.new_mean'/'new_std' (the input "
                        "normalization); without it the weights' expected inputs are unknown")
    attacker = [k for k in state if k.startswith(ATTACKER)]
    other = sorted(k for k in state if not k.startswith((MODEL, ATTACKER, NORMALIZER)))
    if other:
        raise UserError(f"{what}['{key}'] has keys outside model/attacker/normalizer: {', '.join(other[:3])}; not "
                        "the MadryLab layout")
    dropped = [f"module.attacker.* ({len(attacker)} tensors: the attacker's copy of the classifier)",
               "module.normalizer.new_mean/new_std (moved to pretrained_cfg mean/std)"]
    rest = [str(k) for k in obj if k != key]
    if rest:
        dropped.append(f"training state: {', '.join(rest)}")
    notes = ["the source model clamps inputs to [0,1] before normalizing; timm's pipeline yields [0,1] pixels anyway"]
    if "epoch" in obj and isinstance(obj["epoch"], int):
        notes.append(f"saved after epoch {obj['epoch']}")
    return Converted(model, tuple(float(v) for v in mean.flatten()), tuple(float(v) for v in std.flatten()),
                     dropped, notes, dict(EVAL_CFG))


CONVERTER = register(Converter(
    name="madrylab",
    description="MadryLab robustness checkpoints (.ckpt/.pt): ['model'] under module.model., normalizer dropped",
    convert=convert, safe_globals=SAFE_GLOBALS, arch_map=ARCHS, checked_against="robustness 1.2.1",
    guess_arch=guess_arch))
