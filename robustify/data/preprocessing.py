"""The one preprocessing: how a stored image becomes the [0,1] tensor that training, the probe, evaluation and the
exported ``pretrained_cfg`` all agree on.

:class:`Preprocessing` is derived once from the backbone's timm data config and the recipe's ``data`` section, and
every consumer asks it for its transform, so ``robustify finetune``, ``robustify eval`` and plain timm users of the
exported folder (``resolve_data_config`` + ``create_transform``) resize, crop and interpolate identically.
The transforms themselves are timm's (``create_transform`` with identity mean/std: normalization lives inside the
model). Written by hand here: the conversion of odd image modes (16-bit, float, palette) to RGB, which PIL's
``convert("RGB")`` gets wrong for 16-bit images (it clips instead of scaling), and the seeded per-example
flip-and-crop, whose randomness must be a pure function of (seed, epoch, example) for exact resumption.

Must not: differ between training, probe, evaluation and export.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """Input size, interpolation and crop shared by every consumer.

    ``input_size`` is the size images are decoded to, which is also the resolution the attack lives at.
    ``model_input_size`` is what the backbone sees; when it differs (``data.attack_size``), the model resizes inside
    (see :class:`robustify.models.RobustModel`).
    """

    input_size: tuple[int, int, int]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    model_input_size: tuple[int, int, int] | None = None
    crop_mode: str = "center"
    # training only (augment: timm): timm's auto-augment policy string (data.auto_augment); never in the probe,
    # the evaluation or the exported pretrained_cfg
    auto_augment: str | None = None

    @classmethod
    def from_data_config(cls, data_config: dict[str, Any], cfg: Any = None) -> Preprocessing:
        """The backbone's timm data config (``resolve_data_config``) plus the recipe's ``data`` section.

        crop_pct: ``data.crop_pct`` when set; else the backbone's own when images are fed at its native size; else
        1.0 (a resolution chosen by the recipe, e.g. CIFAR's 32 px, is resized whole, not centre-cropped).
        """
        c, h, w = (int(v) for v in data_config["input_size"])
        image_size = getattr(cfg, "image_size", None)
        attack_size = getattr(cfg, "attack_size", None)
        model_size = (c, image_size, image_size) if image_size else (c, h, w)
        crop_pct = getattr(cfg, "crop_pct", None)
        if crop_pct is None:
            native = model_size == (c, h, w) and not attack_size
            crop_pct = float(data_config.get("crop_pct", 1.0)) if native else 1.0
        interpolation = getattr(cfg, "interpolation", None) or data_config.get("interpolation", "bilinear")
        input_size = (c, attack_size, attack_size) if attack_size else model_size
        return cls(input_size=tuple(input_size), interpolation=str(interpolation), crop_pct=float(crop_pct),
                   mean=tuple(float(v) for v in data_config.get("mean", cls.mean)),
                   std=tuple(float(v) for v in data_config.get("std", cls.std)),
                   model_input_size=tuple(model_size) if tuple(model_size) != tuple(input_size) else None,
                   auto_augment=getattr(cfg, "auto_augment", None))

    @property
    def backbone_input_size(self) -> tuple[int, int, int]:
        return tuple(self.model_input_size or self.input_size)

    def transform(self):
        """PIL image -> float tensor in [0,1] at ``input_size``: timm's eval transform without normalization."""
        return eval_transform(self.input_size, self.interpolation, self.crop_pct)

    def train_transform(self):
        """timm's training augmentation at ``input_size`` (RandomResizedCrop, flip, colour jitter or the auto-augment
        policy), no normalization."""
        return train_transform(self.input_size, self.interpolation, self.auto_augment)

    def pretrained_cfg(self) -> dict[str, Any]:
        """The fields of timm's ``pretrained_cfg`` that make ``create_transform`` reproduce :meth:`transform`.

        With ``model_input_size`` (attack at a smaller size, resized inside the model) the backbone's own input size
        is what a plain timm user must feed; robustify's exact pipeline is recorded in :meth:`record`.
        """
        return {"input_size": list(self.backbone_input_size), "interpolation": self.interpolation,
                "crop_pct": self.crop_pct if self.model_input_size is None else 1.0, "crop_mode": self.crop_mode,
                "mean": list(self.mean), "std": list(self.std), "test_input_size": None, "test_crop_pct": None}

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d["attack_input_size"] = list(self.input_size)
        d["input_size"] = list(self.input_size)
        d["model_input_size"] = list(self.backbone_input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.auto_augment is None:  # records written before the key read the same
            del d["auto_augment"]
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Preprocessing:
        inp = tuple(d["input_size"])
        model = tuple(d.get("model_input_size") or inp)
        return cls(input_size=inp, interpolation=d.get("interpolation", "bilinear"),
                   crop_pct=float(d.get("crop_pct", 1.0)), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   model_input_size=model if model != inp else None, crop_mode=d.get("crop_mode", "center"),
                   auto_augment=d.get("auto_augment"))


def eval_transform(input_size: tuple[int, int, int], interpolation: str = "bilinear", crop_pct: float = 1.0):
    """timm's eval transform (resize, center crop) with identity normalization: pixels stay in [0,1]."""
    from timm.data import create_transform

    return create_transform(input_size=tuple(input_size), interpolation=interpolation, crop_pct=crop_pct,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), is_training=False)


def train_transform(input_size: tuple[int, int, int], interpolation: str = "bilinear",
                    auto_augment: str | None = None):
    """timm's training augmentation (random resized crop, flip, then colour jitter or, with ``auto_augment``, timm's
    RandAugment / AutoAugment / AugMix policy of that name), without normalization."""
    from timm.data import create_transform

    transform = create_transform(input_size=tuple(input_size), interpolation=interpolation, mean=(0.0, 0.0, 0.0),
                                 std=(1.0, 1.0, 1.0), is_training=True, auto_augment=auto_augment)
    return posterize_zero_bits(transform) if auto_augment else transform


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize op, with 0 bits kept giving the black image it gave before Pillow 13 (which refuses 0)."""
    from timm.data import auto_augment

    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)  # every bit masked off: what ImageOps.posterize(img, 0) returned
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def posterize_zero_bits(transform):
    """timm's RandAugment with increasing posterize (``inc1``, as in ``rand-m9-mstd0.5-inc1``) keeps 4 - 4 = 0 bits
    at the top magnitude, which the noise of ``mstd`` reaches now and then; Pillow 13 raises on 0 bits (earlier
    Pillow returned a black image), so a run crashes at a random minibatch. Each posterize op of the policy is
    pointed at :func:`_posterize` (timm's function, plus the black image at 0 bits); nothing else changes."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", []):
        groups = getattr(step, "policy", None) or [getattr(step, "ops", [])]  # AutoAugment's sub-policies, or ops
        for op in (op for group in groups for op in group):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: grayscale, palette and RGBA convert as timm's loader does (``convert("RGB")``);
    16-bit and 32-bit integer images are scaled down (PIL would clip them to white), float images clipped to [0,255]."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def decode_one(img: Image.Image, transform) -> torch.Tensor:
    """One PIL image -> uint8 (C,H,W) through ``transform`` (float [0,1] out), exactly as stored in memory."""
    return (transform(to_rgb(img)) * 255.0).round_().to(torch.uint8)


def decode_all(ds, transform, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize every image once into a uint8 (N,C,H,W) tensor (the in-memory fast path; evaluation's fixed
    subset). Reads the data set in chunks; ``desc`` shows a progress bar."""
    from tqdm.auto import tqdm

    xs: list[torch.Tensor] = []
    off = {"disable": True} if desc is None else {}  # pass disable only to switch off, so TQDM_DISABLE still works
    with tqdm(total=len(ds), desc=desc, unit="ex", leave=False, **off) as bar:
        for batch in ds.iter(batch_size=256):
            xs.extend(decode_one(img, transform) for img in batch["image"])
            bar.update(len(batch["image"]))
    return torch.stack(xs), torch.tensor(ds["label"], dtype=torch.long)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 batches (the in-memory path) -> float in [0,1]; float batches pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def example_seed(seed: int, epoch: int, index: int, rank: int = 0) -> int:
    """A 63-bit seed for one example's augmentation, a pure function of its coordinates (SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, epoch, index, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def flip_crop(x: torch.Tensor, pad: int | None = None, seeds: list[int] | None = None) -> torch.Tensor:
    """CIFAR-style augmentation on a batch: random crop after reflect padding, random horizontal flip.

    ``seeds`` (one per example, see :func:`example_seed`) make each example's crop and flip independent of the
    batch it lands in; without them the global torch RNG is used, on ``x``'s device."""
    x = to_unit(x)
    n, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    if seeds is None:
        i = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
        j = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
        flip = torch.rand(n, device=x.device) < 0.5
    else:
        draws = np.array([np.random.default_rng(s).integers(0, [2 * pad + 1, 2 * pad + 1, 2]) for s in seeds])
        draws = torch.from_numpy(draws.reshape(n, 3)).to(x.device)
        i, j, flip = draws[:, 0], draws[:, 1], draws[:, 2] == 1
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (i[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (j[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[
        None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # timm's (and torchvision's) RandomResizedCrop defaults
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def open_lazily(value: Any) -> Image.Image:
    """A data set's image cell (``{"bytes", "path"}`` as ``datasets.Image(decode=False)`` stores it, or an already
    decoded PIL image) as a PIL image whose pixels are not decoded yet, so :func:`rrc_flip` can still ask the JPEG
    decoder for a reduced size (``datasets.Image().decode_example`` decodes the whole image at once)."""
    import io

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    import datasets

    return datasets.Image().decode_example(value)


def rrc_params(img: Image.Image, seed: int) -> tuple[tuple[int, int, int, int], bool]:
    """The random-resized-crop box (top, left, height, width) and the flip of one example, drawn exactly as timm's
    ``RandomResizedCropAndInterpolation`` draws them (scale 0.08-1, ratio 3/4-4/3), from ``seed``. Reads only the
    image's size, which PIL knows from the header: the pixels need not be decoded."""
    from timm.data.transforms import RandomResizedCropAndInterpolation

    state = random.getstate()
    try:
        random.seed(seed)
        box = RandomResizedCropAndInterpolation.get_params(img, RRC_SCALE, RRC_RATIO)
        return tuple(int(v) for v in box), random.random() < 0.5
    finally:
        random.setstate(state)


def rrc_flip(img: Image.Image, out_hw: tuple[int, int], interpolation: str, seed: int,
             draft: bool = True, data: bytes | None = None) -> torch.Tensor:
    """``augment: rrc-flip``: Fast AT's ImageNet augmentation (random-resized crop, horizontal flip; Wong et al.
    2020), uint8 (C,H,W), built for decode speed. Why by hand: timm's transform decodes the full image with PIL,
    crops, resizes with PIL, converts to float and jitters colour; here, with timm's own box and flip draws
    (:func:`rrc_params`):

    - when the crop is at least twice the output size, the JPEG is decoded at the largest DCT reduction (1/2, 1/4,
      1/8: PIL's ``draft``) that keeps the crop at or above it, then cropped and resized in one PIL call
      (``resize(box=...)``): a large image whose crop is small is decoded at a fraction of its pixels;
    - otherwise (most ImageNet crops at 224 px: a 500x375 image cannot be reduced), and when the bytes are given
      (``data``), the JPEG is decoded by torchvision's ``decode_jpeg`` (libjpeg-turbo, about 1.4x PIL's decode
      here) and the crop resized by torch's antialiased uint8 ``interpolate`` (AVX2 kernels, about 1.4x PIL's
      bilinear resize): the same box, within a few levels of PIL's result per pixel (the equivalence test);
    - anything else (not a JPEG, an unreadable or CMYK JPEG for torchvision, a torchvision without ``decode_jpeg``,
      which 0.29 deprecates in favour of TorchCodec, ``draft=False``: the reference) goes through PIL at full size.
    """
    (top, left, h, w), flip = rrc_params(img, seed)
    full_w, full_h = img.size
    lazy = img.format == "JPEG" and getattr(img, "tile", None)  # not decoded yet
    k = next(k for k in (8, 4, 2, 1) if k == 1 or (h / k >= out_hw[0] and w / k >= out_hw[1])) if draft else 1
    if draft and lazy and k == 1 and data is not None and interpolation in TORCH_MODES:
        out = _torch_crop_resize(data, (top, left, h, w), out_hw, interpolation)
        if out is not None:
            return out.flip(-1).contiguous() if flip else out.contiguous()
    if draft and lazy and k > 1:
        img.draft("RGB", (-(-full_w // k), -(-full_h // k)))
    sx, sy = full_w / img.size[0], full_h / img.size[1]
    box = (left / sx, top / sy, (left + w) / sx, (top + h) / sy)
    out = to_rgb(img).resize((out_hw[1], out_hw[0]), _PIL_FILTERS.get(interpolation, Image.Resampling.BILINEAR),
                             box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).contiguous()


TORCH_MODES = ("bilinear", "bicubic")  # torch's antialiased uint8 resize kernels


def _torch_crop_resize(data: bytes, box: tuple[int, int, int, int], out_hw: tuple[int, int],
                       interpolation: str) -> torch.Tensor | None:
    """Decode ``data`` (JPEG) with torchvision, crop ``box`` (top, left, h, w) and resize it to ``out_hw`` with torch's
    antialiased uint8 ``interpolate``; None when torchvision cannot decode it (the caller falls back to PIL)."""
    try:  # deprecated by torchvision 0.29 in favour of TorchCodec; without it, the PIL route
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    top, left, h, w = box
    return resize_uint8(x[None, :, top:top + h, left:left + w], out_hw, interpolation)[0]


def resize_uint8(crop: torch.Tensor, out_hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    """(1,C,h,w) uint8 -> (1,C,H,W) uint8 with torch's antialiased uint8 kernel (AVX2 on the CPU): the one resize of
    rrc-flip's torch route, shared by ``data.decode=device`` on the CPU so both give the same pixels."""
    return torch.nn.functional.interpolate(crop, size=out_hw, mode=interpolation, antialias=True, align_corners=False)


def image_bytes(value: Any) -> bytes | None:
    """The encoded bytes of a data set's image cell (``{"bytes": ...}``), None for a path or a decoded image."""
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])
    return None


def make_example(img, pre: Preprocessing, augment: str, seed: int, transforms: dict[str, Any]) -> torch.Tensor:
    """One training example: uint8 (no augmentation, rrc-flip) or float in [0,1] (flip-crop, timm), seeded by
    ``seed``. ``img``: a PIL image, or (rrc-flip) an undecoded image cell, see :func:`open_lazily`."""
    if augment == "rrc-flip":
        return rrc_flip(open_lazily(img), tuple(pre.input_size[1:]), pre.interpolation, seed, data=image_bytes(img))
    if augment == "timm":
        tf = transforms.setdefault("train", pre.train_transform())
        return seeded_transform(tf, img, seed)
    tf = transforms.setdefault("eval", pre.transform())
    x = decode_one(img, tf)
    return flip_crop(x[None], seeds=[seed])[0] if augment == "flip-crop" else x


def seeded_transform(transform, img: Image.Image, seed: int) -> torch.Tensor:
    """Apply a random (timm) transform with the Python, NumPy and torch RNGs seeded for this example only (timm's
    RandAugment picks its operations with NumPy's global RNG, AugMix draws its weights there), so an example's
    augmentation is a pure function of ``seed`` whichever worker, process or world size decodes it."""
    state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)  # NumPy's legacy seed takes 32 bits of the well-mixed example seed
        torch.manual_seed(seed)
        try:
            return transform(to_rgb(img))
        finally:
            random.setstate(state)
            np.random.set_state(np_state)
