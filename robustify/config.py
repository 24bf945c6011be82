"""Dataclass configs, recipe loading and ``--set key=value`` overrides.

A recipe is a YAML file whose sections mirror :class:`FinetuneConfig`. The command line only ever *overrides* a
recipe, so every run is fully described by the resolved config that ``finetune`` writes as ``recipe.yaml``.
Numbers that are pixel magnitudes (eps, alpha) accept fractions such as ``8/255``.

Must not: import a registry or a wing (the registries register their sections' checks in robustify/sections.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from . import sections
from .errors import ConfigError, did_you_mean
from .runfolder import RECIPE

RECIPES_DIRS = (
    Path(__file__).resolve().parent.parent / "recipes",  # a source checkout / editable install
    Path(__file__).resolve().parent / "_recipes",  # a wheel install (recipes/ is packaged there)
)


def parse_number(value: Any, key: str = "value") -> float:
    """Parse ``0.1``, ``"8/255"`` or ``"1e-3"`` into a finite float; a clear error otherwise.

    NaN and infinity are refused here, once, so no key can carry them into training, a schedule or a card.
    """
    bad = f"{key}={value!r} is not a number; use a number such as 0.03 or a fraction such as 8/255"
    if isinstance(value, (bool, dict, list)) or value is None:
        raise ConfigError(bad)
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        else:
            text = str(value).strip()
            match = re.fullmatch(r"([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)", text)
            number = float(match.group(1)) / float(match.group(2)) if match else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ConfigError(bad) from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}={value!r} is not a finite number; use a number such as 0.03 or a fraction such as "
                          "8/255 (nan and inf are not accepted)")
    return number


@dataclass
class ModelConfig:
    """Which backbone to start from (any timm name, ``hf-hub:ORG/NAME``, ``local-dir:PATH``, a run folder)."""

    name: str = "quickstart"
    pretrained: bool = True
    checkpoint: str | None = None  # optional weights file (.safetensors) to load into the timm architecture
    trust_pickle: bool = False  # also load a pickle checkpoint (.pth, .bin, ...): only for files you trust
    channels_last: bool | str = "auto"  # auto: true on CUDA, false on CPU (robustify/hardware.py)
    sync_bn: bool = False  # several processes: BatchNorm statistics over the global batch (SyncBatchNorm) in training
    # frontier (train/options/freeze.py): none | backbone (linear probe) | stem | stages:N (stem + first N stages), by
    # timm's group_matcher; frozen parameters get no optimizer state and their BatchNorm statistics stay as they are
    freeze: str = "none"


@dataclass
class DataConfig:
    """Which data set, and how it reaches the model ([0,1] tensors at the backbone's input size)."""

    name: str = "quickstart"
    train_split: str = "train"
    eval_split: str | None = None  # None: the data set's labelled evaluation split (test; validation for imagenet-1k)
    image_column: str | None = None  # None: the alias's column, else the column with the Image feature
    label_column: str | None = None  # None: the alias's (cifar100: fine_label), else the ClassLabel column
    image_size: int | None = None  # None: the backbone's own input size from its pretrained_cfg
    attack_size: int | None = None  # decode and attack at this size; the model resizes to image_size inside
    crop_pct: float | None = None  # None: the backbone's at its native size, else 1.0 (resize whole images)
    interpolation: str | None = None  # None: the backbone's (bilinear | bicubic | nearest)
    augment: str = "none"  # none | flip-crop | timm | rrc-flip (random-resized crop + flip, fast JPEG decode)
    decode: str = "workers"  # workers | device: rrc-flip's JPEGs decoded on the accelerator (nvJPEG), streamed sets
    batch_size: int = 128  # per process
    eval_batch_size: int = 256
    num_workers: int = 2
    cache_mb: int = 2048  # data sets smaller than this are decoded once and kept in memory as uint8 tensors
    max_train_examples: int | None = None
    streaming: str = "auto"  # auto | true | false; auto streams the sets known to be large (imagenet-1k)
    shuffle_buffer: int = 10000  # streaming: examples in the shuffle buffer
    holdout: float = 0.1  # single-split local data: the seeded fraction held out as the eval split
    shard_cache: str = "auto"  # streaming from the Hub: node (each node downloads its shards once, every epoch reads
    # them from disk) | off (pure streaming, nothing on disk) | auto (node); see docs/data-at-scale.md
    cache_dir: str | None = None  # node-local shard cache and shard metadata; None: the HF hub / datasets caches
    per_class: int | None = None  # frontier: few-shot, K training examples per class (seeded, balanced, recorded)
    unlabeled: str | None = None  # frontier: any data spec; pseudo-labelled once by train.teacher (its labels unused)
    unlabeled_ratio: float = 0.5  # frontier: the pseudo-labelled share of each training minibatch, in (0, 1)
    # timm's auto-augment policy for augment: timm (train/options/auto_augment.py), e.g. rand-m9-mstd0.5-inc1
    # (RandAugment), original (AutoAugment), augmix-m5-w4-d2; seeded per example
    auto_augment: str | None = None
    # extra labelled sets mixed into every training minibatch (robustify/data/extra.py): npz:PATH (arrays image and
    # label, as DM-Improves-AT publishes them; npz:hf://datasets/ORG/NAME/FILE.npz from the Hub), parquet:..., ORG/NAME
    extra: list[str] | None = None
    extra_fraction: float = 0.7  # the extra sets' share of each training minibatch, in (0, 1) (0.7: Wang et al. 2023)
    extra_kind: list[str] | None = None  # generated or real: one for all sets or one per set (required with data.extra)


@dataclass
class ThreatConfig:
    """The threat model: an Lp ball of radius eps around each input, in [0,1] pixel units (for L1 and L2 the norm of
    the whole perturbation: RobustBench's CIFAR-10 budgets are Linf 8/255 and L2 0.5; L1's usual one is 12)."""

    norm: str = "Linf"  # Linf | L2 | L1 (Croce & Hein 2021: the L1 ball intersected with the [0,1] box)
    eps: float = 8 / 255
    # frontier (train/options/eps_warmup.py): training eps (and alpha) ramp linearly 0 -> eps over this share of each
    # stage; the probe, the guard and every evaluation use the full eps
    eps_warmup_fraction: float = 0.0


@dataclass
class MethodConfig:
    """The adversarial training method and its attack settings (see ``robustify/methods.py``)."""

    name: str = "fgsm-rs"  # natural | fgsm-rs | n-fgsm | free | pgd | deat | apgd
    # step size; None: 1.25 eps (fgsm-rs), eps (free), 2.5 eps / steps (pgd), the first step 2 eps (apgd; eps for L1)
    alpha: float | None = None
    steps: int = 7  # pgd and apgd: gradient evaluations of the attack
    replays: int = 4  # free only: m, each minibatch is replayed m times and the epochs are divided by m
    bn_mode: str = "train"  # BatchNorm mode while the attack is generated: train (Fast AT) | eval (Madry)
    noise_factor: float = 2.0  # n-fgsm only: noise uniform in [-k eps, k eps] (de Jorge et al.: k = 2; 0: plain FGSM)
    max_strength: int = 8  # deat only: the most replays per minibatch the M+ criterion may reach
    gamma: float = 1.0  # deat only: M+ threshold factor (1.0 on CIFAR, 1.1 on ImageNet in the reference code)
    loss: str = "ce"  # ce | trades (Zhang et al. 2019; fgsm-rs, n-fgsm and pgd)
    beta: float = 6.0  # trades only: weight of KL(f(x) || f(x + delta)) against the clean cross-entropy
    random_start: bool = True  # fgsm-rs only: false is plain FGSM from the clean input (catastrophic overfitting)
    # FOSC (Wang et al. 2019; train/options/fosc.py), pgd only: stop each example's PGD at a FOSC threshold falling
    # from fosc_start to 0
    fosc: bool = False
    fosc_start: float = 0.5  # the first epoch's threshold (the paper's c_max for CIFAR-10 Linf)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (see ``robustify/schedules.py``); stepped every optimizer step."""

    name: str = "slow-start-fast-decay"  # slow-start-fast-decay | cyclic | cosine | piecewise | constant
    lr: float = 0.05  # peak learning rate, stated for train.global_batch examples per optimizer step
    lr_scale_rule: str = "none"  # none | linear | sqrt: lr x rule(actual global batch / train.global_batch)
    rise_fraction: float = 0.7  # slow-start-fast-decay: share of the run spent rising
    start_factor: float = 0.01  # lr at the very start, as a fraction of the peak
    end_factor: float = 0.0  # lr at the very end, as a fraction of the peak
    decay: str = "linear"  # slow-start-fast-decay: shape of the fall, linear | cosine | exponential
    peak_fraction: float = 0.4  # cyclic: where the triangle peaks
    warmup_fraction: float = 0.0  # cosine: linear warm-up share
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # piecewise: fractions of the run
    gamma: float = 0.1  # piecewise: factor applied at each milestone


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw | lamb | lars (layer-wise adaptive, for large global batches; timm.optim)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    global_batch: int | None = None  # the global batch schedule.lr is stated for (None: whatever the run uses)
    # auto | no | bf16, or a precision an option implements itself (its file in train/options/ declares it); auto:
    # bf16 on CUDA, no (fp32) on CPU; bf16 is autocast over fp32 weights; fp16 is not a choice: its loss scaling
    # would weaken the attacks (train/hardware.py)
    mixed_precision: str = "auto"
    compile: bool = False  # torch.compile the model forward (nn.Module.compile)
    grad_accum: int = 1
    seed: int = 0
    probe_size: int = 256  # examples in the fixed PGD probe minibatch (from the training split)
    probe_steps: int = 10
    guard_drop: float = 0.2  # a probe robust accuracy this far below the best so far is catastrophic overfitting
    select: str = "best-robust"  # best-robust | last
    log_every: int = 20
    stop_after: int | None = None  # stop this invocation after N epochs (time-sliced jobs); continue with --resume
    log_with: str | None = None  # an Accelerate tracker (tensorboard, wandb, mlflow, ...) fed once per epoch
    checkpoint_every: int | None = None  # also checkpoint every N optimizer steps (mid-epoch), besides every epoch
    save_on_each_node: bool = False  # multi-node without a shared file system: each node writes its checkpoints
    dist_timeout_minutes: float = 60.0  # process-group timeout (see trainer.make_accelerator for why this value)
    ema: bool = False  # keep an exponential moving average of the weights (timm ModelEmaV3); probe and export it
    ema_decay: float = 0.999  # the EMA's decay (reached after timm's warm-up, so short runs still average)
    probe_split: str = "heldout"  # heldout: probe examples are held out of training (Rice et al. 2020) | train
    grad_compression: str = "none"  # none | fp16 | bf16 | powersgd | sign (majority vote + error feedback): DDP hook
    # frontier (train/options/awp.py): adversarial weight perturbation (Wu et al. 2020) before each optimizer step
    awp: bool = False
    awp_gamma: float = 5e-3  # the weight perturbation's size, relative to each layer's weight norm
    awp_warmup_epochs: int = 0  # epochs of each stage trained without AWP first
    teacher: str | None = None  # frontier: labels data.unlabeled (None: the model before adversarial fine-tuning)
    deterministic: bool = False  # CUDA: deterministic kernels (cuDNN, cuBLAS, the resize), slower; see docs/scale.md
    local_sgd_steps: int | None = None  # local SGD: average the models every K optimizer steps (train/options/)
    # timm's augmentation losses (train/options/mixup.py, label_smoothing.py): label smoothing of the training
    # loss (LabelSmoothingCrossEntropy, or Mixup's soft targets when mixup/CutMix is on); 0: off
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # timm.data.Mixup: mixup's Beta(alpha, alpha); 0: off (0.8 in DeiT and Singh et al.)
    cutmix_alpha: float = 0.0  # timm.data.Mixup: CutMix's Beta(alpha, alpha); 0: off (1.0 in DeiT)
    mixup_prob: float = 1.0  # the probability that a minibatch (or example, by mixup_mode) is mixed at all
    mixup_switch_prob: float = 0.5  # with both on: the probability of CutMix instead of mixup
    mixup_mode: str = "batch"  # batch | pair | elem: one draw per minibatch, per pair or per example


@dataclass
class EvalConfig:
    """The evaluation that ``finetune`` runs before and after training (``robustify eval`` has its own flags)."""

    n_examples: int = 1000  # the first N examples of the eval split (RobustBench convention)
    pgd_steps: int = 20
    pgd_restarts: int = 1
    pgd_loss: str = "ce"  # ce | cw | ce+cw
    autoattack: bool = False
    # the other norms at their standard radii too (Linf 8/255, L2 0.5, L1 12 on CIFAR-like data), before and after,
    # marked unseen: APGD-CE with pgd_steps iterations, or the standard AutoAttack when autoattack is on
    unseen: bool = False


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/robustify-{time}"  # {time}: a fresh folder per run, never an earlier run's
    stages: list[dict[str, Any]] = field(default_factory=list)  # named partial overrides run one after another

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.augment": ("none", "flip-crop", "timm", "rrc-flip"),
    "data.decode": ("workers", "device"),
    "data.streaming": ("auto", "true", "false"),
    "data.shard_cache": ("auto", "node", "off"),
    "schedule.lr_scale_rule": ("none", "linear", "sqrt"),
    "threat.norm": ("Linf", "L2", "L1"),
    "method.bn_mode": ("train", "eval"),
    "schedule.decay": ("linear", "cosine", "exponential"),
    "optim.name": ("sgd", "adamw", "lamb", "lars"),
    "method.loss": ("ce", "trades"),
    "train.probe_split": ("heldout", "train"),
    "train.grad_compression": ("none", "fp16", "bf16", "powersgd", "sign"),
    "train.mixed_precision": ("auto", "no", "bf16"),  # Accelerate's; the options declare their own (choices())
    "train.mixup_mode": ("batch", "pair", "elem"),
    "train.select": ("best-robust", "last"),
    "eval.pgd_loss": ("ce", "cw", "ce+cw"),
}


def choices() -> dict[str, tuple[str, ...]]:
    """:data:`CHOICES` with the training precisions the registered options implement themselves (declared to
    robustify/sections.py) after Accelerate's: what the config's choice check accepts and the docs list."""
    return {**CHOICES, "train.mixed_precision": (*CHOICES["train.mixed_precision"], *sections.declared("precision"))}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a ConfigError naming the key."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = get_origin(tp), get_args(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}={value!r} is not accepted; use true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer():  # YAML reads 1e3 as 1000.0
            value = int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):  # ASCII digits only
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not accepted; use a whole number")
        return value
    if tp is float:
        return parse_number(value, key)
    if value is None:  # a required string (a name, a split, a folder): empty means a mistake, not "None"
        example = {"output_dir": "runs/my-run"}.get(key, "the recipe's own value")
        raise ConfigError(f"{key} is empty; give a value, e.g. {example}")
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` (mixed_precision: no) as False
            value = "no" if value is False else "true"
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r} is not accepted; use a string")
        return str(value)
    if origin is list:
        if isinstance(value, str) and args == (str,):  # one string for a list of them (data.extra=npz:a)
            value = [value]
        if not isinstance(value, list):
            example = ("[{name: head, method: {name: natural}, train: {epochs: 1}}, {name: adversarial}] (quote it "
                       "for the shell: --set 'stages=[...]')" if key == "stages" else "[0.5, 0.75]")
            raise ConfigError(f"{key}={value!r} is not accepted; use a list such as {example}")
        return [_coerce(v, args[0], key) for v in value]
    return value


def all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key a recipe or ``--set`` accepts (``schedule.lr``, ``output_dir``, ...)."""
    cls = cls or FinetuneConfig
    hints = get_type_hints(cls)
    out: list[str] = []
    for f in fields(cls):
        tp = hints[f.name]
        out += all_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{f.name}"]
    return out


def _unknown_key(key: str, section_keys: set[str], prefix: str) -> ConfigError:
    """An unknown key, with the closest valid key (anywhere in the config: ``train.lr`` -> ``schedule.lr``)."""
    candidates = all_keys()
    leaf = key.rsplit(".", 1)[-1]
    hint = did_you_mean(key, candidates, prefer=[k for k in candidates if k.rsplit(".", 1)[-1] == leaf])
    hint = f"{hint} " if hint else ""
    where = f"section '{prefix.rstrip('.')}'" if prefix else "the recipe"
    return ConfigError(f"unknown key '{key}' in {where}; {hint}known keys there: {', '.join(sorted(section_keys))}")


def _build(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    data = dict(data or {})
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise _unknown_key(f"{prefix}{unknown[0]}", known, prefix)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(data[f.name], dict):
                raise ConfigError(f"'{key}' must be a section of keys, got {data[f.name]!r}")
            kwargs[f.name] = _build(tp, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    return cls(**kwargs)


def _auto_or_bool(value: Any, key: str) -> bool | str:
    """A setting that is true, false or ``auto`` (resolved by the hardware at run time, robustify/hardware.py)."""
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "auto"):
        return "auto" if value.lower() == "auto" else value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}={value!r} is not accepted; use true, false or auto")


def validate(cfg: FinetuneConfig) -> FinetuneConfig:
    """Check values that the types alone do not constrain; errors name the key and what is accepted."""

    validate_data(cfg)
    cfg.model.channels_last = _auto_or_bool(cfg.model.channels_last, "model.channels_last")
    flat = flatten(cfg.to_dict())
    for key, accepted in choices().items():
        if flat[key] not in accepted:
            raise ConfigError(f"{key}={flat[key]!r} is not accepted; choose one of: {', '.join(accepted)}")
    if cfg.data.decode == "device" and cfg.data.augment != "rrc-flip":
        raise ConfigError(f"data.decode=device decodes the JPEGs of augment rrc-flip on the GPU; with "
                          f"data.augment={cfg.data.augment!r} use data.decode=workers, or set data.augment=rrc-flip")
    for check in sections.checks():  # data, method, schedule: each registry checks its own section
        check(cfg)
    _validate_pixels(cfg)
    positive = {
        "train.epochs": cfg.train.epochs, "data.batch_size": cfg.data.batch_size,
        "data.eval_batch_size": cfg.data.eval_batch_size, "method.steps": cfg.method.steps,
        "method.replays": cfg.method.replays, "train.grad_accum": cfg.train.grad_accum,
        "train.probe_size": cfg.train.probe_size, "train.probe_steps": cfg.train.probe_steps,
        "eval.n_examples": cfg.eval.n_examples, "eval.pgd_steps": cfg.eval.pgd_steps,
        "eval.pgd_restarts": cfg.eval.pgd_restarts, "schedule.lr": cfg.schedule.lr,
        "train.log_every": cfg.train.log_every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} is not accepted; use a value > 0")
    optional_positive = {  # None switches these off / means "all"; 0 would silently mean the same, so it is refused
        "optim.grad_clip": cfg.optim.grad_clip, "data.max_train_examples": cfg.data.max_train_examples,
        "train.stop_after": cfg.train.stop_after,
    }
    for key, value in optional_positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value} is not accepted; use a value > 0, or null to switch it off")
    for key, value in {"optim.weight_decay": cfg.optim.weight_decay, "data.num_workers": cfg.data.num_workers,
                       "data.cache_mb": cfg.data.cache_mb}.items():
        if value < 0:
            raise ConfigError(f"{key}={value} is not accepted; use a value >= 0")
    if not 0 <= cfg.train.seed < 2**32:
        raise ConfigError(f"train.seed={cfg.train.seed} is not accepted; use a whole number in [0, 2**32 - 1]")
    if not 0 <= cfg.optim.momentum < 1:
        raise ConfigError(f"optim.momentum={cfg.optim.momentum:g} is outside [0, 1); use e.g. 0.9 (0 = no momentum)")
    if not 0 <= cfg.train.guard_drop <= 1:
        raise ConfigError(f"train.guard_drop={cfg.train.guard_drop:g} is outside [0, 1]; it is a drop in probe "
                          "accuracy (a fraction), e.g. 0.2")
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir is empty; give a folder for the run, e.g. --output-dir runs/my-run")
    if cfg.train.log_with is not None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        if cfg.train.log_with not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"train.log_with={cfg.train.log_with!r} is not accepted; choose one of: "
                              f"{', '.join(LOGGER_TYPE_TO_CLASS)} (or leave it empty)")
        checks = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
        if cfg.train.log_with in checks and not checks[cfg.train.log_with]():
            raise ConfigError(f"train.log_with={cfg.train.log_with!r} needs its package; pip install "
                              f"{'tensorboard' if cfg.train.log_with == 'tensorboard' else 'wandb'}")
    if cfg.train.checkpoint_every is not None and cfg.train.checkpoint_every <= 0:
        raise ConfigError(f"train.checkpoint_every={cfg.train.checkpoint_every} is not accepted; use a value > 0, or "
                          "null")
    if cfg.train.dist_timeout_minutes <= 0:
        raise ConfigError(f"train.dist_timeout_minutes={cfg.train.dist_timeout_minutes:g} is not accepted; use a "
                          "value > 0 such as 60")
    if cfg.stages:
        expand_stages(cfg)  # each stage is validated as a full config
    if cfg.data.image_size is not None and cfg.data.image_size < 8:
        raise ConfigError(f"data.image_size={cfg.data.image_size} is too small; use 8 or more pixels")
    validate_frontier(cfg)
    return cfg


def validate_frontier(cfg: FinetuneConfig) -> None:
    """Generic checks of the fine-tuning frontier's keys (eps warm-up, AWP, freezing, few-shot); which methods AWP
    combines with is the method registry's check (``train.methods.base.validate_section``)."""
    if cfg.data.per_class is not None and cfg.data.per_class <= 0:
        raise ConfigError(f"data.per_class={cfg.data.per_class} is not accepted; use 1 or more examples per class, or "
                          "null for all")


def validate_data(cfg: FinetuneConfig) -> None:
    """The ``data`` keys' generic checks: streaming, resolutions, fractions (the data wing fills in the labelled
    eval split of a named data set, :func:`robustify.data.sources.validate_section`)."""
    d = cfg.data
    d.streaming = {"no": "false", "yes": "true", "1": "true", "0": "false"}.get(str(d.streaming).lower(),
                                                                                 str(d.streaming).lower())
    if d.attack_size is not None and d.attack_size < 8:
        raise ConfigError(f"data.attack_size={d.attack_size} is too small; use 8 or more pixels (e.g. 32 for CIFAR)")
    if d.crop_pct is not None and not 0 < d.crop_pct <= 1:
        raise ConfigError(f"data.crop_pct={d.crop_pct:g} is outside (0, 1]; use e.g. 0.875, or 1.0 to keep whole "
                          "images")
    if d.interpolation is not None and d.interpolation not in ("bilinear", "bicubic", "nearest"):
        raise ConfigError(f"data.interpolation={d.interpolation!r} is not accepted; choose one of: bilinear, bicubic, "
                          "nearest")
    if not 0 <= d.holdout < 1:
        raise ConfigError(f"data.holdout={d.holdout:g} is outside [0, 1); use a fraction such as 0.1")
    if d.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer={d.shuffle_buffer} is not accepted; use 1 or more examples")
    if cfg.train.global_batch is not None and cfg.train.global_batch < 1:
        raise ConfigError(f"train.global_batch={cfg.train.global_batch} is not accepted; use a value > 0")
    if cfg.schedule.lr_scale_rule != "none" and cfg.train.global_batch is None:
        raise ConfigError(f"schedule.lr_scale_rule={cfg.schedule.lr_scale_rule!r} needs train.global_batch (the global "
                          "batch schedule.lr is stated for)")


def scaled_lr(cfg: FinetuneConfig, global_batch: int) -> float:
    """schedule.lr scaled by ``schedule.lr_scale_rule`` from ``train.global_batch`` to the run's actual global batch
    (per-process batch x processes x grad_accum); for the trainer."""
    rule, ref = cfg.schedule.lr_scale_rule, cfg.train.global_batch
    if rule == "none" or not ref:
        return cfg.schedule.lr
    ratio = global_batch / ref
    return cfg.schedule.lr * (ratio if rule == "linear" else ratio ** 0.5)


# keys a stage may override: what is trained how, not which model, data or threat model the run is about
STAGE_SECTIONS = ("method", "schedule", "optim", "train", "data")
STAGE_FIXED = {"data.name", "data.train_split", "data.eval_split", "data.image_column", "data.label_column",
               "data.attack_size", "data.holdout", "data.streaming", "train.seed", "train.global_batch"}
STAGE_FIXED |= {"data.per_class"}  # frontier: the same few-shot subset (an option's fixed keys: its class declares)


def adversarial_only() -> dict[str, Any]:
    """Keys that only mean something against an adversary, with their "off" value, as the registries declare them
    (an option's class, e.g. train.awp; the methods', method.loss: robustify/sections.py). Set for the
    whole run (in the recipe's sections or by --set), they apply to the run's adversarial stages; a natural stage
    (LP-FT's linear probe, a head-fitting stage) runs without them instead of refusing the run. A stage that names one
    itself is checked as written (natural + train.awp stays a one-line refusal). See docs/configuration.md, "How
    options compose"."""
    return sections.declared("adversarial_only")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def expand_stages(cfg: FinetuneConfig) -> list[tuple[str, FinetuneConfig]]:
    """The run's stages in order, each a full validated config (``[("main", cfg)]`` without ``stages:``).

    A stage is ``{name: ..., method: {...}, train: {epochs: ...}, schedule: {...}, data: {image_size: ...}}``: a
    partial override of the recipe's sections (model, threat, eval and the data set itself stay the run's). Each
    stage starts from the recipe, not from the previous stage, so reordering stages never changes their settings.
    """
    if not cfg.stages:
        return [("main", cfg)]
    base = cfg.to_dict()
    base["stages"] = []
    out: list[tuple[str, FinetuneConfig]] = []
    fixed_keys = STAGE_FIXED | set(sections.declared("fixed"))  # the run's data; an option's (its pseudo-labels)
    model_keys = sorted(sections.declared("stage"))  # model keys a stage may change (model.freeze)
    for i, stage in enumerate(cfg.stages):
        if not isinstance(stage, dict):
            raise ConfigError(f"stages[{i}] must be a mapping with a name and sections to override, got {stage!r}")
        stage = dict(stage)
        name = str(stage.pop("name", f"stage{i + 1}"))
        if name in {n for n, _ in out}:
            raise ConfigError(f"stages[{i}]: the name {name!r} is used twice; give each stage its own name")
        for section, value in stage.items():
            if section == "model" and isinstance(value, dict) and value and {f"model.{k}" for k in value} <= set(
                    model_keys):
                continue  # model.freeze only (checked with the whole stage below)
            if section not in STAGE_SECTIONS:
                raise ConfigError(f"stages[{i}] ({name}): '{section}' cannot change between stages; a stage may "
                                  f"override: name, {', '.join(STAGE_SECTIONS)}, and {', '.join(model_keys)}")
            if not isinstance(value, dict):
                raise ConfigError(f"stages[{i}] ({name}): '{section}' must be a section of keys, got {value!r}")
            fixed = sorted(f"{section}.{k}" for k in value if f"{section}.{k}" in fixed_keys)
            if fixed:
                raise ConfigError(f"stages[{i}] ({name}): '{fixed[0]}' cannot change between stages (it defines the "
                                  "run's data and threat model)")
        merged = _merge(base, stage)
        for key in _run_level_adversarial(base, stage, merged):  # a natural stage: the run's adversarial options off
            section, leaf = key.split(".")
            merged[section] = {**merged[section], leaf: adversarial_only()[key]}
        try:
            out.append((name, validate(_build(FinetuneConfig, merged))))
        except ConfigError as e:
            raise ConfigError(f"stages[{i}] ({name}): {e}") from None
    return out


def _run_level_adversarial(base: dict[str, Any], stage: dict[str, Any], merged: dict[str, Any]) -> list[str]:
    """The :func:`adversarial_only` keys set (not off) for the whole run that a natural stage leaves off: those the
    stage does not name itself, when the stage's method is ``natural``."""
    if (merged.get("method") or {}).get("name") != "natural":
        return []
    out = []
    for key, off in adversarial_only().items():
        section, leaf = key.split(".")
        given = (stage.get(section) or {}) if isinstance(stage.get(section), dict) else {}
        if leaf not in given and (base.get(section) or {}).get(leaf, off) != off:
            out.append(key)
    return out


def stage_notes(cfg: FinetuneConfig) -> list[str]:
    """One line for the run's first lines when run-level adversarial options skip its natural stages
    (:func:`adversarial_only`): which options, which stages they apply to and which run without them."""
    if not cfg.stages:
        return []
    base = cfg.to_dict()
    base["stages"] = []
    keys: dict[str, None] = {}
    natural, adversarial = [], []
    for i, stage in enumerate(cfg.stages):
        stage = {k: v for k, v in stage.items() if k != "name"} if isinstance(stage, dict) else {}
        name = str(cfg.stages[i].get("name", f"stage{i + 1}"))
        skipped = _run_level_adversarial(base, stage, _merge(base, stage))
        keys.update(dict.fromkeys(skipped))
        (natural if (_merge(base, stage).get("method") or {}).get("name") == "natural" else adversarial).append(name)
    if not keys:
        return []
    flat = flatten(base)
    given = ", ".join(f"{k}={spelled(flat[k])}" for k in keys)
    one = len(keys) == 1
    return [f"{given} {'applies' if one else 'apply'} to the adversarial stage(s) {', '.join(adversarial)} only; "
            f"the natural stage(s) {', '.join(natural)} train without {'it' if one else 'them'} (no adversary)"]


def _over_255_hint(value: float) -> str:
    """``eps: 8`` on a [0,1] scale almost always means 8/255."""
    return f"; did you mean {value:g}/255?" if 1 < value <= 255 else ""


def _validate_pixels(cfg: FinetuneConfig) -> None:
    """eps and alpha are in [0,1] pixel units (finite, which parse_number ensures)."""
    eps, alpha = cfg.threat.eps, cfg.method.alpha
    if cfg.threat.norm == "Linf" and not 0 <= eps <= 1:
        raise ConfigError(f"threat.eps={eps:g} is outside [0, 1]; eps is in [0,1] pixel units, e.g. 8/255"
                          + _over_255_hint(eps) + " (an L1 or L2 budget may exceed 1: set threat.norm=L1 or L2)")
    if eps < 0:
        raise ConfigError(f"threat.eps={eps:g} is negative; use a value >= 0 such as 8/255")
    if cfg.method.name != "natural" and eps == 0:
        raise ConfigError(f"threat.eps=0 with method.name={cfg.method.name!r}; use eps > 0 or method natural")
    if alpha is not None and alpha <= 0:
        raise ConfigError(f"method.alpha={alpha:g} is not accepted; use a step size > 0 such as 2/255")
    if alpha is not None and cfg.threat.norm == "Linf" and alpha > 1:
        raise ConfigError(f"method.alpha={alpha:g} is outside (0, 1]; it is in [0,1] pixel units, e.g. 2/255"
                          + _over_255_hint(alpha))


def spelled(value: Any) -> str:
    """A config value as a user writes it in a recipe or ``--set`` (``true``, ``false``, ``null``; a string quoted, as
    every refusal line quotes one), for the lines that name a setting: never Python's ``True`` / ``None``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted keys ``--set`` and the choices use (also the resume check's
    and the checkpoint fingerprint's view of a config)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipes_folder() -> Path | None:
    """The first existing recipes folder: a source checkout's ``recipes/`` wins over the packaged copy, which may be
    stale in an editable install."""
    return next((d for d in RECIPES_DIRS if d.is_dir()), None)


def resolve_recipe_path(path_or_name: str) -> Path:
    """A recipe is a YAML path, or the name of one shipped in ``recipes/`` (``quickstart``,
    ``cifar10-resnet50-fgsm-rs``), looked up in the first existing recipes folder only (a source checkout's
    ``recipes/`` wins over a stale packaged copy)."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        hint = f"; a run folder's recipe is {str(p / RECIPE)!r}" if (p / RECIPE).is_file() else ""
        raise ConfigError(f"recipe {path_or_name!r} is a folder, not a YAML file; give a recipe file or a shipped "
                          f"recipe name{hint}")
    name = path_or_name if path_or_name.endswith((".yaml", ".yml")) else f"{path_or_name}.yaml"
    folder = recipes_folder()
    if folder is not None and (folder / name).is_file():
        return folder / name
    shipped = sorted(q.stem for q in folder.glob("*.yaml")) if folder is not None else []
    raise ConfigError(
        f"recipe {path_or_name!r} not found; give a YAML file path or one of: {', '.join(shipped) or '(none shipped)'}"
    )


def load_recipe(path_or_name: str) -> dict[str, Any]:
    path = resolve_recipe_path(path_or_name)
    data = load_yaml_file(path, "recipe")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections (model:, data:, ...)")
    return data


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML silently keeps the last one, so
    ``eps: 0.1`` ... ``eps: 0.2`` would train at a value the author may not have meant)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                              "keep one")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml_file(path: Path, what: str = "recipe") -> Any:
    """Parse a YAML file strictly: a folder, a binary or non-UTF-8 file, invalid YAML and a duplicate key are each
    one line naming the file (never a traceback, never a silent last-key-wins)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder, not a YAML file; give the recipe file itself (a run "
                          f"folder's is {str(path / RECIPE)!r})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read ({e.strerror or type(e).__name__})") from None
    if b"\0" in raw:
        raise ConfigError(f"{what} {str(path)!r} is a binary file, not a YAML text file; give a recipe .yaml file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{what} {str(path)!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override (value parsed as YAML) to a recipe dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is not accepted; use key=value, e.g. --set schedule.lr=0.1")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {assignment!r} is not accepted; use section.key=value, e.g. --set schedule.lr=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and "/" not in value:
        value = raw.strip()
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def build_config(recipe: str | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Recipe + overrides → a validated :class:`FinetuneConfig`; ``recipe=None`` starts from the dataclasses'
    defaults (what docs/configuration.md documents), not from any recipe file."""
    data = load_recipe(recipe) if recipe is not None else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate(_build(FinetuneConfig, data))


def config_from_dict(data: dict[str, Any]) -> FinetuneConfig:
    return validate(_build(FinetuneConfig, data))


STAMP = "# robustify: sha256 of the lines above (checked on --resume): "


def dump_yaml(cfg: FinetuneConfig) -> str:
    """The resolved recipe as a run folder keeps it, stamped with the sha256 of its own text (a YAML comment), so
    an edit made between an interruption and ``--resume`` is detected (:func:`recipe_stamp_ok`)."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return f"{text}{STAMP}{hashlib.sha256(text.encode()).hexdigest()}\n"


def recipe_stamp_ok(raw: bytes) -> bool | None:
    """True when a recipe.yaml's stamp matches its text, False when the text was edited, None without a stamp."""
    text = raw.decode("utf-8", errors="replace")
    at = text.rfind(STAMP)
    if at < 0:
        return None
    body, digest = text[:at], text[at + len(STAMP):].strip()
    return hashlib.sha256(body.encode()).hexdigest() == digest
