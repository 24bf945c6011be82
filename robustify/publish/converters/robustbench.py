"""RobustBench model-zoo checkpoints (the ``.pt`` files ``robustbench.utils.load_model`` reads) -> a timm state dict.

The layout, from robustbench 1.1.1's ``utils.load_model`` and ``model_zoo/imagenet.py``: ``load_model(NAME,
model_dir, dataset, threat_model)`` reads ``MODEL_DIR/DATASET/THREAT/NAME.pt`` (downloading it from Google Drive
when absent) with ``torch.load``; the state dict is ``checkpoint["state_dict"]`` when that key exists, else the
checkpoint itself (``checkpoint["last"]`` for a few CIFAR entries); the prefixes ``module.`` (DataParallel) and
``model.`` are removed, and for ImageNet ``model.`` is put back because the entry's model is
``nn.Sequential(normalize=ImageNormalizer(mean, std), model=torchvision ResNet)``: the normalization is *not* in
the file but in the entry's code. So this converter needs the entry (its name, from the file name ``NAME.pt``
and the folders ``DATASET/THREAT`` above it, or the option ``entry``) to know both the architecture and the
mean/std; ``ENTRIES`` is that table for every robustbench 1.1.1 entry whose model is a
torchvision ResNet (torchvision's and timm's ResNets share module names, so the weights load unchanged).

Entries built on other architectures (WideResNet-28-10 and the other CIFAR networks, RobustBench's own variants,
ensembles) are refused: timm has no equivalent that robustify has checked. Checked against robustbench 1.1.1's own
``load_model`` (tests/test_originals_robustbench.py): logits equal on [0,1] inputs for ResNet-18, ResNet-50 and
WRN-50-2 entries.

Must not: guess a normalization (it is the entry's, and a wrong one changes every logit), or unpickle without
weights_only=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from ...errors import UserError
from .base import Converted, Converter, register, tensors_only

SAFE_GLOBALS: tuple[Any, ...] = ()  # state dicts of tensors (sometimes under "state_dict" beside numbers)
VERSION = "1.1.1"  # the robustbench release the table and the tests follow
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # robustbench model_zoo/imagenet.py mu, sigma
RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalizer: the network takes [0,1] pixels as they are
# robustbench's test preprocessings (data.py PREPROCESSINGS) as timm pretrained_cfg entries
PREPROCESSING = {
    "Res256Crop224": {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear",
                      "crop_mode": "center"},
    # CenterCrop(288) of the full image with no resize: timm's transforms always resize first, so this is the
    # nearest it can say; the note in the card states the difference
    "Crop288": {"input_size": (3, 288, 288), "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"},
}


def _e(arch: str, norm: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET, prep: str = "Res256Crop224",
       wrapped: bool = True, file: bool = True) -> dict[str, Any]:
    return {"arch": arch, "mean": norm[0], "std": norm[1], "preprocessing": prep, "wrapped": wrapped, "file": file}


# (dataset, threat model, name) -> the entry's architecture (timm name), normalization and test preprocessing.
# wrapped: the entry's model is Sequential(normalize, model) (load_model adds "model."); file: weights come from a
# .pt (Standard_R50 is torchvision's own pretrained ResNet-50, which load_model builds without a file).
ENTRIES: dict[tuple[str, str, str], dict[str, Any]] = {
    ("imagenet", "Linf", "Wong2020Fast"): _e("resnet50", prep="Crop288"),
    ("imagenet", "Linf", "Engstrom2019Robustness"): _e("resnet50"),
    ("imagenet", "Linf", "Salman2020Do_R50"): _e("resnet50"),
    ("imagenet", "Linf", "Salman2020Do_R18"): _e("resnet18"),
    ("imagenet", "Linf", "Salman2020Do_50_2"): _e("wide_resnet50_2"),
    ("imagenet", "Linf", "Standard_R50"): _e("resnet50", file=False),
    ("imagenet", "Linf", "Chen2024Data_WRN_50_2"): _e("wide_resnet50_2", RAW, wrapped=False),
    ("imagenet", "corruptions", "Erichson2022NoisyMix"): _e("resnet50"),
    ("imagenet", "corruptions", "Erichson2022NoisyMix_new"): _e("resnet50"),
    ("imagenet", "corruptions", "Geirhos2018_SIN"): _e("resnet50"),
    ("imagenet", "corruptions", "Geirhos2018_SIN_IN"): _e("resnet50"),
    ("imagenet", "corruptions", "Geirhos2018_SIN_IN_IN"): _e("resnet50"),
    ("imagenet", "corruptions", "Hendrycks2020Many"): _e("resnet50"),
    ("imagenet", "corruptions", "Hendrycks2020AugMix"): _e("resnet50"),
    ("imagenet", "corruptions", "Salman2020Do_50_2_Linf"): _e("wide_resnet50_2"),
    ("imagenet", "corruptions", "Standard_R50"): _e("resnet50", file=False),
}
DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = ("Linf", "L2", "corruptions")


def supported_text() -> str:
    names = sorted({n for (_, _, n) in ENTRIES})
    return f"robustify converts these robustbench {VERSION} ImageNet entries (torchvision ResNets): {', '.join(names)}"


def find(name: str, dataset: str | None = None, threat: str | None = None) -> tuple[tuple[str, str, str],
                                                                                   dict[str, Any]]:
    """The table row of entry ``name`` (optionally pinned to a dataset and threat model), or one line saying it is
    not an entry robustify converts and which ones it does."""
    rows = [(k, v) for k, v in ENTRIES.items() if k[2] == name and (dataset is None or k[0] == dataset)
            and (threat is None or k[1] == threat)]
    if rows:
        return rows[0]
    where = "/".join(p for p in (dataset, threat, name) if p)
    raise UserError(f"robustbench entry {where!r} is not one robustify converts: its "
                    "architecture has no timm equivalent checked here (WideResNet-28-10, PreAct ResNets and "
                    f"RobustBench's other own networks are not in timm); {supported_text()}")


def entry_from_path(filename: str) -> tuple[str, str | None, str | None]:
    """``.../imagenet/Linf/Salman2020Do_R50.pt`` -> ("Salman2020Do_R50", "imagenet", "Linf"): where load_model
    keeps the file (the folders are optional)."""
    p = PurePath(filename)
    threat = p.parent.name if p.parent.name in THREATS else None
    dataset = p.parent.parent.name if threat and p.parent.parent.name in DATASETS else None
    return p.name.split(".")[0], dataset, threat


def guess_arch(filename: str) -> str | None:
    name, dataset, threat = entry_from_path(filename)
    rows = [v for k, v in ENTRIES.items() if k[2] == name and (dataset is None or k[0] == dataset)
            and (threat is None or k[1] == threat)]
    return rows[0]["arch"] if rows else None


def is_entry_file(filename: str) -> bool:
    """Whether a file name is a robustbench entry's (``NAME.pt``): ``--format auto`` picks this converter then."""
    return guess_arch(filename) is not None


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def convert(obj: Any, arch: str, options: Mapping[str, Any]) -> Converted:
    what = options.get("what", "checkpoint")
    name, dataset, threat = entry_from_path(str(options.get("filename") or ""))
    name = options.get("entry") or name
    dataset, threat = options.get("dataset") or dataset, options.get("threat") or threat
    mean, std = options.get("mean"), options.get("std")
    try:
        key, row = find(name, dataset, threat)
    except UserError:
        if not (mean and std):  # an entry robustify does not know: only with the user's normalization
            raise
        key, row = (dataset or "?", threat or "?", name), {"arch": arch, "mean": mean, "std": std,
                                                           "preprocessing": None, "wrapped": True}
    if row["arch"] != arch:
        raise UserError(f"{what}: robustbench entry {key[0]}/{key[1]}/{key[2]} is a {row['arch']}, not --arch {arch}")
    if not isinstance(obj, Mapping):
        raise UserError(f"{what} is not a robustbench checkpoint (a state dict); found {type(obj).__name__}")
    wrapper = "state_dict" if "state_dict" in obj else "last" if "last" in obj else None
    inner = obj[wrapper] if wrapper else obj
    if wrapper == "last" and isinstance(inner, Mapping) and "state_dict" in inner:
        inner = inner["state_dict"]
    state = tensors_only(inner, f"{what}" + (f"['{wrapper}']" if wrapper else ""))
    stripped = [p for p in ("module.", "model.") if any(k.startswith(p) for k in state)]
    for p in stripped:  # load_model's order: module. first, then model.
        state = _strip(state, p)
    dropped = [f"entries beside the state dict: {', '.join(str(k) for k in obj if k != wrapper)}"] \
        if wrapper and len(obj) > 1 else []
    file_norm = [k for k in ("normalize.mean", "normalize.std") if k in state]
    if file_norm:  # a state dict of the whole Sequential (normalizer included): its buffers must agree with the entry
        fm, fs = (tuple(float(v) for v in state.pop(k).flatten()) for k in ("normalize.mean", "normalize.std"))
        if any(abs(a - b) > 1e-6 for a, b in zip(fm + fs, tuple(row["mean"]) + tuple(row["std"]), strict=True)):
            raise UserError(f"{what}: its normalize.mean/std {fm}/{fs} differ from robustbench entry {key[2]}'s "
                            f"{row['mean']}/{row['std']}; not that entry's file")
        dropped.append("normalize.mean/std (the entry's normalization, moved to pretrained_cfg)")
    notes = [f"robustbench {VERSION} entry {key[0]}/{key[1]}/{key[2]}: "
             + (f"its model normalizes [0,1] inputs with mean {tuple(row['mean'])}, std {tuple(row['std'])} "
                "(moved to pretrained_cfg)" if row["wrapped"] else "its network takes [0,1] pixels unnormalized "
                "(pretrained_cfg mean 0, std 1)")]
    if stripped:
        notes.append(f"key prefixes removed as robustbench's load_model removes them: {', '.join(stripped)}")
    if row.get("preprocessing") == "Crop288":
        notes.append("robustbench evaluates this entry on a 288x288 centre crop of the image without resizing; "
                     "timm's pipeline resizes first (crop_pct 1.0)")
    cfg = dict(PREPROCESSING.get(row.get("preprocessing") or "", {}))
    return Converted(state, tuple(row["mean"]), tuple(row["std"]), dropped, notes, cfg)


CONVERTER = register(Converter(
    name="robustbench",
    description="RobustBench model-zoo .pt files (DATASET/THREAT/NAME.pt as robustbench.utils.load_model reads "
                "them): the entry's normalization into pretrained_cfg",
    convert=convert, safe_globals=SAFE_GLOBALS, arch_map={},
    checked_against=f"robustbench {VERSION}", guess_arch=guess_arch))
