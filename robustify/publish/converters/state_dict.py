"""A plain state dict for a timm architecture (``.safetensors``, ``.pt``, ``.pth``, ``.bin``), with prefix stripping.

Many robust checkpoints are a timm (or torchvision-named) model's ``state_dict()`` saved under a wrapper: keys start
with ``module.`` (DataParallel/DDP), ``model.``, ``backbone.``, ``_orig_mod.`` (torch.compile), or the dict sits under
``state_dict``/``model``/``model_state_dict`` beside optimizer state. This converter picks the entry (``--key``, or the
first of those names that holds tensors), strips the given prefixes (``--strip-prefix``, repeatable; by default any of
the wrappers above that prefixes *every* key, repeatedly), and leaves checking names and shapes to the importer.
Normalization: ``--mean``/``--std`` when given, else the timm architecture's own pretrained_cfg.

Must not: unpickle without weights_only=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import UserError
from .base import Converted, Converter, register, tensors_only

SAFE_GLOBALS: tuple[Any, ...] = ()  # a state dict is tensors in (Ordered)dicts: torch's defaults suffice
ENTRIES = ("state_dict", "model_state_dict", "model", "net", "ema")
AUTO_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")


def _entry(obj: Any, key: str | None, what: str) -> tuple[Any, str | None]:
    import torch

    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise UserError(f"{what} has no entry --key {key!r}; it has: {have}")
        return obj[key], key
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    if isinstance(obj, Mapping):
        for name in ENTRIES:
            v = obj.get(name)
            if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
                return v, name
    return obj, None


def strip(state: dict[str, Any], prefixes: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """Remove ``prefixes`` (each from every key that has it), or the automatic wrappers that prefix all keys."""
    stripped: list[str] = []
    if prefixes:
        for p in prefixes:
            if not any(k.startswith(p) for k in state):
                raise UserError(f"--strip-prefix {p!r}: no key starts with it (keys start with: "
                                f"{', '.join(sorted({k.split('.', 1)[0] + '.' for k in state})[:6])})")
            state = {k.removeprefix(p): v for k, v in state.items()}
            stripped.append(p)
        return state, stripped
    changed = True
    while changed:
        changed = False
        for p in AUTO_PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                stripped.append(p)
                changed = True
    return state, stripped


def convert(obj: Any, arch: str, options: Mapping[str, Any]) -> Converted:
    what = options.get("what", "checkpoint")
    entry, key = _entry(obj, options.get("key"), what)
    state = tensors_only(entry, f"{what}" + (f"['{key}']" if key else ""))
    state, stripped = strip(state, options.get("strip_prefix"))
    rest = [str(k) for k in obj if k != key] if key and isinstance(obj, Mapping) else []
    dropped = [f"entries beside the state dict: {', '.join(rest)}"] if rest else []
    notes = [f"state dict taken from entry '{key}'"] if key else []
    if stripped:
        notes.append(f"key prefixes removed: {', '.join(stripped)}")
    mean, std = options.get("mean"), options.get("std")
    return Converted(state, tuple(mean) if mean else None, tuple(std) if std else None, dropped, notes)


CONVERTER = register(Converter(
    name="state-dict",
    description="a plain timm state dict (.safetensors/.pt/.pth/.bin), wrapper prefixes stripped",
    convert=convert, safe_globals=SAFE_GLOBALS))
