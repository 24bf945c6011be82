"""The evaluation kernel: clean and PGD accuracy over examples, shared by the trainer (before/after/probe) and
``robustify eval``.

A robustness number is only worth the attack behind it: an example counts as robust only if it survives every PGD
restart and loss, and PGD counts an example as broken if *any* iterate fools the model (the logits of each step are
computed anyway), which is strictly stronger than looking at the last iterate, at no extra cost. Inner attack loops
never synchronise with the host; between restarts the examples already broken are dropped (one synchronisation per
restart).

Must not: run in reduced precision or TF32, or leave a collective to only some processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import attacks
from ..data import to_unit
from ..errors import UserError
from . import collectives


def bar_for(total: int, desc: str, progress: bool = True) -> tqdm:
    """A progress bar per attack. ``disable`` is only passed to switch it off, so ``TQDM_DISABLE=1`` still works."""
    return tqdm(total=total, desc=desc, unit="ex", leave=False, **({} if progress else {"disable": True}))


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def _pgd_fooled(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int,
                alpha: float, loss_fn: attacks.LossFn, generator: torch.Generator | None,
                step_correct: torch.Tensor | None = None, count: torch.Tensor | None = None) -> torch.Tensor:
    """One PGD run from a random start; True where *some* iterate (start, each step, the end) fools the model.

    ``step_correct`` (length steps + 1, on the device) accumulates, for the examples in ``count``, how many are
    classified correctly at each iterate: the last-iterate accuracy after 0..steps steps, for the masking checks.
    """
    delta = attacks.random_init(x, eps, norm, generator)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for t in range(steps + 1):
        if t < steps:
            grad, logits = attacks.input_gradient(model, x, delta, y, loss_fn)
        else:
            with torch.no_grad():
                logits = model(x + delta)
        wrong = logits.argmax(1) != y
        fooled |= wrong
        if step_correct is not None:
            step_correct[t] += (~wrong & count).sum()
        if t < steps:
            delta = attacks.ascent_step(x, delta, grad, alpha, eps, norm)
    return fooled


def pgd_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
               steps: int = 50, restarts: int = 1, losses: tuple[str, ...] = ("ce",), alpha: float | None = None,
               generator: torch.Generator | None = None, robust: torch.Tensor | None = None,
               step_correct: torch.Tensor | None = None, stages: dict[str, torch.Tensor] | None = None,
               work: list[int] | None = None) -> torch.Tensor:
    """Per example: correct on ``x`` and not fooled by any of ``restarts`` PGD runs on each loss in ``losses``.

    The first run attacks the whole batch (no host synchronisation at all, as the training probe needs); later runs
    attack only the examples still robust. ``stages`` (optional) receives the mask after the first run
    (``"first"``) and after each loss (``"ce"``, ``"cw"``). ``work`` (optional, a one-element list) is increased by
    the number of input-gradient evaluations (examples x steps) this call made: the attack's cost.
    """
    attacks.check_norm(norm)
    if robust is None:
        robust = predict(model, x) == y
    if eps <= 0 or steps <= 0:
        return robust
    alpha = 2.5 * eps / steps if alpha is None else alpha
    first = True
    for loss in losses:
        loss_fn = attacks.LOSSES[loss]
        for _ in range(restarts):
            if first:
                fooled = _pgd_fooled(model, x, y, eps, norm, steps, alpha, loss_fn, generator, step_correct, robust)
                robust = robust & ~fooled
                if work is not None:
                    work[0] += x.shape[0] * steps
                first = False
                if stages is not None:
                    stages["first"] = robust
                continue
            idx = robust.nonzero().flatten()  # one host synchronisation per restart, never per step
            if idx.numel() == 0:
                break
            fooled = _pgd_fooled(model, x[idx], y[idx], eps, norm, steps, alpha, loss_fn, generator)
            robust = robust.index_put((idx,), ~fooled)
            if work is not None:
                work[0] += idx.numel() * steps
        if stages is not None:
            stages[loss] = robust
    return robust


def parse_losses(loss: str | Iterable[str]) -> tuple[str, ...]:
    """``"ce"``, ``"cw"``, ``"ce+cw"`` / ``"ce,cw"`` or a sequence → a tuple of loss names (validated)."""
    names = tuple(loss.replace("+", ",").split(",")) if isinstance(loss, str) else tuple(loss)
    names = tuple(n.strip() for n in names if n.strip())
    bad = [n for n in names if n not in attacks.LOSSES]
    if bad or not names:
        raise UserError(f"PGD loss {bad[0] if bad else loss!r} is not accepted; use ce, cw or ce+cw")
    return names


def pgd_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int,
                restarts: int = 1, alpha: float | None = None, loss: str = "ce",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example correctness (bool) under PGD with restarts; clean-misclassified examples count as not robust."""
    return pgd_robust(model, x, y, eps, norm, steps, restarts, parse_losses(loss), alpha, generator)


# ------------------------------------------------------------------------------ sharded, always-fp32 evaluation
def _fp32_switches() -> list[Any]:
    """torch's per-backend float32 precision switches (``fp32_precision``: 'ieee' is true fp32, 'tf32' on
    Ampere/Hopper rounds matmul and convolution inputs to 10-bit mantissas, 'bf16' on oneDNN CPUs to 7 bits)."""
    backends = torch.backends
    found = [getattr(backends.cuda, "matmul", None), getattr(getattr(backends, "cudnn", None), "conv", None),
             getattr(getattr(backends, "cudnn", None), "rnn", None), getattr(backends, "mkldnn", None)]
    return [b for b in found if b is not None and hasattr(b, "fp32_precision")]


@contextlib.contextmanager
def fp32_math() -> Iterator[None]:
    """True float32 arithmetic inside evaluation: TF32 off for matmuls and cuDNN convolutions (PyTorch lets cuDNN
    use TF32 by default on Ampere and later), and cuDNN's benchmark mode off (training turns it on unless
    ``train.deterministic``; its choice of algorithm may differ between runs and batch shapes, and an evaluation must
    give the same counts on every run and at every world size); each restored afterwards so training keeps its own.
    """
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with _tf32_off():
            yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """TF32 off, then restored.

    Uses the per-backend ``fp32_precision`` switches where torch has them (2.9+; mixing them with the legacy
    ``allow_tf32`` flags is an error there), else the legacy flags.
    """
    switches = _fp32_switches()
    if switches:
        saved = [b.fp32_precision for b in switches]
        for b in switches:
            b.fp32_precision = "ieee"
        try:
            yield
        finally:
            for b, value in zip(switches, saved, strict=True):
                b.fp32_precision = value
        return
    legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy


class FP32(torch.nn.Module):
    """The model as evaluation must see it: in float32 whatever the training precision.

    Accelerate's ``prepare`` wraps a mixed-precision model's ``forward`` in autocast (and keeps that wrapper on the
    unwrapped module), so a robust accuracy measured through it would be a bf16/fp16 number while users run the
    exported weights in fp32. This view calls the original forward with autocast disabled.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forward = self.model.__dict__.get("_original_forward", self.model.forward)
        # a device type without autocast (meta, in the device-placement tests) has nothing to switch off
        off = (torch.autocast(x.device.type, enabled=False) if torch.amp.is_autocast_available(x.device.type)
               else contextlib.nullcontext())
        with off:
            return forward(x.float())


def shard_range(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The examples ``[start, end)`` one process evaluates: a contiguous block of whole batches.

    Cutting at batch boundaries keeps every batch, and the random generator seeded from its global offset, identical
    to a single-process evaluation, so the gathered counts equal the single-process counts exactly.
    """
    n_batches = -(-n // batch_size)
    first, last = n_batches * rank // world_size, n_batches * (rank + 1) // world_size
    return min(first * batch_size, n), min(last * batch_size, n)


def own_block(x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int, world: int,
              total: int | None = None) -> tuple[int, int, int]:
    """``(start, end, base)``: the examples ``[start, end)`` of the subset this process evaluates, and the subset
    index of ``x[0]``. ``total=None``: ``x, y`` are the whole subset (base 0). ``total=N``: they are already this
    process's block of an N-example subset (decoded alone, :func:`shard_range`), so base = start."""
    if total is None:
        start, end = shard_range(int(y.shape[0]), batch_size, rank, world)
        return start, end, 0
    start, end = shard_range(int(total), batch_size, rank, world)
    if int(y.shape[0]) != end - start:
        raise ValueError(f"process {rank} of {world} holds {int(y.shape[0])} examples, but its block of {total} at "
                         f"batch size {batch_size} is [{start}, {end})")
    return start, end, start


def sharded_pgd_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
                         steps: int = 20, restarts: int = 1, loss: str = "ce", alpha: float | None = None,
                         seed: int = 0, batch_size: int = 256, accelerator: Any = None,
                         device: torch.device | str = "cpu", desc: str = "eval", progress: bool = True,
                         total: int | None = None) -> dict[str, Any]:
    """Clean and PGD accuracy on ``x, y`` (uint8 or [0,1], on the CPU), sharded over the processes of
    ``accelerator`` (None: one process), always in fp32 (:class:`FP32`).

    ``x, y``: all examples, or (``total`` = the subset's size) only this process's :func:`shard_range` block, so a
    process never decodes the examples it does not attack (5,000 ImageNet images are 750 MB per process).
    Every process attacks only its block; the counts are summed across processes at the end (one collective, exact
    integers), so N processes take 1/N of the time and report the same numbers as one. Each batch's random starts
    come from a generator seeded with (seed, the batch's global offset).
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    device = torch.device(accelerator.device if accelerator is not None else device)
    losses = parse_losses(loss)
    start, end, base = own_block(x, y, batch_size, rank, world, total)
    fp32 = FP32(model)
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.long, device=device)  # clean, robust, examples
    work = [0]
    with fp32_math():  # TF32 off while attacking, restored after (also on an error)
        try:
            batches = range(start, end, batch_size)
            for i in tqdm(batches, desc=desc, leave=False, **({} if progress and rank == 0 else {"disable": True})):
                xb = to_unit(x[i - base:min(i + batch_size, end) - base].to(device, non_blocking=True))
                yb = y[i - base:min(i + batch_size, end) - base].to(device, non_blocking=True)
                gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
                clean = predict(fp32, xb) == yb
                robust = pgd_robust(fp32, xb, yb, eps, norm, steps, restarts, losses, alpha, gen, clean, work=work)
                counts += torch.stack([clean.sum(), robust.sum(), torch.tensor(yb.numel(), device=device)])
        finally:
            model.train(was_training)
    per_process = [work[0]]
    if world > 1:  # every process, an empty shard included, reaches these two collectives
        with collectives.stage(f"{desc}: counts"):
            counts = accelerator.reduce(counts, reduction="sum")
            per_process = accelerator.gather(torch.tensor([work[0]], device=device)).tolist()
    clean_n, robust_n, total = counts.tolist()
    return {
        "clean_acc": clean_n / max(total, 1),
        "pgd_acc": robust_n / max(total, 1),
        "pgd": {"norm": norm, "eps": eps, "steps": steps, "restarts": restarts, "loss": "+".join(losses),
                "alpha": 2.5 * eps / steps if alpha is None else alpha},
        "n_examples": total,
        "precision": "fp32",
        "tf32": False,  # matmuls and convolutions in true fp32 (fp32_math)
        "processes": world,
        "attack_work": per_process,  # input-gradient evaluations (examples x steps) per process
    }
