"""The checks a run makes before it loads weights, reads data or touches a device, in one place: ``finetune`` runs
them first and ``finetune --dry-run`` runs exactly these, so a dry run never plans settings the run then refuses.

What is checked here beyond the config's own validation (``robustify.config``): each option's own preflight checks
(train/options/, e.g. a setting checked against the architecture's timm parameter groups, with the architecture
built on PyTorch's ``meta`` device), given :func:`architecture_of`: the architecture when its name or its
folder's ``config.json`` says which timm architecture it is (no memory, no weights, no download).

Must not: load weights, read data, or allocate on a device (the dry run calls it).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import FinetuneConfig, expand_stages, stage_notes
from ..runfolder import CONFIG
from . import options


def architecture_of(name: str) -> str | None:
    """The timm architecture behind a model spec, when it is known without downloading anything: a timm name
    (``resnet50.a1_in1k`` -> ``resnet50``) or a local run/model folder's ``config.json``; None otherwise."""
    import timm

    from ..models import resolve_spec

    arch = name.partition(".")[0]
    if timm.is_model(arch) and not Path(name).expanduser().exists():
        return arch
    try:
        spec = resolve_spec(name)
    except Exception:  # noqa: BLE001 - an unknown spec is reported by the model check, not here
        return None
    folder = Path(str(spec).removeprefix("local-dir:")).expanduser()
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("architecture")
    except (OSError, ValueError, AttributeError):
        return None


def preflight(cfg: FinetuneConfig) -> list[str]:
    """Everything a run refuses before it starts that can be known from the recipe alone; returns the notes the
    run (and the dry run) prints in its first lines: how run-level options were applied to its stages
    (:func:`robustify.config.stage_notes`)."""
    stages = expand_stages(cfg)
    if any(stage.data.decode == "device" for _, stage in stages):  # the device itself is checked by the run
        from ..data.device_decode import check_plan
        from ..data.loaders import use_streaming

        for _, stage in stages:  # data.decode=device's own rules (data/device_decode.py), on the recipe's values
            if stage.data.decode == "device":
                check_plan(stage.data.name, use_streaming(stage.data), stage.data.interpolation or "bilinear")
    options.preflight(cfg, [stage for _, stage in stages], architecture_of)  # each option's own
    return stage_notes(cfg)
