"""The adversarial fine-tuning loop: one readable loop on 🤗 Accelerate.

    before = evaluate(model)
    for epoch in range(method.epochs(cfg.train.epochs)):
        for x, y in train_loader:                  # [0,1] tensors at the model's input size
            methods[cfg.method].step(ctx, x, y)    # which inputs to train on; ctx.optimize() steps the weights
        probe = PGD on a fixed training minibatch  # catastrophic-overfitting guard, best-robust selection
        accelerator.save_state(checkpoints/epoch_N)
    after = evaluate(best model); export run folder

The learning rate is set by the schedule before every optimizer step. Accelerate handles devices, DDP across
processes/nodes (gloo on CPU, NCCL on GPU), mixed precision and checkpoint state; the main process alone evaluates
and writes the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import data as data_mod
from . import runlock
from .config import FinetuneConfig, dump_yaml
from .divergence import DivergenceGuard
from .errors import UserError
from .export import write_run_folder
from .fileio import atomic_write_json
from .methods import Method, StepContext, build_method
from .models import RobustModel, load_backbone
from .optim import OptimizerStepper, build_optimizer
from .report import before_after_table, history_table, plot_history, print_table
from .robust_acc import evaluate_pgd

CHECKPOINTS = "checkpoints"
BEST = "best.safetensors"


def make_accelerator(cfg: FinetuneConfig, log_with: str | None = None, project_dir: str | None = None) -> Accelerator:
    """An Accelerator that synchronises processes on CPU too.

    A plain ``Accelerator()`` started by torchrun on a machine without CUDA runs unsynchronised copies; passing
    ``cpu=True`` there (or when ``ACCELERATE_USE_CPU`` is set) makes Accelerate set up a gloo process group.
    """
    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if cfg.train.mixed_precision == "fp16" and use_cpu:
        raise UserError("train.mixed_precision='fp16' needs a GPU; use 'bf16' or 'no' on CPU")
    # trackers that write files need a logging dir at construction; the run folder's logs/ replaces it once the
    # run folder's name (a timestamp agreed by all processes) is known
    project = ProjectConfiguration(project_dir=project_dir or os.getcwd(), logging_dir=project_dir or os.getcwd())
    return Accelerator(cpu=use_cpu, mixed_precision=cfg.train.mixed_precision, log_with=log_with,
                       project_config=project)


class TrainState:
    """Everything besides model/optimizer that a resumed run needs (saved by ``accelerator.save_state``)."""

    def __init__(self) -> None:
        self.epoch = 0  # epochs completed
        self.opt_steps = 0
        self.history: list[dict[str, Any]] = []
        self.best_probe = -1.0
        self.best_epoch = -1
        self.stopped: str | None = None
        self.wall_seconds = 0.0
        self.batch_passes = 0
        self.example_passes = 0
        self.before: dict[str, Any] | None = None
        self.output_dir = ""

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _MethodState:
    """Adapter so a method's persistent tensors (free AT's delta) are checkpointed too."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def state_dict(self) -> dict[str, Any]:
        sd = getattr(self.method, "state_dict", None)
        return sd() if sd else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.method, "load_state_dict"):
            self.method.load_state_dict(state)


def _flatten_cfg(cfg: FinetuneConfig) -> dict[str, Any]:
    from .config import _flatten

    return _flatten(cfg.to_dict())


def resolve_output_dir(cfg: FinetuneConfig, resume: bool, accelerator: Accelerator) -> Path:
    """Expand ``{time}`` in ``output_dir`` (the same on every process), lock the run folder and check that a run
    may start (or resume) there (``runlock``: one run per folder, a folder stopped before its first checkpoint is
    restartable, temporary files of a killed run are removed)."""
    stamp = [datetime.now().strftime("%Y%m%d-%H%M%S")]
    if accelerator.num_processes > 1:
        broadcast_object_list(stamp, from_process=0)
    run_dir = Path(cfg.output_dir.replace("{time}", stamp[0])).expanduser()
    share = (lambda v: broadcast_object_list(v, from_process=0)) if accelerator.num_processes > 1 else None
    note = runlock.claim(run_dir, resume, is_main=accelerator.is_main_process, share=share)
    if note:
        accelerator.print(f"robustify: {note}")
    return run_dir


def _epoch_dirs(run_dir: Path) -> list[Path]:
    ckpt = run_dir / CHECKPOINTS
    if not ckpt.is_dir():
        return []
    return sorted((p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("epoch_")),
                  key=lambda p: int(p.name.split("_")[1]))


def _save_checkpoint(accelerator: Accelerator, run_dir: Path, epoch: int, keep: int = 2) -> None:
    """``accelerator.save_state`` into a temporary folder, renamed to ``checkpoints/epoch_N`` when complete."""
    final = run_dir / CHECKPOINTS / f"epoch_{epoch:03d}"
    tmp = run_dir / CHECKPOINTS / f".tmp_epoch_{epoch:03d}"
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            import shutil

            shutil.rmtree(final)
        tmp.rename(final)
        for old in _epoch_dirs(run_dir)[:-keep]:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def contiguous_weights(model: torch.nn.Module, channels_last: bool) -> Iterator[None]:
    """safetensors stores only contiguous tensors: switch a channels_last model back while it is being saved."""
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        model.to(memory_format=torch.channels_last)


def ranks_in_sync(model: torch.nn.Module, accelerator: Accelerator) -> bool:
    """True when every process holds bit-identical weights (checked on a per-tensor fingerprint)."""
    if accelerator.num_processes == 1:
        return True
    with torch.no_grad():
        fp = torch.stack([p.detach().double().sum() + p.detach().double().abs().sum() * 1e-3
                          for p in model.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(fp[None]).view(accelerator.num_processes, -1)
    return bool((gathered == gathered[0]).all().item())


def hardware_info(accelerator: Accelerator) -> dict[str, Any]:
    dev = accelerator.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": f"{dev.type}: {name}", "world_size": accelerator.num_processes,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "mixed_precision": accelerator.mixed_precision}


def _probe(model: RobustModel, probe: tuple[torch.Tensor, torch.Tensor], cfg: FinetuneConfig,
           device: torch.device, autocast) -> tuple[float, float]:
    x, y = probe[0].to(device), probe[1].to(device)
    res = evaluate_pgd(model, [(x, y)], cfg.threat.eps, cfg.threat.norm, steps=cfg.train.probe_steps,
                       seed=cfg.train.seed, device=device, autocast=autocast, disable_progress=True)
    return res["clean_acc"], res["pgd_acc"]


def _evaluate(model: RobustModel, loaders: data_mod.Loaders, cfg: FinetuneConfig, accelerator: Accelerator,
              desc: str) -> dict[str, Any]:
    e = cfg.eval
    res = evaluate_pgd(model, loaders.eval, cfg.threat.eps, cfg.threat.norm, steps=e.pgd_steps,
                       restarts=e.pgd_restarts, loss=e.pgd_loss, seed=cfg.train.seed, device=accelerator.device,
                       autocast=accelerator.autocast, desc=desc)
    res["split"] = cfg.data.eval_split
    if e.autoattack:
        from .robust_acc import autoattack_accuracy

        res.update(autoattack_accuracy(model, loaders.eval, cfg.threat, device=accelerator.device))
    return res


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Adversarially fine-tune ``cfg.model`` on ``cfg.data``; returns metrics.json's content (main process)."""
    accelerator = make_accelerator(cfg, log_with=cfg.train.log_with)
    run_dir = resolve_output_dir(cfg, resume, accelerator)
    if cfg.train.log_with:
        accelerator.project_configuration.logging_dir = str(run_dir / "logs")
        accelerator.init_trackers(run_dir.name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                        for k, v in _flatten_cfg(cfg).items()})
    cfg = copy.deepcopy(cfg)
    cfg.output_dir = str(run_dir)
    set_seed(cfg.train.seed)
    main = accelerator.is_main_process
    say = accelerator.print

    # model and data: the backbone's pretrained_cfg decides input size, interpolation and normalization
    probe_model = load_backbone(cfg.model.name, pretrained=cfg.model.pretrained, checkpoint=cfg.model.checkpoint,
                                trust_pickle=cfg.model.trust_pickle)
    from timm.data import resolve_data_config

    data_config = resolve_data_config(model=probe_model.backbone)
    loaders = data_mod.build_loaders(cfg.data, data_config, cfg.eval.n_examples, cfg.train.probe_size,
                                     seed=cfg.train.seed)
    backbone = probe_model.backbone
    if backbone.num_classes != loaders.num_classes:
        backbone.reset_classifier(loaders.num_classes)
    model = RobustModel(backbone, probe_model.normalize.mean.flatten().tolist(),
                        probe_model.normalize.std.flatten().tolist(), loaders.input_size, source=cfg.model.name)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)

    method = build_method(cfg.method, cfg.threat)
    optimizer = build_optimizer(model, cfg)
    state = TrainState()
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, loaders.train)
    accelerator.register_for_checkpointing(state, _MethodState(method))
    raw: RobustModel = accelerator.unwrap_model(model)
    if resume and _epoch_dirs(run_dir):  # runlock: a folder stopped before its first checkpoint starts over
        last = _epoch_dirs(run_dir)[-1]
        accelerator.load_state(str(last))
        say(f"resumed from {last} (epoch {state.epoch} done)")
        if state.stopped:
            say(f"that run had already stopped: {state.stopped}")
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(dump_yaml(cfg))
    accelerator.wait_for_everyone()

    epochs = method.epochs(cfg.train.epochs)
    batches_per_epoch = len(train_loader)
    total_steps = epochs * batches_per_epoch * method.optimizer_steps_per_batch
    say(f"robustify: {cfg.method.name} on {cfg.model.name} / {cfg.data.name}: {loaders.train_size} train, "
        f"{loaders.eval_size} eval examples at {loaders.input_size}, {epochs} epochs x {batches_per_epoch} batches, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}")

    if state.before is None:
        state.before = _evaluate(raw, loaders, cfg, accelerator, "eval before") if main else {}

    optimize = OptimizerStepper(accelerator, model, optimizer, cfg, total_steps, opt_steps=state.opt_steps)
    ctx = StepContext(model=model, attack_model=raw, optimize=optimize, autocast=accelerator.autocast)
    guard = DivergenceGuard(cfg, run_dir, loaders.num_classes, accelerator)  # divergence.py: NaN/inf, exploding loss
    best_path = run_dir / CHECKPOINTS / BEST
    start = time.perf_counter()
    first_epoch = state.epoch
    while state.epoch < epochs and not state.stopped:
        if cfg.train.stop_after is not None and state.epoch - first_epoch >= cfg.train.stop_after:
            say(f"robustify: stopped after {cfg.train.stop_after} epoch(s) as asked (train.stop_after); "
                f"continue with: robustify finetune --output-dir {run_dir} --resume --set train.stop_after=null")
            accelerator.end_training()
            runlock.release(run_dir)
            return {}
        epoch = state.epoch + 1
        t0 = time.perf_counter()
        loaders.set_epoch(cfg.train.seed, epoch)
        model.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        correct = torch.zeros((), device=accelerator.device)
        seen = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", disable=not main, leave=False)
        for i, (x, y) in enumerate(bar):
            x = data_mod.to_unit(x)
            if cfg.data.augment == "flip-crop":
                x = data_mod.flip_crop(x)
            if cfg.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            res = method.step(ctx, x, y)
            loss_sum += res.loss * y.shape[0]
            correct += (res.logits.argmax(1) == y).sum()
            seen += y.shape[0]
            if (i + 1) % cfg.train.log_every == 0:
                guard.check_loss(loss_sum, seen, optimize.opt_steps, epoch, optimizer.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        state.opt_steps = optimize.opt_steps
        guard.check_loss(loss_sum, seen, optimize.opt_steps, epoch, optimizer.param_groups[0]["lr"])
        guard.check_model(raw, optimize.opt_steps, epoch, optimizer.param_groups[0]["lr"])  # before probe/best/save
        state.batch_passes += batches_per_epoch * method.passes_per_batch
        state.example_passes += seen * accelerator.num_processes * method.passes_per_batch
        # the probe: same fixed minibatch every epoch; the main process measures, everyone acts on its verdict
        verdict = [None]
        if main:
            p_clean, p_rob = _probe(raw, loaders.probe, cfg, accelerator.device, accelerator.autocast)
            note = ""
            if state.best_epoch > 0 and state.best_probe - p_rob > cfg.train.guard_drop:
                note = (f"catastrophic overfitting: probe PGD accuracy fell from {state.best_probe:.1%} "
                        f"(epoch {state.best_epoch}) to {p_rob:.1%}; rolled back to epoch {state.best_epoch}")
            elif p_rob >= state.best_probe:
                note = "best"
            verdict = [(p_clean, p_rob, note)]
        if accelerator.num_processes > 1:
            broadcast_object_list(verdict, from_process=0)
        p_clean, p_rob, note = verdict[0]
        if note.startswith("catastrophic"):
            accelerator.wait_for_everyone()
            raw.load_state_dict(load_file(str(best_path)))
            state.stopped = note
            say(f"robustify: {note}")
        elif note == "best":
            state.best_probe, state.best_epoch = p_rob, epoch
            if main:
                best_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = best_path.with_suffix(".tmp")
                with contiguous_weights(raw, cfg.model.channels_last):
                    save_file({k: v.detach().cpu().contiguous() for k, v in raw.state_dict().items()}, str(tmp))
                tmp.replace(best_path)
        totals = accelerator.reduce(torch.stack([loss_sum, correct]), reduction="sum")
        n_all = seen * accelerator.num_processes
        state.history.append({
            "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": totals[0].item() / n_all,
            "train_acc": totals[1].item() / n_all, "probe_clean_acc": p_clean, "probe_robust_acc": p_rob,
            "seconds": time.perf_counter() - t0, "opt_steps": state.opt_steps, "note": note,
        })
        state.epoch = epoch
        state.wall_seconds += time.perf_counter() - start
        start = time.perf_counter()
        h = state.history[-1]
        say(f"epoch {epoch}/{epochs}  loss {h['loss']:.3f}  train acc {h['train_acc']:.1%}  probe clean "
            f"{p_clean:.1%}  probe PGD {p_rob:.1%}  lr {h['lr']:.4g}  {h['seconds']:.1f}s  {note}")
        with contiguous_weights(raw, cfg.model.channels_last):
            _save_checkpoint(accelerator, run_dir, epoch)
        accelerator.log({k: v for k, v in h.items() if isinstance(v, (int, float))}, step=epoch)

    # the model that is exported: the best probe-robust epoch, or the last one
    accelerator.wait_for_everyone()
    in_sync = ranks_in_sync(raw, accelerator)
    if not in_sync:
        raise RuntimeError("the processes' weights differ after training: gradients were not synchronised")
    if cfg.train.select == "best-robust" and best_path.is_file() and not state.stopped:
        raw.load_state_dict(load_file(str(best_path)))
    metrics: dict[str, Any] = {}
    if main:
        after = _evaluate(raw, loaders, cfg, accelerator, "eval after")
        selected = state.best_epoch if cfg.train.select == "best-robust" or state.stopped else state.epoch
        metrics = {
            "before": state.before, "after": after, "history": state.history,
            "selected_epoch": selected, "stopped": state.stopped,
            "cost": {"wall_seconds": state.wall_seconds, "epochs": state.epoch, "optimizer_steps": state.opt_steps,
                     "batch_passes": state.batch_passes, "example_passes": state.example_passes,
                     "passes_per_batch": method.passes_per_batch, "hardware": hardware_info(accelerator),
                     "world_size": accelerator.num_processes, "ranks_in_sync": in_sync},
        }
        robustness = {
            "name": run_dir.name, "threat_model": {"norm": cfg.threat.norm, "eps": cfg.threat.eps},
            "method": method.describe() | ({"bn_mode": cfg.method.bn_mode} if cfg.method.name != "natural" else {}),
            "schedule": {"name": cfg.schedule.name, "lr": cfg.schedule.lr},
            "base_model": cfg.model.name, "dataset": cfg.data.name, "eval_split": cfg.data.eval_split,
            "architecture": raw.backbone.pretrained_cfg.get("architecture", type(raw.backbone).__name__),
            "input_size": list(raw.input_size), "mean": raw.normalize.mean.flatten().tolist(),
            "std": raw.normalize.std.flatten().tolist(), "epochs": state.epoch, "batch_size": cfg.data.batch_size,
            "optimizer": cfg.optim.name,
            "results": {k: after.get(k) for k in ("clean_acc", "pgd_acc", "autoattack_acc") if k in after},
        }
        plot_history(state.history, run_dir / "history.png")  # before the card, which embeds it
        atomic_write_json(run_dir / "history.json", state.history)
        with contiguous_weights(raw, cfg.model.channels_last):
            write_run_folder(run_dir, raw, robustness, metrics, dump_yaml(cfg), loaders.label_names)
        print_table(history_table(state.history))
        print_table(before_after_table(state.before, after))
        say(f"run folder: {run_dir}  (load with timm.create_model('local-dir:{run_dir}', pretrained=True))")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    runlock.release(run_dir)  # the run is over: the folder may be resumed or evaluated by another process
    return metrics
