"""``robustify bench --data SPEC``: is the data pipeline or the training step what bounds training speed?

The pipeline is timed alone, in this process (one worker's worth): examples of the data set read through
:func:`robustify.data.get_dataset` (the images decode when a row is read), then transformed as training does it --
timm's training transform (random-resized crop, flip; ``--augment timm``) or its eval transform (resize, centre
crop; every other ``data.augment``, whose flip-crop runs on the batch tensor inside the step) -- to a [0,1] tensor
at the model's input size. That gives images per second per worker; a DataLoader with ``data.num_workers`` workers
delivers at most that many times more, and never more than the CPU cores allow. The step's images per second come
from :func:`robustify.bench.steps.run_bench` on the same model, batch and method; the smaller of the two bounds
training.

Only ``get_dataset`` and timm's transforms are used, so this measures the decode + augment cost whatever loader the
data module builds around it (map-style, cached, or streaming).

Must not: change what the model sees (it measures the pipelines as they are).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import UserError

DEFAULT_IMAGES = 256
ROUNDS = 3  # decode figures: the best of this many interleaved rounds per pipeline


def pipeline_transform(input_size: tuple[int, int, int], augment: str, interpolation: str = "bilinear",
                       crop_pct: float = 1.0):
    """timm's transform to [0,1] tensors (normalisation lives inside robustify's model, so mean 0 and std 1)."""
    from timm.data import create_transform

    return create_transform(input_size, is_training=augment == "timm", interpolation=interpolation,
                            crop_pct=crop_pct, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def time_pipeline(spec: str, split: str, input_size: tuple[int, int, int], augment: str = "none",
                  n_images: int = DEFAULT_IMAGES, workers: int = 2, interpolation: str = "bilinear",
                  crop_pct: float = 1.0) -> dict[str, Any]:
    """Decode + augment ``n_images`` examples of ``spec``/``split`` in this process; images per second per worker."""
    from ..data import get_dataset

    if n_images < 1:
        raise UserError(f"--data-images {n_images} is not accepted; use 1 or more")
    t0 = time.perf_counter()
    ds = get_dataset(spec, split)
    open_seconds = time.perf_counter() - t0
    n = min(n_images, len(ds))
    if n == 0:
        raise UserError(f"data {spec!r} split {split!r} is empty")
    transform = pipeline_transform(input_size, augment, interpolation, crop_pct)
    transform(ds[0]["image"].convert("RGB"))  # first-call setup out of the timing
    decode = augment_s = 0.0
    for i in range(n):
        t0 = time.perf_counter()
        image = ds[i]["image"].convert("RGB")
        t1 = time.perf_counter()
        x = transform(image)
        t2 = time.perf_counter()
        decode += t1 - t0
        augment_s += t2 - t1
    per_worker = n / (decode + augment_s)
    cores = os.cpu_count() or 1
    effective = max(1, min(workers, cores)) if workers > 0 else 1
    return {"data": spec, "split": split, "images": n, "input_size": list(x.shape), "augment": augment,
            "transform": "timm train (random-resized crop, flip)" if augment == "timm" else "timm eval (resize, crop)",
            "open_seconds": open_seconds, "decode_seconds": decode, "augment_seconds": augment_s,
            "images_per_second_per_worker": per_worker, "num_workers": workers, "cpu_count": cores,
            "images_per_second_loader": per_worker * effective}


def verdict(pipeline: dict[str, Any], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each timed method: which of pipeline and step bounds training, and by how much."""
    loader = pipeline["images_per_second_loader"]
    out = []
    for r in steps:
        step = r["images_per_second"]
        out.append({"method": r["method"], "step_images_per_second": step, "loader_images_per_second": loader,
                    "bound": "data" if loader < step else "step",
                    "headroom": loader / step})
    return out


def verdict_lines(report: dict[str, Any]) -> list[str]:
    p = report["data_pipeline"]
    lines = [f"data pipeline ({p['data']}/{p['split']}, {p['transform']}): "
             f"{p['images_per_second_per_worker']:.0f} images/s per worker (decode {p['decode_seconds']:.2f} s + "
             f"augment {p['augment_seconds']:.2f} s for {p['images']} images); with {p['num_workers']} worker(s) on "
             f"{p['cpu_count']} CPUs at most {p['images_per_second_loader']:.0f} images/s"]
    for v in report["bound_by"]:
        what = ("the DATA PIPELINE bounds training: raise data.num_workers, cache the decoded set, or use a smaller "
                "decode" if v["bound"] == "data" else "the training step bounds training (the data pipeline keeps up)")
        lines.append(f"{v['method']}: step {v['step_images_per_second']:.0f} images/s vs loader "
                     f"{v['loader_images_per_second']:.0f} images/s ({v['headroom']:.1f}x): {what}")
    if p["cpu_count"] <= p["num_workers"]:
        lines.append("note: on a CPU-only machine the loader workers and the step share the same cores, so the two "
                     "rates do not simply add up")
    return lines


IMAGENET_LIKE = "imagenet-like"


def imagenet_like_jpegs(n: int, seed: int = 0, size: tuple[int, int] = (500, 375), quality: int = 90) -> list[bytes]:
    """``n`` ImageNet-like JPEGs made here: 500x375 (ImageNet's most common size), quality 90, smooth content with
    fine noise (natural-image-like file sizes, ~50-150 KB, rather than incompressible noise)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        arr = np.asarray(low).astype(np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def decode_figures(n_images: int = DEFAULT_IMAGES, input_size: int = 224, seed: int = 0) -> dict[str, Any]:
    """Images/s on one core of: the bare JPEG decode by PIL and by torchvision (the limit for any pipeline that decodes
    every image; the rrc-flip pipeline decodes with whichever of them applies), a
    reduced-size decode (PIL ``draft``, DCT scaling to 1/2), timm's ``create_transform(is_training=True)`` (decode +
    augment + to tensor), robustify's training pipelines (what a decode worker runs for ``augment: timm``: the same
    timm transform, seeded per example; for ``augment: rrc-flip``: timm's crop and flip draws, decoded and resized
    in one pass, uint8 out) and robustify's evaluation pipeline (resize + centre crop), on the same files."""
    import io

    import datasets
    import torch
    from PIL import Image
    from timm.data import create_transform
    from torchvision.io import ImageReadMode, decode_jpeg

    from ..data.device_decode import EncodedBatch
    from ..data.preprocessing import Preprocessing, make_example

    if n_images < 1:
        raise UserError(f"--data-images {n_images} is not accepted; use 1 or more")
    files = imagenet_like_jpegs(n_images, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pre = Preprocessing(input_size=(3, input_size, input_size), interpolation="bilinear", crop_pct=0.875)
    timm_train = create_transform(input_size, is_training=True)
    image = datasets.Image()
    transforms: dict[str, Any] = {}

    def bare(b: bytes, i: int):
        return Image.open(io.BytesIO(b)).convert("RGB")

    def bare_torchvision(b: bytes, i: int):
        return decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def draft(b: bytes, i: int):
        im = Image.open(io.BytesIO(b))
        im.draft("RGB", (im.size[0] // 2, im.size[1] // 2))
        return im.convert("RGB")

    def timm_pipeline(b: bytes, i: int):
        return timm_train(Image.open(io.BytesIO(b)).convert("RGB"))

    def robustify_train(b: bytes, i: int):
        return make_example(image.decode_example({"bytes": b, "path": None}), pre, "timm", i, transforms)

    def robustify_rrc(b: bytes, i: int):  # the bytes as datasets.Image(decode=False) stores them: decoded once
        return make_example({"bytes": b, "path": None}, pre, "rrc-flip", i, transforms)

    def robustify_device_share(b: bytes, i: int):  # data.decode=device: what is left on the CPU per example
        EncodedBatch([], [], [], [], (input_size, input_size), "bilinear").add({"bytes": b, "path": None}, i, "")

    def robustify_eval(b: bytes, i: int):
        return make_example(image.decode_example({"bytes": b, "path": None}), pre, "none", i, transforms)

    pipelines = (("bare JPEG decode (PIL, full size)", bare),
                 ("bare JPEG decode (torchvision decode_jpeg, full size)", bare_torchvision),
                 ("reduced decode (PIL draft, 1/2 scale)", draft),
                 ("timm create_transform(is_training=True)", timm_pipeline),
                 ("robustify training pipeline (augment: timm, seeded)", robustify_train),
                 ("robustify training pipeline (augment: rrc-flip)", robustify_rrc),
                 ("robustify rrc-flip with data.decode=device: the workers' share (the decode runs on the GPU)",
                  robustify_device_share),
                 ("robustify evaluation pipeline (resize + centre crop)", robustify_eval))
    # ROUNDS interleaved rounds, each timing every pipeline over all files, and the best round per pipeline: on a
    # shared machine a busy moment then slows one round of every pipeline, not one pipeline's only measurement
    best: dict[str, float] = {}
    try:
        for _name, fn in pipelines:
            fn(files[0], 0)  # first-call setup out of the timing
        for _ in range(ROUNDS):
            for name, fn in pipelines:
                t0 = time.perf_counter()
                for i, b in enumerate(files):
                    fn(b, i)
                best[name] = max(best.get(name, 0.0), len(files) / (time.perf_counter() - t0))
        rows = [{"pipeline": name, "images_per_second_per_core": best[name]} for name, _ in pipelines]
    finally:
        torch.set_num_threads(threads)
    bare_rate = rows[0]["images_per_second_per_core"]
    for r in rows:
        r["vs_bare_decode"] = r["images_per_second_per_core"] / bare_rate
    return {"data": IMAGENET_LIKE, "images": len(files), "image_size": [500, 375], "quality": 90,
            "mean_file_kb": sum(map(len, files)) / len(files) / 1024, "input_size": input_size, "pipelines": rows,
            "timing": f"best of {ROUNDS} interleaved rounds per pipeline, one core (torch on one thread)",
            "cpu_count": os.cpu_count() or 1}


def decode_lines(report: dict[str, Any], per_gpu: float = 1300.0) -> list[str]:
    """The figures, and the cores a GPU needs at ``per_gpu`` images/s (an FGSM-RS ResNet-50 bf16 step on an H100)."""
    lines = [f"decode on one core, {report['images']} ImageNet-like JPEGs (500x375, q90, mean "
             f"{report['mean_file_kb']:.0f} KB) to {report['input_size']} px:"]
    for r in report["pipelines"]:
        rate = r["images_per_second_per_core"]
        lines.append(f"  {r['pipeline']}: {rate:.0f} images/s per core ({r['vs_bare_decode']:.2f}x the bare decode); "
                     f"{per_gpu / rate:.1f} cores per GPU at {per_gpu:.0f} images/s")
    return lines
