"""Converters of third-party robust checkpoints into timm state dicts: a registry, one module per format.

A converter knows one *layout* (where the classifier's weights sit inside the file, which extra tensors a training
library saved beside them, where the input normalization lives) and turns it into the plain state dict that
``timm.create_model(ARCH)`` takes, plus the mean/std the weights expect. It does not download, build models or
write files: :mod:`robustify.publish.importer` does that, and checks the result against the timm architecture.

Reading is shared here so that every format follows the same rule: ``.safetensors`` files are read directly; pickle
files (``.pt``, ``.pth``, ``.ckpt``, ``.bin``, ...) only when the user passed ``--trust-pickle``, and even then only
through ``torch.load(weights_only=True)`` (torch's restricted unpickler) with the few extra globals a format declares
in its ``SAFE_GLOBALS``, never a full unpickler.

Must not: unpickle anything without --trust-pickle and weights_only=True.
"""

from __future__ import annotations

from ...errors import UserError, did_you_mean
from .base import (
    PICKLE_SUFFIXES,
    REGISTRY,
    TRUST_FLAG,
    Converted,
    Converter,
    is_pickle,
    read_file,
    register,
    tensors_only,
)

__all__ = ["PICKLE_SUFFIXES", "REGISTRY", "TRUST_FLAG", "Converted", "Converter", "get", "is_pickle", "names",
           "read_file", "register", "tensors_only"]


def _load_builtin() -> None:
    from . import madrylab, robustbench, state_dict  # noqa: F401 - importing registers them


def get(name: str) -> Converter:
    _load_builtin()
    if name not in REGISTRY:
        hint = f" ({hint})" if (hint := did_you_mean(name, REGISTRY)) else ""
        raise UserError(f"--format {name!r} is not accepted{hint}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def names() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)
