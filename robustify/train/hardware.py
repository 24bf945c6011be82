"""Settings whose best value depends on the hardware, resolved once when a run starts.

``train.mixed_precision: auto`` and ``model.channels_last: auto`` (the defaults) mean: bf16 autocast and the
channels-last memory layout on a CUDA GPU, where tensor cores and cuDNN's NHWC kernels make them the fast path;
fp32 and the contiguous layout on a CPU, where bf16 without AMX/AVX512-BF16 is emulated (measured 10-65x slower than
fp32 on an AVX2 CPU) and oneDNN gains nothing from NHWC inputs. A GPU without bf16 (pre-Ampere) trains in fp32.

``fp16`` is not one of ``train.mixed_precision``'s choices (robustify.config refuses it in one line naming the
accepted values, like any value outside a key's choices): fp16 needs loss scaling, and adversarial training
takes gradients that GradScaler does not scale. FGSM/PGD input gradients from ``torch.autograd.grad`` would
underflow to zero (weaker attacks, silently), and free AT / DEAT read the input gradient from the scaled backward
(``delta.grad`` carries the loss scale, inf/NaN on GradScaler's overflow steps, then ``sign(NaN)``). Scaling every
input gradient and skipping replays on overflow is possible but touches every method; bf16 has fp32's exponent
range, needs no scaling, and runs at fp16's speed on every GPU that has tensor cores for it (Ampere and later).

``train.compile: true`` compiles the model's forward with ``torch.compile`` (``nn.Module.compile``: in place, so the
module, its state_dict keys and every reference to it stay the same; attack and training forwards both use it).

Must not: choose a setting the recipe fixed explicitly.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import FinetuneConfig

AUTO = "auto"


def resolve_mixed_precision(value: str, device_type: str) -> str:
    """``auto`` → ``bf16`` on a CUDA device that supports it, else ``no``; any other value is kept."""
    if value != AUTO:
        return value
    return "bf16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def resolve_channels_last(value: bool | str, device_type: str) -> bool:
    """``auto`` → True on CUDA, False elsewhere; true/false are kept."""
    return device_type == "cuda" if value == AUTO else bool(value)


def resolve_hardware_settings(cfg: FinetuneConfig, device_type: str) -> FinetuneConfig:
    """Replace ``auto`` in ``cfg`` (in place, and returned) by the value for ``device_type`` ('cuda' or 'cpu'), so
    that everything after it — and the run's recipe.yaml and card — sees what was actually used."""
    cfg.train.mixed_precision = resolve_mixed_precision(cfg.train.mixed_precision, device_type)
    cfg.model.channels_last = resolve_channels_last(cfg.model.channels_last, device_type)
    return cfg


def target_device_type() -> str:
    """The device type a run will use: 'cuda' when a GPU is visible and ``ACCELERATE_USE_CPU`` is not set, else 'cpu'
    (what :func:`robustify.train.trainer.make_accelerator` decides)."""
    refused = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cuda" if torch.cuda.is_available() and not refused else "cpu"


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``model.compile()`` when ``train.compile`` is on (in place; returns the same module)."""
    if enabled:
        model.compile()
    return model


def check_sync_bn(cfg: FinetuneConfig, device_type: str) -> None:
    """``model.sync_bn`` with several processes: refused on a CPU (torch's SyncBatchNorm runs on CUDA or XPU only) and
    with ``method.bn_mode: train`` for a method that attacks: SyncBatchNorm in train mode all-gathers statistics in
    every attack forward and backward too (by count of BatchNorm layers, over a thousand collectives per PGD-10 step
    of a ResNet-50: not measured on a GPU yet). Checked for every stage when the run starts."""
    from ..errors import UserError

    if device_type == "cpu":
        raise UserError("model.sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA (or XPU) only; leave it "
                        "false on CPU (BatchNorm statistics are still broadcast before every probe, evaluation and "
                        "export)")
    if cfg.method.name != "natural" and cfg.method.bn_mode == "train":
        raise UserError(f"model.sync_bn=true with method.bn_mode=train would synchronise BatchNorm in every attack "
                        f"pass of {cfg.method.name}; set method.bn_mode=eval (attacks use the running statistics, "
                        "training forwards still synchronise) or model.sync_bn=false")


def apply_determinism(enabled: bool) -> dict[str, bool]:
    """``train.deterministic``: make a CUDA run repeat bit for bit (same seed, same hardware, same software).

    cuDNN picks the fastest convolution algorithm by benchmarking (``benchmark``) and some of its algorithms (and
    cuBLAS's split-K GEMMs, and the backward of bilinear/bicubic upsampling) add with atomics in a varying order.
    This turns benchmarking off, restricts cuDNN to deterministic algorithms, asks torch to refuse any op without
    a deterministic implementation (``use_deterministic_algorithms``), gives cuBLAS a fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS starts, so this runs before the model reaches the GPU), and the
    in-model resize switches to matrix products (``models.Resize``). Cost: typically 5-30% slower convolutions.
    On a CPU, runs already repeat bit for bit; the flag changes nothing measurable there. Returns what was set.

    Without the flag, cuDNN benchmarks its convolution algorithms once per input shape (``cudnn.benchmark``; torch
    leaves it off): adversarial training repeats the same shapes thousands of times (each attack pass and the
    training pass), so the one-off search pays for itself within the first steps; a new shape (the epoch's last
    partial batch, the evaluation batch) costs one more search. TF32 is left at torch's defaults (cuDNN convolutions
    in TF32, fp32 matmuls in true fp32): ``train.mixed_precision: no`` means fp32 as the user asked, and bf16 autocast
    is the fast path on every GPU with TF32.
    """
    if not enabled:
        torch.backends.cudnn.benchmark = True
        return {"deterministic": False}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)
    return {"deterministic": True}


def out_of_memory(error: BaseException, cfg: FinetuneConfig, device: torch.device, method: str) -> Exception:
    """A device out-of-memory error in a training step as one line (a :class:`UserError`, exit 2): the minibatch, the
    device's memory (total, and the peak this process allocated) and what to try, instead of a CUDA traceback. The
    peak is read from the caching allocator's counters (no device synchronisation)."""
    from ..errors import UserError, first_line

    seen = ""
    if torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        seen = f" on a GPU with {total:.1f} GiB ({peak:.1f} GiB peak allocated by this process)"
    hints = [f"data.batch_size={max(cfg.data.batch_size // 2, 1)} with train.grad_accum={cfg.train.grad_accum * 2} "
             "(the same global batch)"]
    if not cfg.train.compile:
        hints.append("train.compile=true (fused kernels keep fewer activations)")
    if cfg.train.mixed_precision == "no":
        hints.append("train.mixed_precision=bf16")
    return UserError(f"out of memory in a {method} training step at data.batch_size={cfg.data.batch_size} per "
                     f"process{seen}: {first_line(error)[:160]}; try {', or '.join(hints)}")


def comm_hook_name(model: torch.nn.Module) -> str | None:
    """The name of the communication hook registered on a DDP-wrapped model (None if none, or not DDP)."""
    hooks = getattr(model, "_comm_hooks", None) or []
    return getattr(hooks[-1][0], "__qualname__", str(hooks[-1][0])) if hooks else None
