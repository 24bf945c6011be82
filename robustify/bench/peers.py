"""``robustify bench --peers``: robustify's training steps side by side with what a user would write or pick instead.

Runners, all on the same model (a fresh copy of the same weights each), the same synthetic minibatches and the same
optimizer settings, in one process:

* ``plain-natural`` -- a plain PyTorch natural-training loop (``loss.backward(); opt.step(); opt.zero_grad()``):
  the unit every ratio is relative to;
* ``robustify:<method>`` -- robustify's own step (:func:`robustify.bench.steps.method_step`: the trainer's method,
  :class:`~robustify.train.optim.OptimizerStepper` and Accelerate objects, not a copy);
* ``fast-at-reference`` -- FGSM-RS written the way the Fast AT reference code does it (Wong et al. 2020,
  locuslab/fast_adversarial): the attack's loss is back-propagated with ``loss.backward()``, so it also computes
  weight gradients that are thrown away, and the perturbation is updated through ``.data``. Written here from the
  paper's algorithm, not copied;
* ``art-fbf`` -- IBM ART's ``AdversarialTrainerFBFPyTorch`` (Fast is Better than Free), when
  ``adversarial-robustness-toolbox`` is installed (``pip install -e ".[bench]"``); ART takes numpy arrays, so its
  epochs include its own numpy<->torch conversions, as they would for its users. Skipped with a note otherwise.

The runners are *interleaved*: each round times one epoch (``batches`` minibatches) of every runner in turn, so a
machine that slows down or speeds up (a shared CPU, GPU clocks) affects all of them alike; the reported time is the
median over rounds. Each timed epoch follows one untimed minibatch of the same runner, so that no runner pays for the
allocator and cache state the previous one left behind (without it, the first runner of each round, the plain loop
that every ratio divides by, measured ~5% slower on a CPU, flattering every ratio).

Each epoch's wall time is measured (CUDA: synchronised before and after); on CPU the process CPU
time is recorded too, which a busy shared machine disturbs less than the wall clock (with one torch thread it is the
time the step itself computed).

Why hand-written peers: the point is to compare step *code* on identical work; an external benchmark suite would
bring its own models and data pipelines.

Must not: give a peer a worse setup than robustify's own (same model, data and untimed warm-up).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..config import FinetuneConfig
from ..errors import UserError
from ..input_grad import use_default_input_grad
from ..models import RobustModel
from ..train import options
from ..train.hardware import resolve_hardware_settings, target_device_type
from ..train.optim import build_optimizer
from .steps import bench_hardware, method_step, parse_methods, release, synthetic_setup

PLAIN = "plain-natural"
FAST_AT = "fast-at-reference"
ART = "art-fbf"
DEFAULT_PEER_METHODS = ("natural", "fgsm-rs", "free", "pgd")


@dataclass
class Runner:
    """One contender: ``epoch(n)`` trains on the first ``n`` minibatches once; ``passes`` forward/backward passes
    per minibatch."""

    name: str
    kind: str  # baseline | robustify | peer
    passes: int
    epoch: Callable[[int], None]
    replays: int = 1  # minibatch replays (free AT): the per-pass figure divides by it
    note: str = ""
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def art_available() -> bool:
    return importlib.util.find_spec("art") is not None


def _plain_natural(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batches: list[tuple[torch.Tensor, torch.Tensor]], autocast: Callable) -> Callable[[int], None]:
    def epoch(n: int) -> None:
        for x, y in batches[:n]:
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return epoch


def _fast_at_reference(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       batches: list[tuple[torch.Tensor, torch.Tensor]], eps: float,
                       autocast: Callable) -> Callable[[int], None]:
    """FGSM with a uniform random start, alpha = 1.25 eps, structured as the reference implementation is."""
    alpha = 1.25 * eps

    def epoch(n: int) -> None:
        for x, y in batches[:n]:
            delta = torch.zeros_like(x).uniform_(-eps, eps)
            delta.data = torch.min(torch.max(delta, -x), 1 - x)  # keep x + delta in [0,1]
            delta.requires_grad = True
            with autocast():
                loss = F.cross_entropy(model(x + delta), y)
            loss.backward()  # through the weights too: their gradients are computed and discarded below
            grad = delta.grad.detach()
            delta.data = torch.clamp(delta + alpha * torch.sign(grad), -eps, eps)
            delta.data = torch.min(torch.max(delta, -x), 1 - x)
            delta = delta.detach()
            with autocast():
                loss = F.cross_entropy(model(x + delta), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return epoch


def _art_fbf(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]],
             eps: float, num_classes: int) -> Callable[[int], None]:
    """ART's Fast-is-better-than-free trainer on the same examples (one ``fit`` epoch over all minibatches)."""
    import numpy as np
    from art.defences.trainer import AdversarialTrainerFBFPyTorch
    from art.estimators.classification import PyTorchClassifier

    x = torch.cat([b[0] for b in batches]).cpu().numpy().astype(np.float32)
    y = np.eye(num_classes, dtype=np.float32)[torch.cat([b[1] for b in batches]).cpu().numpy()]  # ART: one-hot
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                                   input_shape=tuple(x.shape[1:]), nb_classes=num_classes, clip_values=(0.0, 1.0),
                                   device_type="gpu" if batches[0][0].is_cuda else "cpu")
    trainer = AdversarialTrainerFBFPyTorch(classifier, eps=eps, use_amp=False)
    batch_size = batches[0][0].shape[0]

    def epoch(n: int) -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # ART's own progress bar
            trainer.fit(x[:n * batch_size], y[:n * batch_size], nb_epochs=1, batch_size=batch_size)

    return epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_peers(cfg: FinetuneConfig, methods: Sequence[str] = DEFAULT_PEER_METHODS, rounds: int = 3, batches: int = 8,
              warmup: int = 1, num_classes: int | None = None, peers: bool = True,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every runner for ``rounds`` interleaved epochs of ``batches`` minibatches; returns the peers JSON."""
    names = parse_methods(methods)
    if rounds < 1 or batches < 1 or warmup < 0:
        raise UserError(f"--rounds {rounds} / --batches {batches} / --warmup {warmup}: use rounds and batches >= 1, "
                        "warmup >= 0")
    if options.own_precision(cfg):  # a precision an option implements in the weights themselves (train/options/)
        raise UserError(f"robustify bench --peers with --mixed-precision {cfg.train.mixed_precision} is not accepted: "
                        "the peers train fp32 weights; compare them at no (fp32) or bf16 (autocast)")
    cfg = resolve_hardware_settings(copy.deepcopy(cfg), target_device_type())
    base, accelerator, data = synthetic_setup(cfg, num_classes, batches)
    device = accelerator.device
    b, shape = cfg.data.batch_size, tuple(base.input_size)
    eps = cfg.threat.eps

    def fresh() -> tuple[RobustModel, torch.optim.Optimizer]:
        model = copy.deepcopy(base).to(device).train()
        use_default_input_grad(model)  # the peers run PyTorch's default kernels, as they would for their users
        return model, build_optimizer(model, cfg)

    def autocast() -> contextlib.AbstractContextManager:  # the peers get the precision robustify's step gets
        if cfg.train.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.train.mixed_precision == "bf16"
                              else torch.float16)

    total = (warmup + rounds) * batches
    runners = [Runner(PLAIN, "baseline", 1, _plain_natural(*fresh(), data, autocast),
                      note="plain PyTorch natural loop")]
    release(accelerator)
    for name in names:
        method, step, _ = method_step(name, cfg, base, accelerator, total)

        def epoch(n: int, step: Callable = step) -> None:
            for x, y in data[:n]:
                step(x, y)

        replays = method.optimizer_steps_per_batch
        runners.append(Runner(f"robustify:{name}", "robustify", method.passes_per_batch, epoch, replays,
                              note=str(method.describe())))
    skipped: list[dict[str, str]] = []
    if peers:
        if cfg.threat.norm != "Linf":
            skipped.append({"name": FAST_AT, "reason": "the reference code is Linf only"})
        else:
            runners.append(Runner(FAST_AT, "peer", 2, _fast_at_reference(*fresh(), data, eps, autocast),
                                  note="FGSM-RS, attack loss.backward() through the weights (Fast AT reference style)"))
        if not art_available():
            skipped.append({"name": ART, "reason": "adversarial-robustness-toolbox is not installed "
                                                   "(pip install -e '.[bench]')"})
        elif cfg.threat.norm != "Linf" or cfg.train.mixed_precision != "no":
            skipped.append({"name": ART, "reason": "timed in fp32 Linf only"})
        else:
            import art

            runners.append(Runner(ART, "peer", 2, _art_fbf(*fresh(), data, eps, base.num_classes),
                                  note=f"IBM ART {art.__version__} AdversarialTrainerFBFPyTorch (numpy in, its "
                                       "own cyclic lr)"))
    for r in runners:  # warm-up: allocator, oneDNN/cuDNN primitive caches, ART's first-call setup
        if progress:
            progress(f"warm-up {r.name}")
        for _ in range(warmup):
            r.epoch(batches)
    for i in range(rounds):
        if progress:
            progress(f"round {i + 1}/{rounds}: {len(runners)} runners x {batches} minibatches of {b}")
        for r in runners:
            r.epoch(1)  # untimed: this runner's own allocations and caches, not the previous runner's
            _sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            r.epoch(batches)
            _sync(device)
            r.wall.append(time.perf_counter() - w0)
            r.cpu.append(time.process_time() - c0)
    unit_wall, unit_cpu = statistics.median(runners[0].wall), statistics.median(runners[0].cpu)
    results = []
    for r in runners:
        wall, cpu = statistics.median(r.wall), statistics.median(r.cpu)
        results.append({
            "name": r.name, "kind": r.kind, "passes_per_batch": r.passes, "replays": r.replays,
            "seconds_per_epoch": wall, "epoch_seconds": r.wall, "cpu_seconds_per_epoch": cpu,
            "epoch_cpu_seconds": r.cpu,
            "images_per_second": batches * b / wall,
            "relative_to_plain": wall / unit_wall, "relative_to_plain_cpu": cpu / unit_cpu,
            "relative_per_replay": wall / unit_wall / r.replays, "note": r.note,
        })
    config = {
        "model": cfg.model.name, "input_size": list(shape), "batch_size": b, "batches_per_epoch": batches,
        "rounds": rounds, "warmup_epochs": warmup, "methods": names, "baseline": PLAIN,
        "mixed_precision": cfg.train.mixed_precision, "channels_last": cfg.model.channels_last,
        "threat": {"norm": cfg.threat.norm, "eps": eps},
        "method": {"steps": cfg.method.steps, "replays": cfg.method.replays, "bn_mode": cfg.method.bn_mode},
        "optimizer": cfg.optim.name, "seed": cfg.train.seed,
        "timing": "median over interleaved rounds of one epoch each, each after one untimed minibatch of the same "
                  "runner; wall clock (CUDA synchronised) and process CPU time; synthetic data already on the device",
    }
    hardware = bench_hardware(accelerator, cfg.model.channels_last)
    release(accelerator)
    accelerator.end_training()
    return {"hardware": hardware, "config": config, "results": results, "skipped": skipped}


def peers_table(report: dict[str, Any]):
    """The terminal table of a peers report."""
    from ..report import Listing

    cfg = report["config"]
    size = "x".join(map(str, cfg["input_size"]))
    table = Listing(title=f"robustify bench --peers: {cfg['model']}, {size}, batch {cfg['batch_size']}, "
                          f"{cfg['batches_per_epoch']} minibatches x {cfg['rounds']} interleaved rounds",
                    name="runner", drop=("x plain\n/ replay", "x plain\n(CPU time)", "passes\n/ batch",
                                         "images\n/ s"))
    table.add_column("runner")
    for header in ("passes\n/ batch", "s / epoch", "images\n/ s", "x plain\n(wall)", "x plain\n(CPU time)",
                   "x plain\n/ replay"):
        table.add_column(header, justify="right")
    for r in report["results"]:
        table.add_row(r["name"], str(r["passes_per_batch"]), f"{r['seconds_per_epoch']:.3f}",
                      f"{r['images_per_second']:.1f}", f"{r['relative_to_plain']:.2f}",
                      f"{r['relative_to_plain_cpu']:.2f}",
                      f"{r['relative_per_replay']:.2f}" if r["replays"] > 1 else "")
    return table




def peers_notes(report: dict[str, Any]) -> list[str]:
    hw = report["hardware"]
    lines = [f"{r['name']}: {r['note']}" for r in report["results"]]
    lines += [f"skipped {s['name']}: {s['reason']}" for s in report["skipped"]]
    threads = "" if hw["device_type"] == "cuda" else f", {hw['torch_threads']} torch threads"
    lines.append(f"{hw['device_type']}: {hw['device_name']} ({hw['cpu_count']} CPUs{threads}), torch {hw['torch']}")
    lines.append(report["config"]["timing"])
    return lines


def main(recipe: str = "quickstart", model: str | None = None, batch_size: int | None = None,
         image_size: int | None = None, methods: str | Sequence[str] = DEFAULT_PEER_METHODS, rounds: int = 3,
         batches: int = 8, warmup: int = 1, num_classes: int | None = None, mixed_precision: str | None = None,
         channels_last: bool = False, overrides: Sequence[str] = (), output: str | None = None,
         show: bool = True) -> dict[str, Any]:
    """What ``robustify bench --peers`` does: configure, measure, print the table (``show``) and the notes, write
    ``output``."""
    from .steps import bench_config, print_and_save, progress_reporter

    names = parse_methods(methods)
    cfg = bench_config(recipe, model, batch_size, image_size, mixed_precision, channels_last, overrides)
    with progress_reporter() as progress:
        report = run_peers(cfg, names, rounds=rounds, batches=batches, warmup=warmup, num_classes=num_classes,
                           progress=progress)
    print_and_save(report, peers_table(report) if show else None, peers_notes(report), output)
    return report
