"""The 15 common corruptions of Hendrycks & Dietterich (ICLR 2019), written from the paper's definitions and its
published severity parameters (CIFAR-10-C's for small images, ImageNet-C's for large ones), seeded per example.

Written by hand (docs/design.md says why): the reference package, ``imagecorruptions`` 1.1.2, fails on numpy 2 /
scikit-image 0.2x for glass_blur, fog and gaussian_blur and pulls in OpenCV, SciPy and scikit-image. Every random
draw comes from a ``numpy.random.Generator`` seeded by :func:`example_seed` (the example's digest, the corruption,
the severity and the evaluation seed), so an example is corrupted the same way at any world size, in any batch and
on every rerun. Pixel-valued parameters (blur radii, displacements) are the published ones at 32 px (CIFAR) and
224 px (ImageNet) and scale linearly with the image size in between and beyond.

Frost differs from the reference by construction: the published frost overlays are six photographs shipped with the
reference code; robustify draws a procedural ice texture instead (:func:`frost_texture`), so frost images, and any
frost accuracy, are not the reference's (the published CIFAR-10-C / ImageNet-C sets are, :mod:`.sources`).

Must not: draw randomness from a global generator, or depend on anything but the image, its seed and the severity.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11], "digital": CORRUPTIONS[11:15],
}
SEVERITIES = (1, 2, 3, 4, 5)

# The published severity parameters: CIFAR-10-C (make_cifar_c.py, 32 px) and ImageNet-C (make_imagenet_c.py, 224 px).
# Pixel-valued entries are at the reference size (REFERENCE_SIZE) and scale with the image (:func:`_scale`).
REFERENCE_SIZE = {"cifar": 32, "imagenet": 224}
PARAMS: dict[str, dict[str, list]] = {
    "cifar": {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
        "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "elastic_transform": [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                              (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                              (32 * 0.1, 32 * 0.03, 32 * 0.03)],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    "imagenet": {
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
        "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        "elastic_transform": [(244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                              (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                              (244 * 0.12, 244 * 0.01, 244 * 0.02)],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
}


def table_for(size: int) -> str:
    """Which published table an image of ``size`` px (its shorter side) uses: CIFAR-10-C's up to 64 px, else
    ImageNet-C's (the two sizes the corruptions were defined at)."""
    return "cifar" if size <= 64 else "imagenet"


def example_seed(digest: bytes, corruption: str, severity: int, seed: int = 0) -> int:
    """The seed of one example's corruption: from its content digest (``Examples.example_digests``, 32 bytes), not
    its position, so the same image gets the same noise whatever process, batch or rerun corrupts it."""
    h = hashlib.sha256(digest + f"|{corruption}|{severity}|{seed}".encode())
    return int.from_bytes(h.digest()[:8], "little")


# ----------------------------------------------------------------------------------------------- helpers
def _t(img: np.ndarray) -> torch.Tensor:
    """HxWxC float -> 1xCxHxW float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def _n(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()


def _pad_mode(pad: int, h: int, w: int) -> str:
    return "reflect" if pad < min(h, w) else "replicate"


def convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel of ``img`` (HxWxC) convolved with ``kernel`` (2-D, odd sides), reflected at the borders."""
    kh, kw = kernel.shape
    t = _t(img)
    c = t.shape[1]
    ph, pw = kh // 2, kw // 2
    t = F.pad(t, (pw, pw, ph, ph), mode=_pad_mode(max(ph, pw), *img.shape[:2]))
    k = torch.from_numpy(np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32))[None, None].repeat(c, 1, 1, 1)
    return _n(F.conv2d(t, k, groups=c))


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = max(1, int(truncate * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """A separable Gaussian blur of an HxW or HxWxC image, borders reflected."""
    if sigma <= 0:
        return img
    squeeze = img.ndim == 2
    im = img[..., None] if squeeze else img
    k = gaussian_kernel1d(sigma, truncate)
    out = convolve(convolve(im, k[None, :]), k[:, None])
    return out[..., 0] if squeeze else out


def clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (>= 1): the central 1/factor of the image, enlarged back to its size."""
    h, w = img.shape[:2]
    ch, cw = max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[top:top + ch, left:left + cw]
    squeeze = crop.ndim == 2
    t = _t(crop[..., None] if squeeze else crop)
    out = _n(F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False))
    return out[..., 0] if squeeze else out


def motion_kernel(radius: int, sigma: float, angle: float) -> np.ndarray:
    """A one-sided motion-blur kernel: Gaussian weights (``sigma``) along a line of ``radius`` pixels from the centre
    at ``angle`` degrees, as ImageMagick's motion blur that the published sets used."""
    size = 2 * radius + 1
    k = np.zeros((size, size), dtype=np.float64)
    a = math.radians(angle)
    for i in range(radius + 1):
        wgt = math.exp(-0.5 * (i / max(sigma, 1e-6)) ** 2)
        r, c = radius + int(round(i * math.sin(a))), radius + int(round(i * math.cos(a)))
        k[r, c] += wgt
    return k / k.sum()


def _scale(value: float, scale: float, minimum: float = 0.0) -> float:
    return max(minimum, value * scale)


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A size x size (power of two) square of diamond-square fractal noise in [0, 1], roughness ``decay``."""
    m = np.zeros((size, size), dtype=np.float64)
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        # squares: each cell's centre is its four corners' mean plus noise
        corners = m[0:size:step, 0:size:step]
        mean = (corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1) + np.roll(np.roll(corners, -1, 0), -1, 1))
        m[half:size:step, half:size:step] = mean / 4 + rng.uniform(-wibble, wibble, mean.shape)
        # diamonds: each edge midpoint is its two corners' and two centres' mean plus noise
        centres = m[half:size:step, half:size:step]
        corners = m[0:size:step, 0:size:step]
        top = (corners + np.roll(corners, -1, 1) + centres + np.roll(centres, 1, 0)) / 4
        m[0:size:step, half:size:step] = top + rng.uniform(-wibble, wibble, top.shape)
        left = (corners + np.roll(corners, -1, 0) + centres + np.roll(centres, 1, 1)) / 4
        m[half:size:step, 0:size:step] = left + rng.uniform(-wibble, wibble, left.shape)
        step, wibble = half, wibble / decay
    m -= m.min()
    return m / max(m.max(), 1e-12)


def frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural ice texture (HxWx3 in [0, 1]): branching bright crystals over a faint, bluish fractal haze.

    Stands in for the reference's six frost photographs (not shipped: see the module docstring); its mean
    brightness (about 0.7) and its bluish tint follow theirs, so each severity whitens an image by about as much as
    the reference's does (tests/test_corruptions.py compares the amounts)."""
    size = 1 << max(5, math.ceil(math.log2(max(h, w))))
    haze = plasma_fractal(size, 1.6, rng)[:h, :w]
    crystals = np.zeros((h, w), dtype=np.float64)
    n_seeds = max(4, (h * w) // 900)
    length = max(4, int(0.25 * min(h, w)))
    for _ in range(n_seeds):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * math.pi)
        for _branch in range(3):
            yy, xx, a = y, x, angle
            for _ in range(length):
                a += rng.normal(0, 0.35)
                yy, xx = yy + math.sin(a), xx + math.cos(a)
                if 0 <= yy < h and 0 <= xx < w:
                    crystals[int(yy), int(xx)] = 1.0
            angle += 2 * math.pi / 3
    crystals = gaussian_blur(crystals, max(0.5, min(h, w) / 224))
    crystals /= max(crystals.max(), 1e-12)
    v = np.clip(0.5 + 0.3 * haze + 0.5 * crystals, 0, 1)
    return np.stack([v * 0.92, v * 0.96, np.minimum(v * 1.05 + 0.03, 1.0)], axis=-1)


# ------------------------------------------------------------------------------------------ the corruptions
# Each takes an HxWx3 float image in [0, 1], the severity's parameters, the pixel scale and a generator, and
# returns an HxWx3 float image (clipped to [0, 1] by :func:`corrupt`).
Corruption = Callable[[np.ndarray, object, float, np.random.Generator], np.ndarray]


def gaussian_noise(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, c, x.shape)


def shot_noise(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x * c) / c


def impulse_noise(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def defocus_blur(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    radius, alias = _scale(c[0], s, 0.3), _scale(c[1], s)
    reach = max(8, math.ceil(radius)) if radius <= 8 else math.ceil(radius)
    yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    if alias > 0:  # the disk's edge anti-aliased by a small Gaussian (3x3 up to radius 8, else 5x5)
        k = gaussian_kernel1d(alias, truncate=(1 if radius <= 8 else 2) / max(alias, 1e-6))
        disk = convolve(disk[..., None], np.outer(k, k))[..., 0]
        disk /= disk.sum()
    return convolve(x, disk)


def glass_blur(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    """Blur, then swap each pixel with a random neighbour within ``delta`` (sweeping from the bottom-right corner,
    ``iterations`` times), then blur again. The swaps are tracked as a permutation of pixel indices (same result as
    moving the pixels one by one, far fewer operations)."""
    sigma, delta, iterations = _scale(c[0], s), max(1, int(round(c[1] * s))), int(c[2])
    h, w = x.shape[:2]
    x = gaussian_blur(x, sigma)
    src = list(range(h * w))
    rows, cols = np.arange(h - delta - 1, delta - 1, -1), np.arange(w - delta - 1, delta - 1, -1)
    here = (rows[:, None] * w + cols[None, :]).ravel()
    for _ in range(iterations):
        dy, dx = rng.integers(-delta, delta, size=(2, len(rows), len(cols))).reshape(2, -1)
        for p, q in zip(here.tolist(), (here + dy * w + dx).tolist(), strict=True):  # in sweep order: sequential
            src[p], src[q] = src[q], src[p]
    x = x.reshape(h * w, -1)[np.asarray(src)].reshape(h, w, -1)
    return gaussian_blur(x, sigma)


def motion_blur(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = max(1, int(round(c[0] * s))), _scale(c[1], s, 0.3)
    return convolve(x, motion_kernel(radius, sigma, rng.uniform(-45, 45)))


def zoom_blur(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    factors = np.arange(*c)
    out = x.copy()
    for z in factors:
        out += clipped_zoom(x, float(z))
    return out / (len(factors) + 1)


def snow(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = c
    h, w = x.shape[:2]
    flakes = clipped_zoom(rng.normal(loc, scale, (h, w)), zoom)
    flakes[flakes < threshold] = 0
    kernel = motion_kernel(max(1, int(round(radius * s))), _scale(sigma, s, 0.3), rng.uniform(-135, -45))
    flakes = np.clip(convolve(np.clip(flakes, 0, 1)[..., None], kernel), 0, 1)
    gray = x @ np.array([0.299, 0.587, 0.114])
    x = blend * x + (1 - blend) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return x + flakes + np.rot90(flakes, k=2)


def frost(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    return c[0] * x + c[1] * frost_texture(x.shape[0], x.shape[1], rng)


def fog(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    peak = x.max()
    size = 1 << max(5, math.ceil(math.log2(max(h, w))))
    out = x + c[0] * plasma_fractal(size, c[1], rng)[:h, :w][..., None]
    return out * peak / (peak + c[0])


def brightness(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c (clipped), hue and saturation kept: every channel scaled by the value's ratio."""
    v = x.max(axis=2, keepdims=True)
    v2 = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * v2 / np.maximum(v, 1e-12), v2)


def contrast(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * c + mean


def elastic_transform(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp (the corners of a central triangle moved by up to c[2] px), then a smooth random
    displacement field (uniform noise blurred by c[1] px, scaled by c[0] px); bilinear, borders reflected."""
    h, w = x.shape[:2]
    alpha, sigma, shift = c[0] * s, c[1] * s, c[2] * s
    cy, cx, sq = h // 2, w // 2, min(h, w) // 3
    src = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=np.float64)
    dst = src + rng.uniform(-shift, shift, src.shape)
    # the affine map dst -> src (the sampling position of each output pixel)
    a = np.linalg.solve(np.c_[dst, np.ones(3)], src).T  # 2x3
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = a[0, 0] * xx + a[0, 1] * yy + a[0, 2]
    sy = a[1, 0] * xx + a[1, 1] * yy + a[1, 2]
    dx = gaussian_blur(rng.uniform(-1, 1, (h, w)), sigma, truncate=3) * alpha if sigma > 0 else 0.0
    dy = gaussian_blur(rng.uniform(-1, 1, (h, w)), sigma, truncate=3) * alpha if sigma > 0 else 0.0
    warped = _sample(x, sx, sy)
    return _sample(warped, xx + dx, yy + dy)


def _sample(x: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    h, w = x.shape[:2]
    grid = torch.from_numpy(np.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1).astype(np.float32))
    out = F.grid_sample(_t(x), grid[None], mode="bilinear", padding_mode="reflection", align_corners=True)
    return _n(out)


def pixelate(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = x.shape[:2]
    im = Image.fromarray(_to_uint8(x))
    im = im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(im, dtype=np.float64) / 255


def jpeg_compression(x: np.ndarray, c, s: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, "JPEG", quality=int(c))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255


FUNCTIONS: dict[str, Corruption] = {name: globals()[name] for name in CORRUPTIONS}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.clip(x, 0, 1) * 255), 0, 255).astype(np.uint8)


def corrupt(image: np.ndarray, corruption: str, severity: int, seed: int, table: str | None = None) -> np.ndarray:
    """One HxWx3 uint8 image, corrupted (uint8, same shape); ``table``: 'cifar' / 'imagenet' (default: by size)."""
    h, w = image.shape[:2]
    table = table or table_for(min(h, w))
    scale = min(h, w) / REFERENCE_SIZE[table]
    params = PARAMS[table][corruption][severity - 1]
    rng = np.random.default_rng(seed)
    x = image.astype(np.float64) / 255
    return _to_uint8(FUNCTIONS[corruption](x, params, scale, rng))


def corrupt_batch(x: torch.Tensor, corruption: str, severity: int, seeds: list[int]) -> torch.Tensor:
    """A uint8 (N,3,H,W) batch, each image corrupted with its own seed (:func:`example_seed`)."""
    with torch.inference_mode():
        out = [torch.from_numpy(corrupt(img.permute(1, 2, 0).numpy(), corruption, severity, s)).permute(2, 0, 1)
               for img, s in zip(x, seeds, strict=True)]
    return torch.stack(out) if out else x.clone()
