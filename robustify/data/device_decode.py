"""``data.decode: device``: the JPEGs of ``augment: rrc-flip`` decoded on the GPU instead of in the CPU workers.

The CPU route (:func:`robustify.data.preprocessing.rrc_flip`) needs about 1.6-2.7 cores per GPU at the 1,300 images/s
an FGSM-RS ResNet-50 bf16 step takes on one H100 (BENCHMARKS.md); on a node short of cores the decode becomes the
bottleneck. Here the workers do only what needs no pixels (read the row, draw timm's crop box and flip from the
example's seed, :func:`~robustify.data.preprocessing.rrc_params`) and hand the encoded bytes over; the training
process decodes the batch with torchvision's ``decode_jpeg`` on the model's device (nvJPEG), crops, resizes
(antialiased, as the CPU route) and flips there. Rows torchvision cannot decode there (PNG, CMYK, a JPEG nvJPEG
rejects) are decoded on the CPU by the CPU route, so the batch is the same whatever the mix.

Why by hand: neither timm nor torchvision has a batched crop-resize-flip after a device decode; NVIDIA DALI would,
with its own loader, as a large CUDA-only dependency. The same code runs on the CPU (``device="cpu"``), which is how
the test suite checks it: there it is the CPU route's own torch path (same decoder, same uint8 kernel), bit-identical
wherever that path applies (crops under twice the output size; larger ones the CPU route decodes at reduced size).
On CUDA nvJPEG's IDCT and the float resize differ from libjpeg-turbo's by about a level per pixel; the figures
(images/s, GPU time taken from the step) are unmeasured until a GPU run (``scripts/gpu_check.py``).

CUDA streams: torchvision's batched CUDA decode writes its outputs from nvJPEG's own stream without waiting for the
caller's (pytorch/vision PR #9606 measured corrupted images on an H100), so each group is decoded only after the
current stream has finished its queued work (the previous step's kernels, the previous group's resizes): one host
synchronisation per group of images, between training steps.

Must not: change the crop, the flip or the example's seed (resume stays exact), or hold more than
:data:`PIXEL_BUDGET` decoded pixels (or one image) on the device at once beyond the batch itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError, first_line
from .preprocessing import TORCH_MODES, image_bytes, open_lazily, resize_uint8, rrc_flip, rrc_params

MIN_TORCHVISION = (0, 19)  # decode_jpeg takes a list of images (one batched call on CUDA) from 0.19 on
# 32 of ImageNet's typical 500x375 images (18 MB of RGB) at a time; a 4000x3000 photo is decoded alone (36 MB)
PIXEL_BUDGET = 32 * 500 * 375


@dataclass
class EncodedBatch:
    """A batch as the workers leave it for the device: per example the JPEG bytes with its crop box (top, left,
    height, width) and flip, or the pixels the worker had to decode itself (``decoded``). The bytes stay ``bytes``
    until the training process: a tensor per image would cross from a worker as its own shared-memory segment and
    file descriptor (128 per batch), where bytes are pickled with the batch."""

    data: list[bytes | None]
    boxes: list[tuple[int, int, int, int]]
    flips: list[bool]
    where: list[str]
    out_hw: tuple[int, int]
    interpolation: str
    seeds: list[int] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)  # full-size width x height of each encoded image (its header)
    decoded: dict[int, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.data)

    def add(self, value: Any, seed: int, where: str) -> None:
        """Append one undecoded image cell: its crop and flip drawn from ``seed`` here, its pixels left for the device
        (or decoded here when the device cannot take them)."""
        img = open_lazily(value)
        data = image_bytes(value)
        box, flip = rrc_params(img, seed)
        if data is None or img.format != "JPEG" or img.mode not in ("RGB", "L"):
            self.decoded[len(self.data)] = rrc_flip(img, self.out_hw, self.interpolation, seed, data=data)
            data = None
        self.data.append(data)
        self.boxes.append(box)
        self.flips.append(flip)
        self.where.append(where)
        self.seeds.append(seed)
        self.pixels.append(img.size[0] * img.size[1] if data is not None else 0)

    def pin_memory(self) -> EncodedBatch:
        """The DataLoader's ``pin_memory`` hook: the rows decoded on the CPU go to the device without blocking."""
        self.decoded = {i: x.pin_memory() for i, x in self.decoded.items()}
        return self


def torchvision_decoder():
    """torchvision's ``decode_jpeg`` when it takes a batch (0.19 on; deprecated by 0.29 in favour of TorchCodec),
    else None."""
    try:
        import torchvision
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    version = tuple(int(p) for p in torchvision.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    return decode_jpeg if version >= MIN_TORCHVISION else None


def check_plan(name: str, streaming: bool, interpolation: str) -> None:
    """``data.decode=device``'s rules on the data it would decode, in one place: a streamed set (``streaming``: the
    resolved ``data.streaming``), an interpolation torch antialiases and a torchvision with the batched decoder. The
    preflight asks with the recipe's values (before anything loads, the dry run too), ``build_loaders`` again with
    the resolved ones (``auto`` streaming, the backbone's own interpolation)."""
    if not streaming:
        raise UserError(f"data.decode=device applies to streamed data sets; {name!r} is read map-style (set "
                        "data.streaming=true, or data.decode=workers)")
    check_decoder(interpolation)


def check_decoder(interpolation: str) -> None:
    """One line when ``data.decode=device`` cannot work with this torchvision (no batched decoder) or this
    interpolation (no antialiased torch kernel): checked before any data is read."""
    if torchvision_decoder() is None:
        try:
            import torchvision

            have = f"torchvision {torchvision.__version__}"
        except ImportError:
            have = "no torchvision"
        raise UserError(f"data.decode=device needs torchvision >= {'.'.join(map(str, MIN_TORCHVISION))} with "
                        f"decode_jpeg (here: {have}); use data.decode=workers")
    if interpolation not in TORCH_MODES:
        raise UserError(f"data.decode=device resizes with torch, which has no antialiased {interpolation!r} "
                        f"interpolation; use data.interpolation {' or '.join(TORCH_MODES)}, or data.decode=workers")


def check_device(device: torch.device | str) -> None:
    """One line when the run's device cannot take the decode: not CUDA (the decode would run in the training process,
    slower than the workers), or a torchvision built without nvJPEG (probed on a tiny JPEG)."""
    import io

    from PIL import Image

    device = torch.device(device)
    if device.type != "cuda":
        raise UserError(f"data.decode=device decodes on a CUDA GPU; this run is on {device.type} (the decode would "
                        "run in the training process, slower than the workers): use data.decode=workers")
    check_decoder("bilinear")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 64, 32)).save(buf, format="JPEG")
    try:
        _decode_group([buf.getvalue()], device)
    except RuntimeError as e:
        raise UserError(f"data.decode=device: torchvision cannot decode JPEGs on {device} ({_first_line(e)}); use "
                        "data.decode=workers") from None


def _first_line(e: BaseException) -> str:
    first = first_line(e)
    return first.rsplit(", ", 1)[-1] if ".cpp:" in first else first  # not torchvision's source path


def _decode_group(data: list[bytes], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode

    if device.type == "cuda":  # nvJPEG writes from its own stream: let the current one finish first (docstring)
        torch.cuda.current_stream(device).synchronize()
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    return torchvision_decoder()(tensors, mode=ImageReadMode.RGB, device=device)


def _resize(crop: torch.Tensor, out_hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    """(1,C,h,w) uint8 -> (1,C,H,W), antialiased: torch's uint8 kernel on the CPU (the CPU route's, uint8 out), float
    on CUDA (no uint8 antialiased kernel there; the caller rounds into its uint8 output)."""
    if crop.device.type == "cpu":
        return resize_uint8(crop, out_hw, interpolation)
    x = crop.float()
    # CUDA's antialiased kernel refuses very large reductions (its filter must fit in shared memory: about x90 for
    # bilinear); far beyond what ImageNet at 224 px needs, e.g. a 4000 px photo cropped for a 32 px input, a box
    # filter first brings the reduction to at most x32
    k = int(min(x.shape[-2] / out_hw[0], x.shape[-1] / out_hw[1]) // 16)
    if k >= 2:
        x = torch.nn.functional.avg_pool2d(x, k, k)
    out = torch.nn.functional.interpolate(x, size=out_hw, mode=interpolation, antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255)


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


def _cpu_route(batch: EncodedBatch, i: int) -> torch.Tensor:
    """Row ``i`` by the CPU route (the workers' decode), for a JPEG the device rejects; one line if it fails too."""
    import io

    from PIL import Image

    try:
        return rrc_flip(Image.open(io.BytesIO(batch.data[i])), batch.out_hw, batch.interpolation, batch.seeds[i],
                        data=batch.data[i])
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken image
        raise UserError(f"{batch.where[i]}: the image cannot be decoded ({_first_line(e)}); remove or fix that "
                        "row") from None


def decode_batch(batch: EncodedBatch, device: torch.device | str, budget: int = PIXEL_BUDGET) -> torch.Tensor:
    """The training process's half: uint8 (N,C,H,W) on ``device``. Full-size images are decoded a group at a time,
    each group at most ``budget`` pixels (or one image); a group the device rejects is decoded image by image, and an
    image it rejects goes through the CPU route (which names the row if it cannot decode it either)."""
    device = torch.device(device)
    h, w = batch.out_hw
    out = torch.empty((len(batch), 3, h, w), dtype=torch.uint8, device=device)
    for i, x in batch.decoded.items():
        out[i].copy_(x, non_blocking=True)
    todo = [i for i in range(len(batch)) if batch.data[i] is not None]
    for group in _chunks(todo, batch.pixels, budget):
        try:
            images: list[torch.Tensor | None] = list(_decode_group([batch.data[i] for i in group], device))
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError:  # one image the device rejects fails the whole call: find it
            images = []
            for i in group:
                try:
                    images += _decode_group([batch.data[i]], device)
                except torch.cuda.OutOfMemoryError:
                    raise
                except RuntimeError:
                    images.append(None)
        for i, img in zip(group, images, strict=True):
            if img is None:
                out[i].copy_(_cpu_route(batch, i), non_blocking=True)
                continue
            top, left, ch, cw = batch.boxes[i]
            r = _resize(img[None, :, top:top + ch, left:left + cw], (h, w), batch.interpolation)[0]
            out[i].copy_(r.flip(-1) if batch.flips[i] else r)
        del images
    return out
