"""``data.decode: device``: the JPEGs of ``augment: rrc-flip`` decoded on the accelerator instead of in the CPU workers.

The CPU route (:func:`robustify.data.preprocessing.rrc_flip`) needs about 1.6-2.7 cores per GPU at the 1,300 images/s
an FGSM-RS ResNet-50 bf16 step takes on one H100 (BENCHMARKS.md); on a node short of cores the decode becomes the
bottleneck. Here the workers do only what needs no pixels (read the row, draw timm's crop box and flip from the
example's seed, :func:`~robustify.data.preprocessing.rrc_params`) and hand the encoded bytes over; the main process
decodes the batch with torchvision's ``decode_jpeg`` on the model's device (nvJPEG on CUDA), crops, resizes
(antialiased, as the CPU route) and flips there. Rows torchvision cannot decode as JPEG (PNG, CMYK) are decoded by the
worker on the CPU as before, so the batch is the same whatever the mix.

Why by hand: neither timm nor torchvision has a batched crop-resize-flip after a device decode; NVIDIA DALI would,
but it is a large CUDA-only dependency. The same code runs on the CPU (``device="cpu"``), which is how the test suite
checks it: there it is the CPU route's own torch path (same decoder, same uint8 kernel), bit-identical wherever that
path applies. On CUDA nvJPEG's IDCT and the float resize differ from libjpeg-turbo's by a level or so per pixel; the
figures (images/s, GPU time taken from the step) are unmeasured until a GPU run (``scripts/gpu_check.py``).

Must not: change the crop, the flip or the example's seed (resume stays exact), or hold more than
:data:`PIXEL_BUDGET` decoded pixels (or one image) on the device at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError
from .preprocessing import _TORCH_MODES, image_bytes, open_lazily, rrc_flip, rrc_params


@dataclass
class EncodedBatch:
    """A batch as the workers leave it for the device: per example the JPEG bytes (1-D uint8) with its crop box
    (top, left, height, width) and flip, or the pixels the worker had to decode itself (``decoded``)."""

    data: list[torch.Tensor | None]
    boxes: list[tuple[int, int, int, int]]
    flips: list[bool]
    where: list[str]
    out_hw: tuple[int, int]
    interpolation: str
    pixels: list[int] = field(default_factory=list)  # full-size height x width of each encoded image (its header)
    decoded: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data)

    def add(self, value: Any, seed: int, where: str) -> None:
        """One undecoded image cell, the example's augmentation seeded by ``seed``."""
        data, box_or_pixels, flip, size = encode_example(value, self.out_hw, self.interpolation, seed)
        if data is None:
            self.decoded[len(self.data)] = box_or_pixels
        self.data.append(data)
        self.boxes.append(box_or_pixels if data is not None else (0, 0, 0, 0))
        self.flips.append(flip)
        self.where.append(where)
        self.pixels.append(size if data is not None else 0)


def torchvision_decoder():
    """torchvision's ``decode_jpeg`` (deprecated by torchvision 0.29 in favour of TorchCodec), or None."""
    try:
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return decode_jpeg


def check_available(interpolation: str) -> None:
    """One line when ``data.decode=device`` cannot work here (no decoder, or an interpolation torch cannot run)."""
    if torchvision_decoder() is None:
        raise UserError("data.decode=device needs torchvision's decode_jpeg, which this torchvision lacks; use "
                        "data.decode=workers")
    if interpolation not in _TORCH_MODES:
        raise UserError(f"data.decode=device resizes with torch, which has no antialiased {interpolation!r}; use "
                        f"data.interpolation {' or '.join(_TORCH_MODES)}, or data.decode=workers")


def encode_example(value: Any, out_hw: tuple[int, int], interpolation: str,
                   seed: int) -> tuple[Any, Any, bool, int]:
    """A worker's share of one example: (bytes, box, flip, width x height) for a JPEG the device can decode, else
    (None, pixels, flip, 0) decoded here by the CPU route (the same box and flip: both come from ``seed``)."""
    img = open_lazily(value)
    data = image_bytes(value)
    box, flip = rrc_params(img, seed)
    if data is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), box, flip, img.size[0] * img.size[1]
    return None, rrc_flip(img, out_hw, interpolation, seed, data=data), flip, 0


def _resize(crop: torch.Tensor, out_hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    """(1,C,h,w) uint8 -> (1,C,H,W) uint8, antialiased: torch's uint8 kernel on the CPU (the CPU route's), float on
    accelerators (CUDA has no uint8 antialiased kernel)."""
    if crop.device.type == "cpu":
        return torch.nn.functional.interpolate(crop, size=out_hw, mode=interpolation, antialias=True,
                                               align_corners=False)
    out = torch.nn.functional.interpolate(crop.float(), size=out_hw, mode=interpolation, antialias=True,
                                          align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _decode_chunk(decode_jpeg, data: list[torch.Tensor], where: list[str], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # name the row: decode one at a time to find it
        for d, w in zip(data, where, strict=True):
            try:
                decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                first = first.rsplit(", ", 1)[-1] if ".cpp:" in first else first  # not torchvision's source path
                raise UserError(f"{w}: the image cannot be decoded ({first}); remove or fix that row") from None
        raise


def _chunks(todo: list[int], pixels: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of ``todo`` whose full-size images hold at most ``budget`` pixels (one image at least)."""
    out: list[list[int]] = []
    total = budget + 1
    for i in todo:
        if total + pixels[i] > budget:
            out.append([])
            total = 0
        out[-1].append(i)
        total += pixels[i]
    return out


# 32 of ImageNet's typical 500x375 images (18 MB of RGB) at a time; a 4000x3000 photo is decoded alone (36 MB)
PIXEL_BUDGET = 32 * 500 * 375


def decode_batch(batch: EncodedBatch, device: torch.device | str, budget: int = PIXEL_BUDGET) -> torch.Tensor:
    """The main process's half: uint8 (N,C,H,W) on ``device``; full-size images are decoded a group at a time, each
    group at most ``budget`` pixels (or one image), so the device holds a bounded amount of decoded pixels."""
    decode_jpeg = torchvision_decoder()
    device = torch.device(device)
    h, w = batch.out_hw
    out = torch.empty((len(batch), 3, h, w), dtype=torch.uint8, device=device)
    for i, x in batch.decoded.items():
        out[i] = x.to(device, non_blocking=True)
    todo = [i for i in range(len(batch)) if batch.data[i] is not None]
    for idx in _chunks(todo, batch.pixels, budget):
        images = _decode_chunk(decode_jpeg, [batch.data[i] for i in idx], [batch.where[i] for i in idx], device)
        for i, img in zip(idx, images, strict=True):
            top, left, ch, cw = batch.boxes[i]
            r = _resize(img[None, :, top:top + ch, left:left + cw], (h, w), batch.interpolation)[0]
            out[i] = r.flip(-1) if batch.flips[i] else r
        del images
    return out
