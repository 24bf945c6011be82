"""Backbone loading through timm, the in-model normalizer, and the head reset.

Attacks must see a model whose inputs are pixels in [0,1]; timm backbones expect normalized inputs. So robustify
wraps each backbone as ``RobustModel = Normalize(mean, std) ∘ backbone`` with mean/std taken from the backbone's
own ``pretrained_cfg``. Exports save only the backbone (normalization stays in ``pretrained_cfg``, where timm users
look for it), so plain ``timm.create_model`` loads robustify's weights.

Every model spec goes through ``timm.create_model``: plain names, ``hf-hub:ORG/NAME``, ``local-dir:PATH`` and run
folders (which are ``local-dir:`` folders), so there is one code path for the Hub and for local files.

Must not: train, evaluate or write run folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from .errors import UserError
from .hub_access import go_offline, hub_reachable  # robustify.models.hub_reachable stays importable
from .input_grad import use_fast_input_grad
from .runfolder import CONFIG, is_model_folder  # robustify.models.is_model_folder stays importable

PACKAGE_DIR = Path(__file__).resolve().parent
ALIASES = {"quickstart": PACKAGE_DIR / "assets" / "quickstart" / "backbone"}
ZOO_PREFIX = "zoo:"  # zoo:NAME: a zoo model pulled with 'robustify pull NAME' (see zoo_folder)


class Normalize(nn.Module):
    """(x - mean) / std with per-channel buffers, so that the model's inputs live in [0,1] pixel space."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Resize(nn.Module):
    """Resize [0,1] images to the backbone's input size inside the model (the attack lives at the smaller size).

    It runs *before* normalization, in pixel space, as timm's own pipeline does (PIL resize, then Normalize): the
    per-channel affine normalization commutes with bilinear/bicubic resizing (their weights sum to one), so the order
    changes nothing but rounding, except that bicubic overshoots [0,1], which PIL's uint8 output clips, and clipping
    belongs in pixel space."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bilinear"):
        super().__init__()
        self.size = tuple(int(v) for v in size)
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        if self.mode != "nearest" and torch.are_deterministic_algorithms_enabled():
            out = self._by_matrices(x)  # train.deterministic: CUDA's interpolate backward is not deterministic
        else:
            kw = {} if self.mode == "nearest" else {"align_corners": False}
            out = nn.functional.interpolate(x, size=self.size, mode=self.mode, **kw)
        return out.clamp(0, 1) if self.mode == "bicubic" else out

    def _by_matrices(self, x: torch.Tensor) -> torch.Tensor:
        """The same resize as two small matrix products (bilinear and bicubic are separable): rows, then columns.

        Each matrix is ``interpolate`` applied to an identity, so the weights are exactly torch's; the backward is
        a matrix product too, which is deterministic on CUDA, unlike ``upsample_*_backward`` (atomic adds), which
        ``torch.use_deterministic_algorithms`` refuses."""
        (h, w), (oh, ow) = x.shape[-2:], self.size
        rows, cols = self._matrix(h, oh, x), self._matrix(w, ow, x)
        return torch.einsum("oh,nchw,pw->ncop", rows, x, cols)

    def _matrix(self, n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(n_in, dtype=torch.float64, device=like.device)[None, None]
        m = nn.functional.interpolate(eye, size=(n_out, n_in), mode=self.mode, align_corners=False)[0, 0]
        return m.to(like.dtype)


class RobustModel(nn.Module):
    """The model attacks see: [Resize] then normalization inside, [0,1] inputs at ``input_size``."""

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: tuple[int, int, int], source: str = "",
                 model_input_size: tuple[int, int, int] | None = None, interpolation: str = "bilinear",
                 preprocessing: Any = None):
        super().__init__()
        self.input_size = tuple(input_size)
        model_input_size = tuple(model_input_size) if model_input_size else None
        if model_input_size is not None and model_input_size[1:] != self.input_size[1:]:
            self.resize: nn.Module = Resize(model_input_size[1:], interpolation)
        else:
            self.resize = nn.Identity()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        use_fast_input_grad(backbone)  # attacks' input gradient through the stem conv: the fast CPU kernel
        self.source = source
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(self.resize(x)))

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def pretrained_cfg(self) -> dict:
        return self.backbone.pretrained_cfg


def build_robust_model(backbone: nn.Module, preprocessing: Any, source: str = "") -> RobustModel:
    """The model attacks see, built from the one :class:`robustify.data.Preprocessing` of the run."""
    p = preprocessing
    return RobustModel(backbone, tuple(p.mean), tuple(p.std), tuple(p.input_size), source=source,
                       model_input_size=p.model_input_size, interpolation=p.interpolation, preprocessing=p)


def zoo_folder(name: str) -> Path:
    """Where ``robustify pull NAME`` puts a zoo model as a timm folder (``ROBUSTIFY_ZOO_DIR``, else
    ``~/.cache/robustify/zoo/NAME``); ``zoo:NAME`` resolves here, so ``finetune --model zoo:NAME`` starts from it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    root = os.environ.get("ROBUSTIFY_ZOO_DIR") or cache / "robustify" / "zoo"
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"zoo name {name!r} is not accepted; use a name from 'robustify zoo list'")
    return Path(root).expanduser() / name


def resolve_spec(name: str) -> str:
    """Map a user's model spec to the name timm's ``create_model`` takes.

    ``quickstart`` (the bundled backbone) and existing folders become ``local-dir:`` specs; ``hf-hub:`` and
    ``local-dir:`` pass through (checked); anything else must be a timm architecture name.
    """
    if name in ALIASES:
        return f"local-dir:{ALIASES[name]}"
    if name.startswith(ZOO_PREFIX):
        folder = zoo_folder(name[len(ZOO_PREFIX):])
        if not is_model_folder(folder):
            raise UserError(f"model {name!r} is not downloaded yet; run 'robustify pull {name[len(ZOO_PREFIX):]}' "
                            "('robustify finetune --model zoo:NAME' does that itself)")
        return f"local-dir:{folder}"
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not folder.exists():
            raise UserError(f"model {name!r}: the path {str(folder)!r} does not exist")
        if not is_model_folder(folder):
            raise UserError(f"model {name!r}: {str(folder)!r} is not a model folder (needs config.json and "
                            "model.safetensors, as written by finetune or timm's save_for_hf)")
        return f"local-dir:{folder.resolve()}"
    if name.startswith("hf-hub:"):
        if name.count("/") < 1 or len(name) <= len("hf-hub:"):
            raise UserError(f"model {name!r} is not accepted; use hf-hub:ORG/NAME")
        return name
    path = Path(name).expanduser()
    if not path.exists() and (os.sep in name or name.startswith(("~", "."))):
        raise UserError(f"model {name!r}: the path {str(path)!r} does not exist; give a run folder, a model folder, "
                        "local-dir:PATH, hf-hub:ORG/NAME or a timm name")
    if path.exists() or os.sep in name:
        if is_model_folder(path):
            return f"local-dir:{path.resolve()}"
        raise UserError(f"model {name!r}: {str(path)!r} is not a model folder (needs config.json and "
                        "model.safetensors, as written by finetune or timm's save_for_hf)")
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:12]}*")[:5]
        hint = f"; similar timm names: {', '.join(close)}" if close else ""
        raise UserError(f"model {name!r} is not a timm model, a folder, hf-hub:ORG/NAME or local-dir:PATH{hint}")
    if "." in name:  # arch.tag: an unknown tag is the user's typo, not an unreachable Hub
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        if name.split(".", 1)[1] not in tags:
            listed = ", ".join(tags[:12]) + (f", ... ({len(tags)} in all)" if len(tags) > 12 else "")
            raise UserError(f"model {name!r}: timm has no pretrained tag {name.split('.', 1)[1]!r} for {arch}; "
                            + (f"valid tags: {listed}" if tags else f"it has no pretrained weights, use {arch!r}"))
    return name


def _needs_hub(spec: str, pretrained: bool) -> bool:
    return pretrained and not spec.startswith("local-dir:")


def create_backbone(name: str, pretrained: bool = True, num_classes: int | None = None,
                    checkpoint: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """``timm.create_model`` for any spec, failing within seconds (not minutes) when the Hub is out of reach."""
    spec = resolve_spec(name)
    if checkpoint:
        ckpt = _checkpoint_path(checkpoint, trust_pickle)
        pretrained = False  # the architecture (and its pretrained_cfg) from the spec, the weights from the file
    offline = False
    if _needs_hub(spec, pretrained) and not hub_reachable():
        go_offline()
        offline = True
    try:
        backbone = timm.create_model(spec, pretrained=pretrained)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - timm/hub raise many types; report them in one line
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if offline:
            raise UserError(f"model {name!r} needs pretrained weights from the Hugging Face Hub ({endpoint}), which "
                            "is unreachable, and they are not in the local cache; connect, pre-download them, or pass "
                            "a local folder (local-dir:PATH)") from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "deserializ" in msg.lower() or "safetensor" in msg.lower():
            msg = f"its weights file is truncated or corrupt ({msg})"
        raise UserError(f"model {name!r} could not be loaded: {msg}") from None
    if checkpoint:
        load_checkpoint(backbone, ckpt, checkpoint)
    if num_classes is not None and backbone.num_classes != num_classes:
        backbone.reset_classifier(num_classes)
    return backbone


def saved_preprocessing(spec: str) -> Any:
    """The ``preprocessing`` block robustify writes into a run folder's config.json (None for other models)."""
    import json

    from .data.preprocessing import Preprocessing

    if not spec.startswith("local-dir:"):
        if not spec.startswith("hf-hub:"):
            return None
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(spec[len("hf-hub:"):], CONFIG))
        except Exception:  # noqa: BLE001 - the weights loaded already; no record simply means none was written
            return None
    else:
        path = Path(spec[len("local-dir:"):]) / CONFIG
    try:
        record = json.loads(path.read_text()).get("preprocessing")
    except (OSError, ValueError):
        return None
    return Preprocessing.from_record(record) if isinstance(record, dict) else None


def _checkpoint_path(checkpoint: str, trust_pickle: bool = False) -> Path:
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        raise UserError(f"model.checkpoint={checkpoint!r} does not exist; give a .safetensors weights file")
    if ckpt.suffix != ".safetensors" and not trust_pickle:
        raise UserError(f"model.checkpoint={checkpoint!r} is not accepted; only .safetensors weights are loaded "
                        "(pickle files can run code when loaded; convert yours with safetensors.torch.save_file, or "
                        "pass --trust-pickle if you trust this file)")
    return ckpt


def _read_pickle_state(ckpt: Path, what: str) -> dict[str, torch.Tensor]:
    """A trusted pickle checkpoint (``--trust-pickle``), still through torch's restricted ``weights_only`` unpickler;
    a full training checkpoint's weights are found under 'state_dict', 'model' or 'model_state_dict'."""
    try:
        obj = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure: the file is not a plain weights file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} cannot be read as PyTorch weights ({msg[:200]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{what} holds no state dict of tensors")
    return obj


def load_checkpoint(backbone: nn.Module, ckpt: Path, given: str) -> None:
    """Load a .safetensors state dict into ``backbone``, first giving it the head size the file has (read from the
    header, so a 10-class checkpoint loads into an architecture whose default head has 1000 classes).

    Why not timm's ``pretrained_cfg_overlay=dict(file=...)``: it cannot resize the head to the file's, and its errors
    ("Specified path is not a directory" for a local-dir spec) do not say what is wrong. A mismatch here names the
    keys and shapes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    what = f"model.checkpoint={given!r}"
    pickled = _read_pickle_state(ckpt, what) if ckpt.suffix != ".safetensors" else None
    try:
        if pickled is not None:
            shapes = {k: tuple(v.shape) for k, v in pickled.items()}
        else:
            with safe_open(str(ckpt), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError: the file cannot be read as safetensors
        raise UserError(f"{what} is not a readable safetensors file (truncated or corrupt: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    prefix = "backbone."  # robustify's own RobustModel checkpoints (checkpoints/best.safetensors)
    if shapes and all(k.startswith(prefix) for k in shapes):
        shapes = {k[len(prefix):]: v for k, v in shapes.items()}
    else:
        prefix = ""
    head = backbone.pretrained_cfg.get("classifier")
    head_shape = shapes.get(f"{head}.weight") if isinstance(head, str) else None
    if head_shape and head_shape[0] != backbone.num_classes:
        backbone.reset_classifier(head_shape[0])
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k} {shapes[k]} vs {expected[k]}" for k in sorted(set(shapes) & set(expected))
             if shapes[k] != expected[k]]
    arch = backbone.pretrained_cfg.get("architecture", type(backbone).__name__)
    for label, items in (("shapes differ (file vs model)", wrong), ("missing from the file", missing),
                         ("not in the model", unexpected)):
        if items:
            raise UserError(f"{what} does not fit {arch}: {len(items)} tensor(s) {label}: {'; '.join(items[:3])}"
                            f"{' ...' if len(items) > 3 else ''}; give weights saved from this architecture")
    state = pickled if pickled is not None else load_file(str(ckpt))
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items()})


def wrap(backbone: nn.Module, image_size: int | None = None, source: str = "") -> RobustModel:
    """Put the backbone's own normalization (and a run's recorded resize) inside the model (see module docstring)."""
    from .data.preprocessing import Preprocessing

    pre = saved_preprocessing(resolve_spec(source)) if source and image_size is None else None
    if pre is None:
        data_cfg = resolve_data_config(model=backbone)
        if image_size is not None:
            data_cfg = dict(data_cfg, input_size=(data_cfg["input_size"][0], image_size, image_size))
        pre = Preprocessing.from_data_config(data_cfg)
    return build_robust_model(backbone, pre, source=source)


def load_backbone(name: str, pretrained: bool = True, num_classes: int | None = None, image_size: int | None = None,
                  checkpoint: str | None = None, trust_pickle: bool = False) -> RobustModel:
    """Load any model spec as a :class:`RobustModel` with a head for ``num_classes`` classes."""
    backbone = create_backbone(name, pretrained=pretrained, num_classes=num_classes, checkpoint=checkpoint,
                               trust_pickle=trust_pickle)
    return wrap(backbone, image_size=image_size, source=name)


def load(name_or_run_dir: str, num_classes: int | None = None) -> RobustModel:
    """The model that attacks see, in eval mode: ``robustify.load("runs/x")`` or ``robustify.load("hf-hub:o/n")``.

    A robustify run folder rebuilds the same model as in training: its recorded preprocessing (attack resolution,
    in-model resize, interpolation, crop) comes from config.json's ``preprocessing`` block."""
    model = load_backbone(name_or_run_dir, pretrained=True, num_classes=num_classes)
    return model.eval()
