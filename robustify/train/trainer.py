"""The adversarial fine-tuning loop: one readable loop on 🤗 Accelerate.

    run = setup(cfg)                                   # model, data, optimizer, method; resume from a checkpoint
    before = evaluate(run)                             # sharded over all processes, always fp32
    for epoch in epochs:
        for x, y in this process's minibatches:        # from the checkpointed position on a resume
            methods[cfg.method].step(ctx, x, y)        # which inputs to train on; ctx.optimize() steps the weights
            checkpoint every N optimizer steps; on SIGTERM/SIGINT checkpoint and exit
        end_epoch: PGD probe → guard verdict (rollback on catastrophic overfitting) → best-robust selection → checkpoint
    finalise: the selected weights, evaluate(run), the run folder

Accelerate handles devices, DDP across processes/nodes (gloo on CPU, NCCL on GPU), mixed precision, gradient
accumulation and the model/optimizer/RNG state. Every evaluation (before, probe, after) runs on all processes, each
on its share of the examples, in fp32 (``robust_acc``), so no process waits in a collective for long.

Must not: implement a method, an attack or a file format itself (it calls the modules that own them).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from .. import data as data_mod
from .. import runlock
from ..config import FinetuneConfig, config_from_dict, dump_yaml, expand_stages, flatten, scaled_lr
from ..errors import Interrupted, UserError
from ..evaluate.autoattack import sharded_autoattack
from ..evaluate.collectives import broadcast_buffers, stage
from ..evaluate.kernel import fp32_math, shard_range, sharded_pgd_accuracy
from ..fileio import atomic_write_json, atomic_write_text
from ..models import RobustModel, build_robust_model, load_backbone
from ..publish import runrecord
from ..publish.export import write_run_folder
from ..report import before_after_table, history_table, plot_history, print_table
from ..runfolder import HISTORY, HISTORY_PLOT, RECIPE
from . import options
from .checkpoint import (
    STATE_FILE,
    BestWeights,
    StopSignal,
    TrainState,
    check_same_data,
    check_same_recipe,
    checkpoint_dirs,
    choose_checkpoint,
    contiguous_weights,
    load_checkpoint,
    recipe_file_edited,
    resume_changes,
    run_fingerprint,
    save_checkpoint,
)
from .divergence import DivergenceGuard
from .hardware import (
    apply_determinism,
    check_sync_bn,
    comm_hook_name,
    maybe_compile,
    out_of_memory,
    resolve_hardware_settings,
    target_device_type,
)
from .methods import Method, StepContext, build_method
from .optim import OptimizerStepper, build_optimizer, step_autocast
from .preflight import preflight
from .schedules import build_schedule, warmup_for_scaled_lr


def make_accelerator(cfg: FinetuneConfig, log_with: str | None = None, project_dir: str | None = None) -> Accelerator:
    """An Accelerator that synchronises processes on CPU too, with a deliberate process-group timeout.

    A plain ``Accelerator()`` started by torchrun on a machine without CUDA runs unsynchronised copies; passing
    ``cpu=True`` there (or when ``ACCELERATE_USE_CPU`` is set) makes Accelerate set up a gloo process group.

    The timeout (``train.dist_timeout_minutes``, default 60): every evaluation is sharded, so in steady state no
    process waits in a collective for more than a minibatch or a checkpoint write. The one long wait is the first
    preparation of a map-style data set (download and Arrow conversion by the main process while the others wait in
    ``main_process_first``), which can take tens of minutes for a large set on a slow link; NCCL's default of 10
    minutes would turn that into a crash, an infinite timeout would turn a dead peer into a hang.
    """
    apply_determinism(cfg.train.deterministic)  # before cuBLAS starts (CUBLAS_WORKSPACE_CONFIG)
    use_cpu = target_device_type() == "cpu"
    resolve_hardware_settings(cfg, "cpu" if use_cpu else "cuda")  # 'auto' precision / layout, in place
    # trackers that write files need a logging dir at construction; the run folder's logs/ replaces it once the
    # run folder's name (a timestamp agreed by all processes) is known
    project = ProjectConfiguration(project_dir=project_dir or os.getcwd(), logging_dir=project_dir or os.getcwd(),
                                   save_on_each_node=cfg.train.save_on_each_node)
    timeout = InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.train.dist_timeout_minutes))
    # an option's own precision (pure-bf16) is no autocast for Accelerate: the model itself is in it (train/options/)
    precision = "no" if options.own_precision(cfg) else cfg.train.mixed_precision
    return Accelerator(cpu=use_cpu, mixed_precision=precision, log_with=log_with,
                       project_config=project, gradient_accumulation_steps=cfg.train.grad_accum,
                       kwargs_handlers=[timeout, *options.accelerator_kwargs(cfg)])


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
    if accelerator.num_processes > 1:
        # a node without a shared disk holds its own copy of the folder, which the main process never sees: its
        # local main removes what a killed run left there (with a shared disk the main process already did, and
        # nobody writes before the barrier, so this finds nothing)
        if accelerator.is_local_main_process and not accelerator.is_main_process and run_dir.is_dir():
            runlock.clean_temporaries(run_dir)
        accelerator.wait_for_everyone()
    return run_dir


def check_resume(run_dir: Path, cfg: FinetuneConfig) -> list[str]:
    """Refuse a ``--resume`` that would continue a different run; returns notes on accepted changes."""
    saved_path = run_dir / RECIPE
    if not saved_path.is_file():
        return []
    from ..config import load_yaml_file

    saved = config_from_dict(load_yaml_file(saved_path, "the run's recipe") or {})
    refused, notes = resume_changes(flatten(saved.to_dict()), flatten(cfg.to_dict()))
    if refused:
        raise UserError(f"--resume continues the same run, but {'; '.join(refused)} (the run's own settings are in "
                        f"{saved_path}); start a new --output-dir for a different run, or only raise train.epochs to "
                        "extend this one")
    return notes


def resume_checkpoint(accelerator: Accelerator, run_dir: Path, cfg: FinetuneConfig,
                      common: set[str] | None = None) -> Path:
    """The checkpoint to resume from: the newest intact one (each verified; a damaged one is reported and set
    aside, :func:`checkpoint.choose_checkpoint`) among ``common`` (the names every process holds), made by this run's
    recipe (:func:`checkpoint.check_same_recipe`). The main process verifies and every process gets its verdict."""
    verdict: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            folder = choose_checkpoint(run_dir, say=accelerator.print, among=common)
            saved = TrainState.from_json(json.loads((folder / STATE_FILE).read_text()))
            edited = recipe_file_edited(run_dir)
            if edited and not saved.fingerprint:
                raise UserError(f"--resume: {run_dir / RECIPE} was edited after the run wrote it, and "
                                f"checkpoint {folder.name} is older than recipe fingerprints, so the change cannot be "
                                "checked; undo the edit, or start a new --output-dir for a different run")
            check_same_recipe(folder, saved.fingerprint, cfg, edited)
            if edited:
                accelerator.print(f"robustify: {run_dir / RECIPE} was edited after the run wrote it; only keys "
                                  "a resume may change differ from the checkpoint's recipe, continuing")
            verdict = [("ok", str(folder))]
        except UserError as e:
            verdict = [("error", str(e))]
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict, from_process=0)
    kind, text = verdict[0]
    if kind == "error":
        raise UserError(text)
    return Path(text)


def ranks_in_sync(model: torch.nn.Module, accelerator: Accelerator) -> bool:
    """True when every process holds bit-identical weights and buffers (BatchNorm running statistics and batch
    counts too: they are part of the exported model), checked on a per-tensor fingerprint."""
    if accelerator.num_processes == 1:
        return True
    with torch.no_grad():
        tensors = [*model.parameters(), *model.buffers()]
        fp = torch.stack([t.detach().double().sum() + t.detach().double().abs().sum() * 1e-3
                          for t in tensors]).to(accelerator.device)
    with stage("weights fingerprint"):
        gathered = accelerator.gather(fp[None]).view(accelerator.num_processes, -1)
    return bool((gathered == gathered[0]).all().item())


def same_buffers(run: Run) -> None:
    """Process 0's BatchNorm statistics on every process (the module and its weight average), before a probe, an
    evaluation, a best-weights capture or an export: DDP broadcasts buffers only at the next training forward, and
    attack forwards (which run on the unwrapped module) update them locally, so without this each process would
    measure and keep a slightly different model. A no-op for one process."""
    broadcast_buffers(run.raw, "BatchNorm buffer broadcast")
    if run.probed is not run.raw:
        broadcast_buffers(run.probed, "BatchNorm buffer broadcast (weight average)")


def hardware_info(accelerator: Accelerator) -> dict[str, Any]:
    dev = accelerator.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": f"{dev.type}: {name}", "world_size": accelerator.num_processes,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "mixed_precision": accelerator.mixed_precision}


@dataclass(frozen=True)
class Verdicts:
    """What the run's verdicts (before/after evaluation, probe, guard, best-robust selection) measure. They are made
    at the exported resolution: a stage at another resolution (progressive resizing) trains there but is judged by
    this view of the same weights (``Run.probed`` itself unless the stage's resolution differs) on this probe batch
    (see :func:`verdict_view`)."""

    model: torch.nn.Module
    probe_batch: tuple[torch.Tensor, torch.Tensor]
    eval_set: tuple[torch.Tensor, torch.Tensor]  # this process's block of the evaluation subset (decoded alone)
    eval_total: int  # the subset's size (all processes' blocks together)


@dataclass(kw_only=True)
class Run:
    """Everything one stage of a fine-tuning run works with; built by :func:`setup`, by keyword, in one place."""

    cfg: FinetuneConfig
    accelerator: Accelerator
    run_dir: Path
    model: torch.nn.Module  # prepared (DDP-wrapped when several processes): training forwards
    raw: RobustModel  # the module itself: attacks and training forwards
    probed: torch.nn.Module  # what the probe measures, best-robust keeps and the run folder exports (raw or an average)
    weights: str  # which weights `probed` holds: "raw", or the option's name for them
    optimizer: torch.optim.Optimizer
    loaders: data_mod.Loaders
    method: Method
    state: TrainState
    best: BestWeights
    stepper: OptimizerStepper
    ctx: StepContext
    epochs: int
    lr: float  # the peak learning rate after global-batch scaling
    verdicts: Verdicts
    guard: DivergenceGuard  # non-finite or exploding loss / weights stop the run (divergence.py)
    head_replaced: bool  # the backbone's classifier was replaced for this data's classes (a new head)
    options: list[options.Option]  # the stage's active options (train/options/)
    clock: float = 0.0  # perf_counter at the last wall-time update (see tick)
    stage_name: str = ""  # the stage's name when the recipe has several

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str) -> None:
        self.accelerator.print(text)

    def tick(self) -> None:
        """Add the time since the last tick to the run's wall time (kept in the checkpointed state)."""
        now = time.perf_counter()
        if self.clock:
            self.state.wall_seconds += now - self.clock
        self.clock = now

    def judged(self) -> torch.nn.Module:
        """The model every verdict measures: ``verdicts.model``, or the fp32 copy of it an option training in its own
        precision gives (the evaluation is fp32 whatever the training precision)."""
        return self.evaluation_model(self.verdicts.model)

    def evaluation_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as a verdict or a teacher sees it: itself, or an active option's fp32 copy (pure-bf16)."""
        return options.evaluation_model(self.cfg, model)

    def resume_command(self) -> str:
        return f"robustify finetune --output-dir {self.run_dir} --resume"


# ------------------------------------------------------------------------------------------------------- setup
def _end(accelerator: Accelerator) -> None:
    """Every process past its last collective, then the process group destroyed (``end_training``): a gloo group
    torn down while a peer still has work in flight can abort the exit ("terminate called without an active
    exception", seen on torch 2.14 with a Python comm hook), and torchrun then reports a finished run as failed."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def start(cfg: FinetuneConfig, resume: bool) -> tuple[Accelerator, Path, FinetuneConfig]:
    """The Accelerator and the run folder (locked; a ``--resume`` that would continue a different run is refused)."""
    notes = preflight(cfg)  # exactly what --dry-run checks, before any device, data or weights
    accelerator = make_accelerator(cfg, log_with=cfg.train.log_with)
    for note in notes:  # how run-level options apply to the stages
        accelerator.print(f"robustify: {note}")
    if any(stage.data.decode == "device" for _, stage in expand_stages(cfg)):  # before any weights or data
        from ..data.device_decode import check_device

        check_device(accelerator.device)  # CUDA with nvJPEG: a dry run (any machine) does not check it
    if accelerator.num_processes > 1:  # model.sync_bn of every stage, before any stage trains (a natural first stage)
        for _, stage_cfg in expand_stages(cfg):
            if stage_cfg.model.sync_bn:
                check_sync_bn(stage_cfg, accelerator.device.type)
    run_dir = resolve_output_dir(cfg, resume, accelerator)
    notes = check_resume(run_dir, cfg) if resume and checkpoint_dirs(run_dir) else []
    for note in notes:
        accelerator.print(f"robustify: {note}")
    cfg = copy.deepcopy(cfg)
    cfg.output_dir = str(run_dir)
    if cfg.train.log_with:
        accelerator.project_configuration.logging_dir = str(run_dir / "logs")
        accelerator.init_trackers(run_dir.name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                        for k, v in flatten(cfg.to_dict()).items()})
    seed_process(cfg.train.seed)
    return accelerator, run_dir, cfg


def seed_process(seed: int) -> None:
    """Seed this process's RNGs with ``seed + process index`` (Accelerate's ``device_specific``): every process
    draws its own random starts and noise (FGSM-RS, N-FGSM, PGD, DEAT, TRADES, dropout), so the global batch keeps
    its perturbation diversity; with one process the seed is ``seed`` itself, so single-process runs are unchanged.
    What must agree across processes does not come from these streams: data order, the probe and evaluation starts
    and pseudo-label draws use their own generators seeded from (seed, position), and DDP broadcasts process 0's
    initial weights (a freshly initialised head included). A resume restores each process's own RNG state
    (Accelerate saves ``random_states_<rank>.pkl``), so a resumed run draws what the uninterrupted one would have."""
    set_seed(seed, device_specific=True)


def _loaders(data_cfg: Any, cfg: FinetuneConfig, accelerator: Accelerator,
             backbone: torch.nn.Module) -> data_mod.Loaders:
    from timm.data import resolve_data_config

    # the backbone's pretrained_cfg decides input size, interpolation and normalization; the stage may resize
    return data_mod.build_loaders(data_cfg, resolve_data_config(model=backbone), cfg.eval.n_examples,
                                  cfg.train.probe_size, seed=cfg.train.seed, rank=accelerator.process_index,
                                  world_size=accelerator.num_processes,
                                  main_process_first=accelerator.main_process_first, probe_split=cfg.train.probe_split,
                                  device=accelerator.device)


def setup(cfg: FinetuneConfig, accelerator: Accelerator, run_dir: Path, backbone: torch.nn.Module, state: TrainState,
          best: BestWeights, resume_from: Path | None = None, verdict_data: Any = None,
          slots: dict[str, Any] | None = None) -> Run:
    """One stage's data, model view, optimizer and method around ``backbone`` (the same module through all stages);
    ``resume_from``: the checkpoint to restore (model, optimizer, RNG, trainer and method state); ``verdict_data``:
    the exported (last) stage's data section, whose resolution every verdict of this stage uses; ``slots``: the
    options' run-level checkpointed states, registered once per run (:func:`options.run_slots`)."""
    loaders = _loaders(cfg.data, cfg, accelerator, backbone)
    head_replaced = backbone.num_classes != loaders.num_classes  # a new head (what the old one predicts is meaningless)
    if backbone.num_classes != loaders.num_classes:
        backbone.reset_classifier(loaders.num_classes)
    options.prepare_backbone(cfg, backbone, accelerator.print)  # before the optimizer is built
    model = build_robust_model(backbone, loaders.preprocessing, source=cfg.model.name)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.sync_bn and accelerator.num_processes > 1:  # model.sync_bn: statistics of the global batch (checked
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # for every stage in start())

    method = build_method(cfg.method, cfg.threat)
    global_batch = cfg.data.batch_size * accelerator.num_processes * cfg.train.grad_accum
    lr = scaled_lr(cfg, global_batch)
    optimizer = build_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    active = options.active(cfg, slots)  # only the options that are on: the others run no code
    for opt in active:  # e.g. a DDP communication hook, before the first backward
        opt.wrap(model)
    raw: RobustModel = accelerator.unwrap_model(model)
    maybe_compile(raw, cfg.train.compile)
    for opt in active:
        opt.prepare(raw, accelerator)
    probed, weights = options.exported(active, raw)  # the raw weights, or an option's (the weight average)
    if resume_from is not None:
        loaded, method_state = load_checkpoint(accelerator, resume_from, best, accelerator.device)
        state.__dict__.update(loaded.__dict__)
        for opt in active:  # each option takes its own per-process state (the sign hook's error memory)
            method_state = opt.load_state_dict(method_state)
        check_stream_position(method_state.pop(STREAM_POSITION, None), loaders, state, accelerator, resume_from)
        if hasattr(method, "load_state_dict"):
            method.load_state_dict(method_state)
        accelerator.print(f"resumed from {resume_from} (stage {state.stage + 1}, epoch {state.epoch} done, "
                          f"{state.batch} minibatches into the next)")

    epochs = method.epochs(cfg.train.epochs)
    steps_per_epoch = -(-loaders.batches_per_epoch // cfg.train.grad_accum) * method.optimizer_steps_per_batch
    # a peak lr scaled up for a large global batch reaches its peak gradually (schedules.warmup_for_scaled_lr)
    schedule, warmup = warmup_for_scaled_lr(build_schedule(cfg.schedule),
                                            lr / cfg.schedule.lr if cfg.schedule.lr else 1.0, epochs)
    stepper = OptimizerStepper(accelerator, model, optimizer, cfg, epochs * steps_per_epoch, opt_steps=state.opt_steps,
                               lr=lr, schedule=schedule)
    ctx = StepContext(model=model, attack_model=raw, optimize=stepper, autocast=step_autocast(accelerator))
    verdict_model, judged_on = verdict_view(cfg, verdict_data, accelerator, backbone, probed, loaders)
    # each process decodes only the evaluation examples it attacks (the kernel's batch-aligned block)
    block = shard_range(judged_on.eval_size, cfg.data.eval_batch_size, accelerator.process_index,
                        accelerator.num_processes)
    run = Run(cfg=cfg, accelerator=accelerator, run_dir=run_dir, model=model, raw=raw, probed=probed, weights=weights,
              optimizer=optimizer, loaders=loaders, method=method, state=state, best=best, stepper=stepper, ctx=ctx,
              epochs=epochs, lr=lr, head_replaced=head_replaced, options=active,
              verdicts=Verdicts(model=verdict_model, probe_batch=judged_on.probe,
                                eval_set=judged_on.eval_block(*block), eval_total=judged_on.eval_size),
              guard=DivergenceGuard(cfg, run_dir, loaders.num_classes, accelerator))
    for opt in run.options:
        opt.setup(run)
    run.say(f"robustify: {cfg.method.name} on {cfg.model.name} / {cfg.data.name}: {loaders.train_size} train, "
            f"{loaders.eval_size} eval examples at {loaders.input_size}, {epochs} epochs x "
            f"{loaders.batches_per_epoch} batches, {accelerator.num_processes} process(es) on {accelerator.device}, "
            f"global batch {global_batch}, peak lr {lr:.4g}"
            + (f" (scaled {cfg.schedule.lr_scale_rule} from {cfg.schedule.lr:g} at global batch "
               f"{cfg.train.global_batch})" if lr != cfg.schedule.lr else "")
            + (f"; {warmup}" if warmup else "")
            + (f"; probe and evaluations at {judged_on.input_size}, the exported resolution"
               if judged_on is not loaders else ""))
    return run


def verdict_view(cfg: FinetuneConfig, verdict_data: Any, accelerator: Accelerator, backbone: torch.nn.Module,
                 probed: torch.nn.Module, loaders: data_mod.Loaders) -> tuple[torch.nn.Module, data_mod.Loaders]:
    """The model and data the stage's verdicts use: this stage's own, unless its resolution differs from the
    exported stage's; then the exported stage's probe and evaluation subset, seen through a :class:`RobustModel`
    around the same backbone (``probed``'s, so an option's exported weights when it supplies them) with that stage's
    preprocessing. The same examples (the probe rows and eval subset do not depend on the resolution)."""
    if verdict_data is None or (verdict_data.image_size, verdict_data.attack_size) == (cfg.data.image_size,
                                                                                          cfg.data.attack_size):
        return probed, loaders
    verdicts = _loaders(verdict_data, cfg, accelerator, backbone)
    if verdicts.preprocessing == loaders.preprocessing:
        return probed, loaders
    inner = probed.backbone if isinstance(probed, RobustModel) else backbone
    return build_robust_model(inner, verdicts.preprocessing, source=cfg.model.name), verdicts


# -------------------------------------------------------------------------------------------------- evaluation
def evaluate(run: Run, desc: str) -> dict[str, Any]:
    """The before/after evaluation: clean + PGD (and AutoAttack when asked) on the fixed subset, sharded, fp32."""
    cfg, e = run.cfg, run.cfg.eval
    x, y = run.verdicts.eval_set
    same_buffers(run)
    model = run.judged()
    res = sharded_pgd_accuracy(model, x, y, cfg.threat.eps, cfg.threat.norm, steps=e.pgd_steps,
                               restarts=e.pgd_restarts, loss=e.pgd_loss, seed=cfg.train.seed,
                               batch_size=cfg.data.eval_batch_size, accelerator=run.accelerator, desc=desc,
                               total=run.verdicts.eval_total)
    res["split"] = cfg.data.eval_split
    if e.autoattack:
        with fp32_math():  # TF32 off, as in the PGD kernel
            res.update(sharded_autoattack(model, x, y, cfg.threat.eps, cfg.threat.norm, seed=cfg.train.seed,
                                          batch_size=cfg.data.eval_batch_size, accelerator=run.accelerator,
                                          total=run.verdicts.eval_total))
    if e.unseen:  # the other norms at their standard radii (evaluate/unseen.py), the same way before and after
        from ..evaluate.unseen import sharded_unseen, unseen_attack

        attack = unseen_attack("standard", e.pgd_steps) if e.autoattack else \
            unseen_attack("quick", e.pgd_steps, {"apgd_iter": e.pgd_steps})
        with fp32_math():
            res["unseen"] = sharded_unseen(model, x, y, cfg.threat.norm, cfg.data.name, tuple(x.shape[1:]), attack,
                                           seed=cfg.train.seed, batch_size=cfg.data.eval_batch_size,
                                           accelerator=run.accelerator, total=run.verdicts.eval_total)
    return res


def probe(run: Run) -> tuple[float, float]:
    """PGD on the fixed probe minibatch (same examples every epoch), sharded like every evaluation."""
    x, y = run.verdicts.probe_batch
    same_buffers(run)  # also what a best-weights capture after the probe keeps
    res = sharded_pgd_accuracy(run.judged(), x, y, run.cfg.threat.eps, run.cfg.threat.norm,
                               steps=run.cfg.train.probe_steps,
                               seed=run.cfg.train.seed, batch_size=run.cfg.data.eval_batch_size,
                               accelerator=run.accelerator, progress=False)
    return res["clean_acc"], res["pgd_acc"]


def guard_verdict(state: TrainState, robust: float, epoch: int, guard_drop: float) -> str:
    """'catastrophic ...' when the probe's robust accuracy collapsed below the best so far (Wong et al. 2020),
    'best' when it is the best so far (Rice et al. 2020's selection), '' otherwise. Every process computes the same
    verdict from the same gathered numbers."""
    if state.best_epoch > 0 and state.best_probe - robust > guard_drop:
        return (f"catastrophic overfitting: probe PGD accuracy fell from {state.best_probe:.1%} (epoch "
                f"{state.best_epoch}) to {robust:.1%} at epoch {epoch}; rolled back to epoch {state.best_epoch}")
    return "best" if robust >= state.best_probe else ""


# ------------------------------------------------------------------------------------------------------ epochs
STREAM_POSITION = "stream_position"  # a streamed run's per-process position, in each method_rank<r> file


def check_stream_position(saved: dict[str, Any] | None, loaders: data_mod.Loaders, state: TrainState,
                          accelerator: Accelerator, folder: Path) -> None:
    """A streamed run resumes where its checkpoint says this process's stream stood (window, shard, row, the
    epoch's row order): the position the loaders compute from (seed, epoch, minibatch) must be that one, or the
    data or its shards changed under the run and the resume is refused in one line, on every process. With another
    layout (world size, processes per node, node-pinned shards) the positions differ by design (the rest of the epoch
    is assigned afresh), so they are not compared."""
    here = loaders.stream_position(state.epoch + 1, state.batch)
    if here is None:  # map-style data, the same on every process: nothing to compare, no collective needed
        return
    layout = ("world", "local_world", "pinned")
    problem = ""
    if not (saved is None or saved == here
            or any(saved.get(k) != here.get(k) for k in layout)):  # another layout: the epoch's rest is assigned afresh
        problem = _moved(saved, here, accelerator.process_index, folder)
    if accelerator.num_processes > 1:  # every process learns of a refusal on any of them (no one left in a collective)
        from accelerate.utils import gather_object

        with stage("checking the stream positions"):
            problem = next((p for p in gather_object([problem]) if p), "")
    if problem:
        raise UserError(problem)


def _moved(saved: dict[str, Any], here: dict[str, Any], rank: int, folder: Path) -> str:
    return (f"--resume: process {rank}'s checkpointed stream position in {folder.name} (epoch {saved.get('epoch')}, "
            f"minibatch {saved.get('batch')}, next {saved.get('next')}) is not where this run's stream continues (next "
            f"{here.get('next')}): the data set's shards or their rows changed; resume with the same data, or start "
            "a new --output-dir")


def checkpoint(run: Run) -> Path:
    method_state = run.method.state_dict() if hasattr(run.method, "state_dict") else {}
    for opt in run.options:  # the options' per-process state (the sign hook's error memory)
        method_state = {**method_state, **opt.state_dict()}
    position = run.loaders.stream_position(run.state.epoch + 1, run.state.batch)
    if position is not None:  # streaming: this process's position in its stream, checked on resume
        method_state[STREAM_POSITION] = position
    run.state.opt_steps = run.stepper.opt_steps
    run.tick()
    return save_checkpoint(run.accelerator, run.run_dir, run.state, method_state, run.best, run.raw,
                           run.cfg.model.channels_last)


def train_epoch(run: Run, epoch: int, stop: StopSignal) -> None:
    """Train on this process's minibatches of ``epoch`` from the checkpointed position; checkpoint every
    ``train.checkpoint_every`` optimizer steps; on a stop signal checkpoint and raise :class:`Interrupted`."""
    cfg, acc, state, loaders = run.cfg, run.accelerator, run.state, run.loaders
    n_batches, every = loaders.batches_per_epoch, cfg.train.checkpoint_every
    sums = torch.tensor(state.epoch_sums, dtype=torch.float64, device=acc.device)  # loss*n, correct, n
    t0 = time.perf_counter() - state.epoch_seconds
    run.model.train()
    for opt in run.options:  # the active options' epoch hooks (train/options/)
        opt.begin_epoch(run, epoch)
    passes = run.method.passes_per_batch + sum(opt.passes_now() for opt in run.options)  # per minibatch
    bar = tqdm(total=n_batches, initial=state.batch, desc=f"epoch {epoch}/{run.epochs}", leave=False,
               **({} if run.main else {"disable": True}))  # only switch off, so TQDM_DISABLE=1 still works
    for x, y in loaders.train_epoch(epoch, start_batch=state.batch):
        x, y = data_mod.to_unit(x.to(acc.device, non_blocking=True)), y.to(acc.device, non_blocking=True)
        for opt in run.options:  # the active options' batch hooks (pseudo-labelled examples appended)
            x, y = opt.batch(x, y, epoch, state.batch)
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if state.batch == n_batches - 1:  # close a partial accumulation group at the epoch's end
            acc.step = cfg.train.grad_accum - 1
        steps_before = run.stepper.opt_steps
        if run.method.dynamic_steps:  # steps per minibatch vary (deat): follow the epochs, not a fixed step plan
            run.stepper.progress = ((epoch - 1) * n_batches + state.batch) / (run.epochs * n_batches)
        try:  # the active options' step hooks (train/options/): none when every option is off
            with acc.accumulate(run.model), options.step_scope(run.options, run, epoch, state.batch):
                res = run.method.step(run.ctx, x, y)
        except torch.OutOfMemoryError as e:  # one line with the batch, the memory seen and what to try
            bar.close()
            raise out_of_memory(e, cfg, acc.device, cfg.method.name) from None
        n = y.shape[0]  # a Python int from the shape: adding it is a kernel argument, not a host-to-device copy
        hard = y if y.dim() == 1 else y.argmax(1)  # soft targets (an option's mixup): accuracy on the dominant label
        sums[:2] += torch.stack([res.loss.double() * n, (res.logits.argmax(1) == hard).sum().double()])
        sums[2] += n
        state.batch += 1
        state.progress += 1
        state.batch_passes += passes
        state.example_passes += y.shape[0] * acc.num_processes * passes
        bar.update(1)
        if state.batch % cfg.train.log_every == 0 or state.batch == n_batches:
            s = sums.tolist()  # the one host sync every log_every minibatches
            bar.set_postfix(loss=f"{s[0] / max(s[2], 1):.3f}", acc=f"{s[1] / max(s[2], 1):.3f}")
            run.guard.check_loss(sums[0], int(s[2]), run.stepper.opt_steps, epoch, run.optimizer.param_groups[0]["lr"])
        due = every is not None and run.stepper.opt_steps // every > steps_before // every
        # act on a signal only where a checkpoint is exact (an accumulation group is complete), and agree on it
        # across processes after every optimizer step (a CPU all-reduce of one number, see StopSignal.agreed), so
        # a SIGTERM on any process stops all of them within one step, whatever train.log_every
        check = acc.sync_gradients
        for opt in run.options:  # an option may move where a checkpoint is exact (local SGD: at model averages)
            check = opt.after_batch(run, run.stepper.opt_steps - steps_before, check)
        signalled = stop.agreed(acc) if check else None
        if (due or signalled) and state.batch < n_batches:
            state.epoch_sums, state.epoch_seconds = sums.tolist(), time.perf_counter() - t0
            where = checkpoint(run)
            if signalled:
                bar.close()
                name = signal.Signals(signalled).name
                raise Interrupted(f"{name} received: checkpoint written at epoch {epoch}, minibatch {state.batch} "
                                  f"({where.name}); continue with: {run.resume_command()}", 130 if name == "SIGINT"
                                  else 143)
    for opt in run.options:  # e.g. local SGD's last average of the epoch: it ends at a synchronisation point
        opt.finish_epoch(run)
    bar.close()
    state.epoch_sums, state.epoch_seconds = sums.tolist(), time.perf_counter() - t0
    # a NaN model must never be probed, selected as best or checkpointed
    run.guard.check_model(run.raw, run.stepper.opt_steps, epoch, run.optimizer.param_groups[0]["lr"])


def end_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Probe → guard verdict → best-probe capture or rollback → history → checkpoint. Returns the history row."""
    state, acc = run.state, run.accelerator
    p_clean, p_rob = probe(run)
    number = len(state.history) + 1  # the epoch's number in the run (across stages): history, guard and selection
    note = guard_verdict(state, p_rob, number, run.cfg.train.guard_drop)
    if note.startswith("catastrophic"):
        run.best.restore(run.probed)  # from memory: identical on every process, no shared file system needed
        state.stopped = note
        run.say(f"robustify: {note}")
    elif note == "best":
        state.best_probe, state.best_epoch = p_rob, number
        run.best.capture(run.probed)
    totals = acc.reduce(torch.tensor(state.epoch_sums, dtype=torch.float64, device=acc.device), reduction="sum")
    loss_sum, correct, seen = totals.tolist()
    row = {"epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"], "loss": loss_sum / max(seen, 1),
           "train_acc": correct / max(seen, 1), "probe_clean_acc": p_clean, "probe_robust_acc": p_rob,
           "seconds": state.epoch_seconds, "opt_steps": run.stepper.opt_steps, "note": note,
           **({"stage": run.stage_name} if run.stage_name else {}),
           **run.method.on_epoch_end(epoch),
           **{k: v for opt in run.options for k, v in opt.history_fields(run, epoch).items()}}
    state.history.append(row)
    state.epoch, state.batch, state.epoch_sums, state.epoch_seconds = epoch, 0, [0.0, 0.0, 0.0], 0.0
    run.say(f"epoch {epoch}/{run.epochs}  loss {row['loss']:.3f}  train acc {row['train_acc']:.1%}  probe clean "
            f"{p_clean:.1%}  probe PGD {p_rob:.1%}  lr {row['lr']:.4g}  {row['seconds']:.1f}s  {note}")
    checkpoint(run)
    acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=len(state.history))
    return row


# ------------------------------------------------------------------------------------------------ finalisation
def finalise(run: Run, recipe_yaml: str) -> dict[str, Any]:
    """Load the selected weights, evaluate them and write the run folder (main process); returns metrics.json.
    ``recipe_yaml``: the run's whole resolved recipe (all stages), written as the folder's recipe.yaml."""
    cfg, acc, state, raw = run.cfg, run.accelerator, run.state, run.raw
    acc.wait_for_everyone()
    same_buffers(run)
    in_sync = ranks_in_sync(raw, acc)
    if not in_sync:
        raise RuntimeError("the processes' weights differ after training: gradients were not synchronised")
    if cfg.train.select == "best-robust" and run.best.state is not None and not state.stopped:
        run.best.restore(run.probed)
    after = evaluate(run, "eval after")
    selected = state.best_epoch if cfg.train.select == "best-robust" or state.stopped else len(state.history)
    global_batch = cfg.data.batch_size * acc.num_processes * cfg.train.grad_accum
    cost = {"wall_seconds": state.wall_seconds, "epochs": len(state.history),
            "optimizer_steps": state.prior_opt_steps + run.stepper.opt_steps, "batch_passes": state.batch_passes,
            "example_passes": state.example_passes,
            "passes_per_batch": run.method.passes_per_batch + sum(opt.passes_per_batch() for opt in run.options),
            # Accelerate's autocast setting, except for an option's own precision (pure-bf16: the weights themselves)
            "hardware": {**hardware_info(acc), **({"mixed_precision": own} if (own := options.own_precision(cfg))
                                                  else {})}, "world_size": acc.num_processes, "ranks_in_sync": in_sync,
            "global_batch": global_batch, "peak_lr": run.lr, "training_precision": cfg.train.mixed_precision,
            "comm_hook": comm_hook_name(run.model), **options.config_cost(cfg),
            "sync_bn": bool(cfg.model.sync_bn and acc.num_processes > 1),
            "deterministic": bool(cfg.train.deterministic),
            **{k: v for opt in run.options for k, v in opt.cost_fields(run).items()}}
    exported = run.evaluation_model(run.probed)  # the run folder's weights are fp32 whatever the training precision
    record = runrecord.from_finetune(cfg, exported if isinstance(exported, RobustModel) else raw,
                                     name=run.run_dir.name, method=run.method.describe(), before=state.before,
                                     after=after, history=state.history, cost=cost, selected_epoch=selected,
                                     stopped=state.stopped, weights=run.weights, probe=run.loaders.probe_record,
                                     lr=run.lr)
    metrics = record.metrics()
    if run.main:
        write_history(run.run_dir, state.history)  # before the card, which embeds the plot
        with contiguous_weights(exported, cfg.model.channels_last):
            write_run_folder(run.run_dir, exported, record, recipe_yaml, run.loaders.label_names)
        print_table(history_table(state.history))
        print_table(before_after_table(state.before, after))
        run.say(f"run folder: {run.run_dir}  (load with timm.create_model('local-dir:{run.run_dir}', "
                "pretrained=True))")
    acc.wait_for_everyone()
    return metrics


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """history.png and history.json, each written whole and renamed into place; a full disk is one line."""
    from ..publish.export import write_failed

    try:
        plot_history(history, run_dir / HISTORY_PLOT)  # report.save_figure: temporary file, then rename
        atomic_write_json(run_dir / HISTORY, history)
    except Exception as e:  # noqa: BLE001 - only a full disk or a read-only folder becomes one line
        raise write_failed(e, run_dir, "the run's history (history.png, history.json)") from None
def agreed_resume_point(run_dir: Path, resume: bool, accelerator: Accelerator) -> set[str] | None:
    """The checkpoints every process could resume from: the names held by all of them (None: start afresh).

    Each process looks in its own file system (nodes without a shared disk each hold their own copy of the run
    folder), so the names are gathered: a node killed between the other nodes' rename of their newest checkpoint
    and its own still shares the previous one (the last ``KEEP`` are kept), which is then the one resumed. Nodes that
    share none (a node lacks the checkpoints, or they belong to different runs) are refused in one line rather than
    resumed into mismatched states and collectives."""
    mine = [p.name for p in checkpoint_dirs(run_dir)] if resume else []
    names = [mine]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        with stage("agreeing on the checkpoint to resume from"):
            names = gather_object([mine])
    common = set(names[0]).intersection(*names[1:])
    if not common and any(names):
        listed = ", ".join(f"process {i}: {', '.join(n) or 'none'}" for i, n in enumerate(names))
        raise UserError(f"--resume: the processes hold no checkpoint in common in {run_dir} ({listed}); copy the "
                        "run folder of the node with the newest complete checkpoint to the others (or set "
                        "train.save_on_each_node=true for nodes without a shared disk) and resume again")
    return common or None


def writes_run_files(accelerator: Accelerator) -> bool:
    """Whether this process writes the run's own files (recipe.yaml): the main process, or with
    ``train.save_on_each_node`` each node's local main process (as for checkpoints)."""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Adversarially fine-tune ``cfg.model`` on ``cfg.data``, stage after stage; returns metrics.json's content.

    A recipe's ``stages`` (for example natural fine-tuning of a new head, then adversarial fine-tuning; or
    progressive resizing) run one after another on the same backbone, each with its own data view, method, schedule
    and optimizer; the checkpoint records the stage, so ``--resume`` continues inside the right one.
    """
    accelerator, run_dir, cfg = start(cfg, resume)
    stages = expand_stages(cfg)  # after start(): 'auto' precision and layout are resolved for every stage
    state, best = TrainState(), BestWeights()
    # every process (node) must hold the same newest checkpoint; the main process then verifies it (falling back to
    # the older intact one if it is damaged) and checks it was made by this recipe, and every process follows
    common = agreed_resume_point(run_dir, resume, accelerator)
    resume_from = resume_checkpoint(accelerator, run_dir, cfg, common) if common else None
    saved_fingerprint, resumed_from = None, resume_from
    if resume_from is not None:
        saved = TrainState.from_json(json.loads((resume_from / STATE_FILE).read_text()))
        state.stage, saved_fingerprint = saved.stage, saved.fingerprint
    base = load_backbone(cfg.model.name, pretrained=cfg.model.pretrained, checkpoint=cfg.model.checkpoint,
                         trust_pickle=cfg.model.trust_pickle)
    slots = options.run_slots([stage for _, stage in stages], accelerator)  # once per run, whatever the stages
    first_epoch, run = None, None
    with StopSignal() as stop:
        for index in range(state.stage, len(stages)):
            name, stage_cfg = stages[index]
            stage_cfg.output_dir = str(run_dir)
            if index != state.stage:  # a new stage: its own epochs and schedule position; the guard and the
                accelerator.free_memory()  # best-robust selection span the whole run (same threat model throughout)
                state.stage, state.epoch, state.batch, state.opt_steps = index, 0, 0, 0
            run = setup(stage_cfg, accelerator, run_dir, base.backbone, state, best, resume_from,
                        verdict_data=stages[-1][1].data if len(stages) > 1 else None, slots=slots)
            run.stage_name = name if len(stages) > 1 else ""
            if resume_from is not None:  # the checkpoint's data must be this data (sizes, held-out probe)
                check_same_data(resumed_from, saved_fingerprint, stage_cfg, run.loaders)
            state.fingerprint = run_fingerprint(cfg, run.loaders)  # stored in every checkpoint from here on
            if not checkpoint_dirs(run_dir) and writes_run_files(accelerator):
                # a new run (or one stopped before its first checkpoint, which starts over), written only once the
                # model and data loaded, so a mistake in either leaves nothing behind; with save_on_each_node by
                # every node's local main process, so a node without a shared disk resumes with the run's recipe
                atomic_write_text(run_dir / RECIPE, dump_yaml(cfg))
            accelerator.wait_for_everyone()
            resume_from = None
            if state.before is None:
                state.before = evaluate(run, "eval before")
            first_epoch = len(state.history) if first_epoch is None else first_epoch  # epochs before this call
            run.tick()
            while state.epoch < run.epochs and not state.stopped:
                if cfg.train.stop_after is not None and len(state.history) - first_epoch >= cfg.train.stop_after:
                    run.say(f"robustify: stopped after {cfg.train.stop_after} epoch(s) as asked (train.stop_after); "
                            f"continue with: {run.resume_command()} --set train.stop_after=null")
                    _end(accelerator)
                    runlock.release(run_dir)
                    return {}
                epoch = state.epoch + 1
                train_epoch(run, epoch, stop)
                end_epoch(run, epoch)
            run.tick()
            state.prior_opt_steps += run.stepper.opt_steps if index < len(stages) - 1 and not state.stopped else 0
            if state.stopped:
                break
    metrics = finalise(run, dump_yaml(cfg))
    _end(accelerator)
    runlock.release(run_dir)  # the run is over: the folder may be resumed or evaluated by another process
    return metrics
