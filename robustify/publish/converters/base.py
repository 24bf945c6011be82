"""The converters' shared parts: the :class:`Converter` record, the registry dict and the safe file reader (see the
package docstring). Converter modules import this, never the package, so the registry has no import cycle.

Must not: import a converter (the converters import it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError, first_line

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")
TRUST_FLAG = "--trust-pickle"


@dataclass
class Converted:
    """What a converter returns: a timm state dict, the normalization the weights expect, and what was dropped."""

    state_dict: dict[str, Any]
    mean: tuple[float, ...] | None = None  # None: the timm architecture's own default
    std: tuple[float, ...] | None = None
    dropped: list[str] = field(default_factory=list)  # groups of keys left out, e.g. "module.attacker.model.* (122)"
    notes: list[str] = field(default_factory=list)  # facts about the source layout worth stating in the card
    cfg: dict[str, Any] = field(default_factory=dict)  # pretrained_cfg entries the format fixes (input size, crop)


@dataclass(frozen=True)
class Converter:
    """One checkpoint format."""

    name: str
    description: str
    convert: Callable[[Any, str, Mapping[str, Any]], Converted]  # (loaded file, timm arch, options) -> Converted
    safe_globals: tuple[Any, ...] = ()  # extra globals torch.load(weights_only=True) may rebuild for this format
    arch_map: Mapping[str, str] = field(default_factory=dict)  # the format's architecture names -> timm names
    # the original project's package and version whose own code the tests build, save and load the format with
    # (tests/test_originals_*.py), e.g. "robustness 1.2.1"; None: not checked against an original project
    checked_against: str | None = None
    guess_arch: Callable[[str], str | None] | None = None  # file name -> timm architecture, when the format says


REGISTRY: dict[str, Converter] = {}


def register(conv: Converter) -> Converter:
    REGISTRY[conv.name] = conv
    return conv


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES or path.name.lower().endswith(".pth.tar")


def read_file(path: Path, what: str, trust_pickle: bool, safe_globals: tuple[Any, ...] = ()) -> Any:
    """The file's contents: a safetensors dict, or what the restricted unpickler rebuilds (trusted pickles only).

    A truncated or corrupt file, or a pickle that needs a global outside the allowed ones, is one line."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: not a complete safetensors file
            raise UserError(f"{what} is not a readable safetensors file (truncated or corrupt: {first_line(e)})") \
                from None
    if not is_pickle(path):
        raise UserError(f"{what}: unknown file type {path.suffix!r}; give .safetensors or a PyTorch pickle "
                        f"({', '.join(PICKLE_SUFFIXES)})")
    if not trust_pickle:
        raise UserError(f"{what} is a pickle, which can run code when loaded; refusing to open it. Pass {TRUST_FLAG} "
                        "if you trust its source (it is then read with torch.load(weights_only=True) only)")
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip truncated) ...
        # torch's messages are paragraphs of advice (with ANSI codes); keep the one fact: the global it refused, or
        # what the unpickler choked on
        text = str(e)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise UserError(f"{what} needs a Python object torch's restricted unpickler does not allow (it refused "
                            f"{refused.group(1)}); this format's allowed globals are: "
                            f"{', '.join(_global_name(g) for g in safe_globals) or 'none'}") from None
        _, unpickler, detail = text.partition("WeightsUnpickler error:")
        detail = next((line.strip() for line in detail.splitlines() if line.strip()), "") if unpickler else ""
        raise UserError(f"{what} cannot be read as a PyTorch checkpoint (truncated or corrupt: "
                        f"{_first_sentence(detail or first_line(e))})") from None


def _global_name(g: Any) -> str:
    return f"{getattr(g, '__module__', '?')}.{getattr(g, '__qualname__', g)}"


def _first_sentence(line: str) -> str:
    """The first sentence of an error line: torch's truncated-zip error goes on for three sentences of advice
    ("This is an internal miniz error. If you are seeing this error, ..."); the first one says what failed, and
    cutting at a character count would end the user's one line mid-sentence."""
    return re.split(r"\.\s+", line, maxsplit=1)[0].rstrip(".")


def tensors_only(obj: Any, what: str) -> dict[str, Any]:
    """``obj`` as a flat mapping of name -> tensor, or one line saying what it is instead."""
    import torch

    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{what} holds no state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{what}: entries that are not tensors: {', '.join(map(str, bad[:3]))}"
                        f"{' ...' if len(bad) > 3 else ''}; is this a full training checkpoint? try --format madrylab "
                        "or --key NAME (the entry that holds the state dict)")
    return dict(obj)
