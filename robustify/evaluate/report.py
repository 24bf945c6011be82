"""Robust evaluation: clean, FGSM, PGD (restarts, CE and margin losses), AutoAttack, accuracy vs eps, masking checks.

A robustness number is only worth the attack behind it, so every example is counted as robust only if it survives
*every* attack run on it: every PGD restart and loss, and every attack of the AutoAttack cascade. PGD also counts an
example as broken if *any* iterate fools the model (the logits of each step are computed anyway), which makes it
strictly stronger than looking at the last iterate only, at no extra cost.

Examples are the first ``n_examples`` of the split (RobustBench's first-N convention), decoded once at the model's
input size; the subset is recorded with a hash. Randomness comes from generators seeded with ``seed``, so a run is
reproducible. Inner attack loops never synchronise with the host; between PGD restarts the examples already broken
are dropped (one synchronisation per restart), which is where most of the saving on robust models comes from.

Must not: store a result that was not measured on exactly the weights the record names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import attacks
from ..data import to_unit
from ..data.examples import Examples
from ..errors import UserError
from ..publish import public, runrecord
from ..publish.runrecord import Evaluation, RunRecord
from ..runfolder import CARD, CONFIG, EPS_CURVE_PLOT, EVAL, METRICS, RECIPE, RunFolder, is_model_folder
from . import collectives
from .kernel import (  # noqa: F401  (re-exported: the kernel lives in robust_acc)
    FP32,
    bar_for,
    fp32_math,
    parse_losses,
    pgd_correct,
    pgd_robust,
    predict,
    shard_range,
)

# what ``--attack`` may name: each runs only when named (clean always runs: every robust accuracy is "correct and not
# fooled", and a model with non-finite logits is refused before anything else); a suite added here is one line
SUITE_TEXT: dict[str, str] = {
    "clean": "clean accuracy",
    "fgsm": "one-step FGSM at eps (no random start)",
    "pgd": "PGD with restarts on the CE and margin losses",
    "autoattack": "AutoAttack (APGD-CE, APGD-T, FAB-T, Square)",
    "curve": "accuracy vs eps (PGD-CE at 0, 1/4, 1/2, 1, 2 x eps)",
    "checks": "gradient-masking checks (PGD at an image-erasing eps, input gradients; compares the attacks run)",
    "unseen": "the other norms at their standard radii (Linf/L2/L1), marked unseen",
}
ATTACK_CHOICES = tuple(SUITE_TEXT)
FULL_REPORT = ("clean", "fgsm", "pgd", "autoattack", "curve", "checks", "unseen")  # no --attack: the preset's report
SEEN_REPORT = ("clean", "fgsm", "pgd", "autoattack", "curve", "checks")  # EvalSettings' default (the API's)
PRESETS: dict[str, dict[str, Any]] = {
    # the final report: PGD-50 x 10 restarts on CE and on the margin loss, AutoAttack as in RobustBench (also at each
    # unseen threat model)
    "standard": {"pgd_steps": 50, "pgd_restarts": 10, "aa_version": "standard"},
    # a quick look (seconds on a CPU for small models); labelled "quick" wherever its numbers appear; unseen threats
    # by APGD-CE alone, pgd_steps iterations
    "quick": {"pgd_steps": 10, "pgd_restarts": 1, "aa_version": "quick"},
}
CURVE_FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0)


def load_examples(data: str, split: str, n_examples: int, model: torch.nn.Module, progress: bool = True,
                  state: Any = None, batch_size: int = 250) -> Examples:
    """Decode the first ``n_examples`` of ``split`` with the model's one preprocessing (the run's own for a robustify
    model; else the backbone's timm data config at the model's input size). Under several processes (``state``, an
    ``accelerate.PartialState``) each decodes only its block of whole ``batch_size`` batches, the block
    :func:`evaluate` attacks on it (:func:`shard_range`); the main process prepares the data set first."""
    from ..data.loaders import evaluation_block

    pre = model_preprocessing(model)
    world = state.num_processes if state is not None else 1
    block = None
    if world > 1:
        def block(n: int) -> tuple[int, int]:
            return shard_range(n, batch_size, state.process_index, world)

    first = state.main_process_first if world > 1 else None
    main = state is None or state.is_main_process
    return evaluation_block(data, split, n_examples, pre, block, first,
                            desc=f"loading {data} {split}" if progress and main else None)


def model_preprocessing(model: torch.nn.Module) -> Any:
    """The model's one preprocessing: the run's own for a robustify model, else the backbone's timm data config at
    the model's input size."""
    from timm.data import resolve_data_config

    from ..data import Preprocessing

    pre = getattr(model, "preprocessing", None)
    if pre is None:
        cfg = dict(resolve_data_config(model=getattr(model, "backbone", model)))
        cfg["input_size"] = tuple(getattr(model, "input_size", cfg["input_size"]))
        pre = Preprocessing.from_data_config(cfg)
    return pre


# ------------------------------------------------------------------------------------------ the suites
def _corruptions_suite(net: torch.nn.Module, ex: Examples, options: dict[str, Any], settings: EvalSettings,
                       device: Any, state: Any, progress: bool, run: RunInfo | None) -> dict[str, Any]:
    """``--attack corruptions``: evaluate.corruptions on the same subset (baseline: the run's base model)."""
    from .corruptions import run_suite, settings_from

    s = settings_from(options, seed=settings.seed, batch_size=settings.batch_size)
    return run_suite(net, ex, s, model_preprocessing(net).transform(), device, state, progress,
                     baseline=run.record.training.base_model if run is not None else None,
                     num_classes=getattr(net, "num_classes", None),
                     weights_sha256=run.record.training.weights_sha256 if run is not None else None)


# name -> the evaluation beyond the Lp attacks it runs on the subset; its result is stored under report[name]
SUITES: dict[str, Callable[..., dict[str, Any]]] = {"corruptions": _corruptions_suite}


# ------------------------------------------------------------------------------------------ the evaluation
DEFAULT_ATTACKS = FULL_REPORT


def default_attacks() -> tuple[tuple[str, ...], str | None]:
    """``robustify eval`` without ``--attack``: the preset's full report (:data:`FULL_REPORT`), AutoAttack included
    when its optional package is installed; without it, everything else with a one-line note saying so (a plain
    ``pip install -e .`` must evaluate, not stop on a missing extra)."""
    from .autoattack import INSTALL, package_version

    if package_version() is not None:
        return DEFAULT_ATTACKS, None
    return tuple(a for a in FULL_REPORT if a != "autoattack"), (
        "AutoAttack is not installed, so this evaluation runs everything but AutoAttack (unseen threats by PGD); for "
        f"AutoAttack: {INSTALL} in your robustify clone")


def parse_attacks(text: str) -> tuple[str, ...]:
    """``--attack clean,pgd`` -> the suites in the order given, once each (:meth:`EvalSettings.validate` checks the
    names, before anything is loaded)."""
    names = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    if not names:
        raise UserError(f"--attack {text!r} is not accepted; name one or more of: {', '.join(ATTACK_CHOICES)}")
    return names


@dataclass
class EvalSettings:
    """What to run. Defaults are the ``standard`` preset (the final report)."""

    eps: float
    norm: str = "Linf"
    attacks: tuple[str, ...] = SEEN_REPORT  # suites (ATTACK_CHOICES); exactly these run (clean always)
    preset: str = "standard"
    pgd_steps: int = 50
    pgd_restarts: int = 10
    pgd_losses: tuple[str, ...] = ("ce", "cw")
    pgd_alpha: float | None = None
    aa_version: str = "standard"
    aa_overrides: dict[str, Any] = field(default_factory=dict)  # budgets (tests); the version becomes "custom"
    curve: bool | None = None  # None: as ``attacks`` says; True / False add or remove the suite
    checks: bool | None = None
    seed: int = 0
    batch_size: int = 250

    @classmethod
    def from_preset(cls, preset: str, eps: float, **kwargs: Any) -> EvalSettings:
        if preset not in PRESETS:
            raise UserError(f"--preset {preset!r} is not accepted; choose one of: {', '.join(PRESETS)}")
        values = dict(PRESETS[preset]) | {k: v for k, v in kwargs.items() if v is not None}
        return cls(eps=eps, preset=preset, **values)

    def validate(self) -> EvalSettings:
        if self.norm not in attacks.NORMS:
            _bad("--norm", self.norm, attacks.NORMS)
        for a in self.attacks:
            if a not in ATTACK_CHOICES and a not in SUITES:
                _bad("--attack", a, ATTACK_CHOICES + tuple(SUITES))
        names = list(dict.fromkeys(("clean", *self.attacks)))
        for suite in ("curve", "checks"):
            flag = getattr(self, suite)
            if flag is True and suite not in names:
                names.append(suite)
            elif flag is False and suite in names:
                names.remove(suite)
            setattr(self, suite, suite in names)
        self.attacks = tuple(names)
        if self.eps <= 0 or (self.norm == "Linf" and self.eps > 1):
            raise UserError(f"--eps {self.eps:g} is not accepted; use eps in (0, 1] pixel units for Linf (e.g. 8/255) "
                            "or > 0 for L2 and L1 (summed over the image, e.g. 0.5 and 12 on CIFAR)")
        for name in ("pgd_steps", "pgd_restarts", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)} is not accepted; use 1 or more")
        self.pgd_losses = parse_losses(self.pgd_losses)
        return self

    @property
    def alpha(self) -> float:
        return 2.5 * self.eps / self.pgd_steps if self.pgd_alpha is None else self.pgd_alpha


def _bad(flag: str, value: Any, choices: Iterable[str]) -> None:
    raise UserError(f"{flag} {value!r} is not accepted; choose from: {', '.join(choices)}")


class NonFiniteLogits(UserError):
    """The model outputs NaN or inf on the evaluation inputs: refused before any number is reported."""


def large_eps(norm: str, eps: float, input_size: tuple[int, ...]) -> float:
    """An eps at which every image can be turned into the same flat grey image, so no classifier can stay accurate:
    0.5 for Linf, 0.5 * sqrt(C*H*W) for L2, 0.5 * C*H*W for L1 (never smaller than 4 eps)."""
    d = math.prod(input_size)
    base = 0.5 if norm == "Linf" else 0.5 * math.sqrt(d) if norm == "L2" else 0.5 * d
    return max(base, 4 * eps) if norm != "Linf" else min(1.0, max(base, 4 * eps))


class _Tick(torch.autograd.Function):
    """Identity whose backward counts the examples an input gradient was computed for."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, box: list[int]) -> torch.Tensor:
        ctx.box, ctx.n = box, x.shape[0]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.box[0] += ctx.n
        return grad, None


class WorkCounter(torch.nn.Module):
    """The model, counting what every attack costs: examples through a forward pass, and examples an input gradient
    was computed for (PGD, FGSM, the checks and AutoAttack alike, since each calls the model). Host integers only
    (shapes are known on the host), so counting never synchronises with the device. These counts are what an
    evaluation's cost is (``attack_work``), and what the estimate printed before it starts predicts."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.grads = [0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += int(x.shape[0])
        if torch.is_grad_enabled() and x.requires_grad:
            x = _Tick.apply(x, self.grads)
        return self.model(x)


class _Runner:
    """Runs one attack over the subset in batches, with a progress bar; returns a per-example bool mask (CPU).

    Under several processes (``accelerate launch`` / ``torchrun``) each process attacks only its block of whole
    batches (:func:`robust_acc.shard_range`) and the masks are gathered, so N processes take 1/N of the time. Random
    starts come from a generator seeded per (attack, batch offset), so the result does not depend on the number of
    processes.
    """

    def __init__(self, model: torch.nn.Module, ex: Examples, batch_size: int, device: torch.device, progress: bool,
                 state: Any = None):
        self.model, self.ex, self.bs, self.device = model, ex, batch_size, device
        self.state = state  # accelerate.PartialState (None: one process)
        self.world = state.num_processes if state is not None else 1
        rank = state.process_index if state is not None else 0
        self.progress = progress and rank == 0
        self.shard = shard_range(ex.n, batch_size, rank, self.world)
        if ex.total is not None and self.shard != (ex.offset, ex.offset + ex.y.shape[0]):
            raise RuntimeError(f"this process holds examples {ex.offset}..{ex.offset + ex.y.shape[0]} but attacks "
                               f"{self.shard[0]}..{self.shard[1]}: decode the block with the same batch size")
        self.batch_start = 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
            start: torch.Tensor | None = None) -> torch.Tensor:
        t0 = time.perf_counter()
        out = [torch.zeros(0, dtype=torch.bool)]
        first, end = self.shard
        with bar_for(end - first, name, self.progress) as bar:
            for i in range(first, end, self.bs):
                self.batch_start = i
                xb, yb = self.ex.rows(i, min(i + self.bs, end))
                x, y = to_unit(xb.to(self.device)), yb.to(self.device)
                prior = (start[i:i + y.numel()] if start is not None else torch.ones_like(y, dtype=torch.bool))
                out.append(fn(x, y, prior.to(self.device)).cpu())
                bar.update(y.numel())
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return self.gather(torch.cat(out), f"{name} masks")

    def gather(self, local: torch.Tensor, stage: str = "gather") -> torch.Tensor:
        """This process's share (CPU) → the whole subset's, in example order, on every process. Every process calls
        it, an empty share included (see collectives.py)."""
        if self.world == 1:
            return local
        from accelerate.utils import gather_object

        with collectives.stage(f"eval: {stage}"):
            return torch.cat(gather_object([local]))

    def subset_record(self) -> dict[str, Any]:
        """The subset's record (its hash over every process's examples, in order), the same on every process."""
        if self.world == 1:
            return self.ex.record()
        from accelerate.utils import gather_object

        a, b = self.shard
        mine = Examples(*self.ex.rows(a, b), self.ex.data, self.ex.split, self.ex.num_classes).example_digests()
        with collectives.stage("eval: subset hash"):
            return self.ex.record(b"".join(gather_object([mine])))

    def reduce(self, t: torch.Tensor, stage: str = "reduce") -> torch.Tensor:
        """Sum a device tensor over the processes."""
        if self.world == 1:
            return t
        from accelerate.utils import reduce

        with collectives.stage(f"eval: {stage}"):
            return reduce(t, reduction="sum")

    def generator(self, offset: int, seed: int) -> torch.Generator:
        """A generator for attack ``offset`` on the current batch (call it inside the batch function)."""
        return torch.Generator(device=self.device).manual_seed(
            ((seed * 1_000_003 + offset) * 1_000_003 + self.batch_start) % 2**63)


def _acc(mask: torch.Tensor) -> float:
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def evaluate(model: torch.nn.Module, ex: Examples, s: EvalSettings, device: torch.device | str = "cpu",
             progress: bool = True, state: Any = None) -> dict[str, Any]:
    """Exactly the suites ``s.attacks`` names (clean always) on the fixed subset.

    Returns the report (JSON-ready): ``clean_acc``, ``fgsm_acc``, ``pgd_acc``, ``autoattack_acc`` (fractions) for
    the attacks run, ``robust_acc`` (robust to every attack run at the model's own threat model), ``eps_curve``,
    ``checks``, ``unseen`` (the other norms, marked unseen) when named, settings, timings, and ``attack_work`` /
    ``forward_work``: the input-gradient and forward evaluations (examples x passes) each process made.
    """
    from . import checks as checks_mod

    s.validate()
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    counter = WorkCounter(model)
    model = counter
    run = _Runner(model, ex, s.batch_size, device, progress, state)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "threat_model": {"norm": s.norm, "eps": s.eps}, "n_examples": ex.n, "subset": run.subset_record(),
        "preset": s.preset, "attacks": list(s.attacks), "seed": s.seed, "batch_size": s.batch_size,
        "device": str(device), "precision": "fp32", "tf32": False, "processes": run.world,
    }
    masks: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    with fp32_math():  # TF32 off for every attack and check, restored after (also on an error)
        try:
            bad = torch.zeros((), dtype=torch.long, device=device)  # examples with a non-finite logit (no host sync)

            def clean_fn(x: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
                nonlocal bad
                logits = model(x)
                bad = bad + (~torch.isfinite(logits).all(1)).sum()
                return logits.argmax(1) == y

            masks["clean"] = clean = run.run("clean", clean_fn)
            n_bad = int(run.reduce(bad).item())
            if n_bad:  # argmax of NaN logits is an arbitrary class: no accuracy measured on them means anything
                raise NonFiniteLogits(f"the model's logits are not finite (NaN or inf) on {n_bad} of the {ex.n} "
                                      "evaluation examples, so no accuracy can be measured: its weights are damaged or "
                                      "training diverged; nothing was evaluated or written")
            report["clean_acc"] = _acc(clean)

            if "fgsm" in s.attacks:
                masks["fgsm"] = run.run("fgsm", lambda x, y, p: p & (predict(
                    model, x + attacks.fgsm(model, x, y, s.eps, norm=s.norm, random_start=False)) == y), clean)
                report["fgsm_acc"] = _acc(masks["fgsm"])
                report["fgsm"] = {"norm": s.norm, "eps": s.eps, "alpha": s.eps, "random_start": False}

            if "pgd" in s.attacks:
                _run_pgd(run, s, report, masks, extra)
            if s.curve:
                _run_curve(run, s, report, masks, extra)
            if s.checks:
                _run_check_attacks(run, s, report, masks, extra)
            if "autoattack" in s.attacks:
                from .autoattack import run_autoattack, settings_for

                t0 = time.perf_counter()
                a, b = run.shard
                res = run_autoattack(model, *ex.rows(a, b), s.eps, s.norm,
                                     settings_for(s.aa_version, **s.aa_overrides), seed=s.seed, batch_size=s.batch_size,
                                     device=device, robust=clean[a:b], progress=run.progress)
                masks["autoattack"] = run.gather(res.pop("robust_mask"))
                extra["square_only"] = run.gather(res.pop("square_only_mask"))
                aa = res["autoattack"]
                names = list(aa["per_attack"])
                counts = run.reduce(torch.tensor([aa["per_attack"][k] * (b - a) for k in names], dtype=torch.float64,
                                                 device=device))
                aa.update(per_attack={k: round(c) / max(ex.n, 1) for k, c in zip(names, counts.tolist(), strict=True)},
                          n_examples=ex.n)
                res["autoattack_acc"] = _acc(masks["autoattack"])
                report.update(res)
                report["autoattack_version"] = report["autoattack"]["version"]
                run.seconds["autoattack"] = round(time.perf_counter() - t0, 2)
            if "unseen" in s.attacks:
                _run_unseen(run, s, report, clean)
            # the common corruptions suite (robustify/evaluate/corruptions/) adds its result here as
            # report["corruptions"] when named: per corruption x severity accuracy, mean accuracy, mCE
        finally:
            model.train(was_training)
    work = run.gather(torch.tensor([[counter.grads[0], counter.forwards]]), "attack work") if run.world > 1 else \
        torch.tensor([[counter.grads[0], counter.forwards]])
    report["attack_work"] = [int(v) for v in work[:, 0].tolist()]  # input-gradient evaluations per process
    report["forward_work"] = [int(v) for v in work[:, 1].tolist()]  # forward evaluations per process
    worst = clean.clone()
    seen = [name for name in ("fgsm", "pgd", "autoattack") if name in masks]
    for name in seen:
        worst &= masks[name]
    if seen:  # no attack at the model's own threat model: no robust accuracy (clean accuracy is not one)
        report["robust_acc"] = _acc(worst)
    if s.checks:
        report["checks"] = checks_mod.run_checks(report, masks, extra)
    run.seconds["total"] = round(time.perf_counter() - t_start, 2)
    report["seconds"] = run.seconds
    return report


def _run_unseen(run: _Runner, s: EvalSettings, report: dict, clean: torch.Tensor) -> None:
    """The other norms at their standard radii for the data set's kind, each by the preset's attack, every process
    on its block; marked ``seen: false`` (:mod:`robustify.evaluate.unseen`)."""
    from . import unseen

    size = tuple(run.ex.x.shape[1:])
    kind = unseen.data_kind(run.ex.data, size)
    attack = unseen.unseen_attack(s.preset, s.pgd_steps, s.aa_overrides)
    a, b = run.shard
    out = []
    for norm, eps in unseen.unseen_threats(s.norm, run.ex.data, size):
        t0 = time.perf_counter()
        local = unseen.attack_block(run.model, *run.ex.rows(a, b), norm, eps, attack, robust=clean[a:b], seed=s.seed,
                                    batch_size=s.batch_size, device=run.device, progress=run.progress, offset=a)
        mask = run.gather(local, f"unseen {norm} masks")
        out.append(unseen.result(norm, eps, kind, attack, int(mask.sum()), run.ex.n))
        run.seconds[f"unseen {norm}"] = round(time.perf_counter() - t0, 2)
    report["unseen"] = out


def _run_pgd(run: _Runner, s: EvalSettings, report: dict, masks: dict, extra: dict) -> None:
    step_correct = torch.zeros(s.pgd_steps + 1, device=run.device, dtype=torch.long)
    stage_masks: dict[str, list[torch.Tensor]] = {}

    def fn(x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        stages: dict[str, torch.Tensor] = {}
        out = pgd_robust(run.model, x, y, s.eps, s.norm, s.pgd_steps, s.pgd_restarts, s.pgd_losses, s.pgd_alpha,
                         run.generator(2, s.seed), prior, step_correct, stages)
        for k, v in stages.items():
            stage_masks.setdefault(k, []).append(v.cpu())
        return out

    losses = "+".join(s.pgd_losses)
    masks["pgd"] = run.run(f"pgd-{s.pgd_steps} x{s.pgd_restarts} {losses}", fn, masks["clean"])
    # a fixed list of keys, the same on every process: a process with no batch has no stage masks of its own but
    # must still take part in each gather (a dict of the keys it saw would leave it out and hang the others)
    keys = ("first", *s.pgd_losses)
    stages = {k: run.gather(torch.cat(stage_masks[k]) if stage_masks.get(k) else torch.zeros(0, dtype=torch.bool),
                            f"pgd {k} masks") for k in keys}
    stages = {k: v for k, v in stages.items() if v.numel() == run.ex.n}  # keys no batch set (eps 0) on any process
    step_correct = run.reduce(step_correct, "pgd step counts")
    masks["pgd_first"] = stages.get("first", masks["pgd"])
    report["pgd_acc"] = _acc(masks["pgd"])
    report["pgd"] = {
        "norm": s.norm, "eps": s.eps, "steps": s.pgd_steps, "restarts": s.pgd_restarts, "loss": losses,
        "alpha": s.alpha, "random_start": True, "counts_any_iterate": True,
        "first_run_acc": _acc(masks["pgd_first"]),
        "per_loss_acc": {k: _acc(v) for k, v in stages.items() if k in attacks.LOSSES},
        "last_iterate_acc_by_step": [round(c / max(run.ex.n, 1), 4) for c in step_correct.tolist()],
    }


def _curve_attack(run: _Runner, s: EvalSettings, eps: float, offset: int, name: str,
                  clean: torch.Tensor) -> torch.Tensor:
    """PGD-CE, one restart, the main step count (step size 2.5 eps / steps) at ``eps``."""
    return run.run(name, lambda x, y, p: pgd_robust(run.model, x, y, eps, s.norm, s.pgd_steps, 1, ("ce",), None,
                                                     run.generator(offset, s.seed), p), clean)


def _run_curve(run: _Runner, s: EvalSettings, report: dict, masks: dict, extra: dict) -> None:
    """PGD-CE (one restart, the main step count) at each eps of the curve; raw, so a rise shows up in the checks."""
    points = []
    for k, factor in enumerate(CURVE_FACTORS):
        eps = s.eps * factor
        if s.norm == "Linf":
            eps = min(eps, 1.0)
        if factor == 0:
            acc = report["clean_acc"]
        elif factor == 1.0 and "pgd_first" in masks and s.pgd_losses[0] == "ce" and s.pgd_alpha is None:
            acc = _acc(masks["pgd_first"])  # the main PGD's first run is exactly this attack
        else:
            acc = _acc(_curve_attack(run, s, eps, 10 + k, f"curve eps={eps:.4g}", masks["clean"]))
        points.append({"eps": eps, "acc": acc})
    report["eps_curve"] = {"attack": {"name": "pgd", "steps": s.pgd_steps, "restarts": 1, "loss": "ce",
                                      "alpha": "2.5 eps / steps", "norm": s.norm}, "points": points}


def _run_check_attacks(run: _Runner, s: EvalSettings, report: dict, masks: dict, extra: dict) -> None:
    """The two measurements the checks need beyond the attacks themselves: PGD at a huge eps, input gradients."""
    from .checks import LARGE_EPS_ACC, zero_gradient_counts

    last = report.get("eps_curve", {}).get("points", [{}])[-1]
    if last.get("acc", 1.0) <= LARGE_EPS_ACC:  # fooled within a smaller ball means fooled within the huge one
        extra["large_eps"] = {"eps": last["eps"], "acc": last["acc"], "from_curve": True}
    else:
        big = large_eps(s.norm, s.eps, tuple(run.ex.x.shape[1:]))
        mask = _curve_attack(run, s, big, 30, f"large eps={big:.3g}", masks["clean"])
        extra["large_eps"] = {"eps": big, "acc": _acc(mask)}
    t0 = time.perf_counter()
    a, b = run.shard
    counts = zero_gradient_counts(run.model, *run.ex.rows(a, b), s.batch_size, run.device)
    extra["zero_grad"] = {k: int(c) / max(run.ex.n, 1) for k, c in zip(counts, run.reduce(
        torch.stack(list(counts.values())), "gradient check counts").tolist(), strict=True)}
    run.seconds["gradients"] = round(time.perf_counter() - t0, 2)


# ----------------------------------------------------------------------------------------- the plan line
def plan_work(s: EvalSettings, ex: Examples, n_classes: int,
              suite_options: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, float, float]]:
    """What each suite of ``s`` costs at most, counted as :class:`WorkCounter` counts: (label, forward passes,
    input-gradient passes), in examples. PGD restarts and AutoAttack's later attacks run only on the examples still
    robust, so the real counts are usually lower (never higher)."""
    from . import unseen
    from .autoattack import aa_work_per_example_of, package_version

    n = ex.n
    pgd_run = (s.pgd_steps + 1.0, float(s.pgd_steps))  # one PGD run: a forward per step and at the end
    out: list[tuple[str, float, float]] = [("clean", float(n), 0.0)]
    if "fgsm" in s.attacks:
        out.append(("FGSM", 2.0 * n, float(n)))
    if "pgd" in s.attacks:
        k = s.pgd_restarts * len(s.pgd_losses)
        out.append((f"PGD-{s.pgd_steps} x{s.pgd_restarts} ({'+'.join(s.pgd_losses)})", k * pgd_run[0] * n,
                    k * pgd_run[1] * n))
    if s.curve:
        reused = "pgd" in s.attacks and s.pgd_losses[0] == "ce" and s.pgd_alpha is None
        points = sum(1 for f in CURVE_FACTORS if f and not (f == 1.0 and reused))
        out.append((f"eps curve ({points} PGD-{s.pgd_steps})", points * pgd_run[0] * n, points * pgd_run[1] * n))
    if s.checks:
        out.append(("masking checks", (pgd_run[0] + 2) * n, (pgd_run[1] + 2) * n))
    if "autoattack" in s.attacks and package_version() is not None:
        from .autoattack import settings_for

        fwd, grad = aa_work_per_example_of(settings_for(s.aa_version, **s.aa_overrides), s.norm, n_classes)
        out.append((f"AutoAttack {s.aa_version}", fwd * n, grad * n))
    if "unseen" in s.attacks:
        attack = unseen.unseen_attack(s.preset, s.pgd_steps, s.aa_overrides)
        size = tuple(ex.x.shape[1:])
        for norm, eps in unseen.unseen_threats(s.norm, ex.data, size):
            fwd, grad = unseen.work_per_example(attack, norm, n_classes)
            out.append((f"unseen {unseen.threat_label(norm, eps)} ({attack.name})", fwd * n, grad * n))
    if "corruptions" in s.attacks:  # forward passes only (the corrupting itself is CPU work: robustify bench)
        from .corruptions import settings_from

        cs = settings_from((suite_options or {}).get("corruptions"), seed=s.seed, batch_size=s.batch_size)
        k = len(cs.corruptions) * len(cs.severities)
        out.append((f"corruptions ({len(cs.corruptions)} x {len(cs.severities)} severities)", float(k * n), 0.0))
    return out


def measure_step(model: torch.nn.Module, ex: Examples, device: torch.device, gradients: bool,
                 n: int = 32) -> tuple[float, float]:
    """Seconds per example of one forward pass and of one input gradient (forward and backward), measured once on
    the first ``n`` examples this process holds (the second only when ``gradients``): the rate the estimate uses."""
    if ex.y.shape[0] == 0:
        return 0.0, 0.0
    x, y = ex.rows(ex.offset, ex.offset + min(n, int(ex.y.shape[0])))
    x, y = to_unit(x.to(device)), y.to(device)
    with fp32_math():
        with torch.no_grad():
            model(x[:1]).argmax(1).tolist()  # the first call's one-off costs (allocation, kernel choice) left out
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x).argmax(1).tolist()  # .tolist(): wait for the device
        fwd = (time.perf_counter() - t0) / y.numel()
        if not gradients:
            return fwd, 0.0
        t0 = time.perf_counter()
        grad, _ = attacks.input_gradient(model, x, torch.zeros_like(x), y, attacks.cross_entropy)
        grad.abs().sum().item()
        return fwd, max((time.perf_counter() - t0) / y.numel() - fwd, 0.0)


def _count(v: float) -> str:
    return f"{v:,.0f}" if v < 1e5 else f"{v:.2g}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else "under 1 s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plan_line(s: EvalSettings, ex: Examples, work: list[tuple[str, float, float]], rates: tuple[float, float],
              world: int = 1) -> str:
    """The first line ``robustify eval`` prints: what will run, at most how many passes, and roughly how long."""
    fwd = sum(w[1] for w in work)
    grad = sum(w[2] for w in work)
    seconds = (fwd * rates[0] + grad * rates[1]) / max(world, 1)
    grads = f"{_count(grad)} input-gradient" if grad else "no input-gradient"
    procs = f" over {world} processes" if world > 1 else ""
    return (f"robustify eval will run: {', '.join(w[0] for w in work)} on {ex.n} examples ({s.norm} "
            f"eps={runrecord.eps_text(s.eps)}, preset {s.preset}): at most {_count(fwd)} forward and {grads} passes, "
            f"up to about {_duration(seconds)}{procs} (from a measured step; attacks skip examples already broken, "
            "so usually less)")


# --------------------------------------------------------------------------------------------- run folders
@dataclass
class RunInfo:
    """A run folder (``finetune`` output) and its record: how its model should be evaluated by default."""

    path: Path
    record: RunRecord
    data_spec: str  # the --data spec the run was trained with (recipe.yaml; the record holds only public names)

    @property
    def data(self) -> str:
        return self.data_spec

    @property
    def split(self) -> str:
        return self.record.training.eval_split

    @property
    def eps(self) -> float:
        return self.record.training.eps

    @property
    def norm(self) -> str:
        return self.record.training.norm

    @property
    def n_examples(self) -> int | None:
        return self.record.strongest().n_examples if self.record.evaluations else None


def recipe_data(folder: RunFolder, fallback: str) -> str:
    """The local --data spec from recipe.yaml. A relative path is the one ``finetune`` was given in the folder it ran
    in, which the recipe's ``output_dir`` tells (the run folder's path ends with it): found there, it is returned as
    an absolute path, whatever folder ``eval`` runs in; else it counts when it exists from here, else (a pulled
    run's recipe holds only a file name) the public name."""
    import yaml

    try:
        recipe = yaml.safe_load(folder.read_text(RECIPE))
        spec = str(recipe["data"]["name"])
    except (UserError, yaml.YAMLError, KeyError, TypeError):  # unreadable or not UTF-8: verify_weights says so
        return fallback
    prefix = next((p for p in ("npz:", "imagefolder:") if spec.startswith(p)), None)
    local = Path(spec[len(prefix):]).expanduser() if prefix else None
    if local is None or local.is_absolute():
        return spec
    ran_in = _finetune_folder(folder.path, recipe.get("output_dir"))
    if ran_in is not None and (ran_in / local).exists():
        return f"{prefix}{ran_in / local}"
    return spec if local.exists() else fallback


def _finetune_folder(run: Path, output_dir: Any) -> Path | None:
    """The folder ``finetune`` ran in: the run folder's path less the relative ``output_dir`` the recipe recorded
    (None when it was absolute, is missing, or the run folder was moved since)."""
    if not isinstance(output_dir, str) or not output_dir or Path(output_dir).is_absolute():
        return None
    tail = Path(output_dir).expanduser().parts
    path = run.resolve()
    if ".." in tail or len(tail) >= len(path.parts) or path.parts[-len(tail):] != tail:
        return None
    return path.parents[len(tail) - 1]


def read_run(spec: str) -> RunInfo | None:
    """The run folder behind ``spec`` (a path or ``local-dir:PATH``), or None if it is not one."""
    folder = RunFolder(spec.removeprefix("local-dir:"))
    if not (is_model_folder(folder.path) and folder.has(METRICS)):
        return None
    config = folder.read_json(CONFIG)
    robustness = config.get("robustness") if isinstance(config, dict) else None
    if not isinstance(robustness, dict) or "threat_model" not in robustness:
        return None  # a timm folder (an imported model, a pulled third-party repo): evaluated as a plain model
    record = RunRecord.from_files(config, folder.read_json(METRICS), folder.path.name, folder.what)
    return RunInfo(folder.path, record, recipe_data(folder, record.training.dataset))


def matches_data(run: RunInfo, report: dict[str, Any]) -> str | None:
    """None when the evaluation ran on the run's own data; else why not."""
    sub = report["subset"]
    if sub["data"] != run.data and public.dataset_name(sub["data"])[0] != run.record.training.dataset:
        return f"evaluated on {sub['data']}, but the model was trained for {run.record.training.dataset}"
    return None


def matches_run(run: RunInfo, report: dict[str, Any]) -> str | None:
    """None when the evaluation measured the run's own threat model on its own data; else why not."""
    return matches_data(run, report) or run.record.mismatch(Evaluation.from_report(report))


def render_run_update(run: RunInfo, report: dict[str, Any], plot: bool = True) -> tuple[dict[Path, bytes], str]:
    """The run folder's files after adding ``report`` to its record, rendered in memory (nothing written yet): the
    evaluation is stored by the record's update rules (a weaker one beside a stronger one, never over it), and what
    renders from the record is rewritten: eval.json (without local paths), eps_curve.png, the record's two files and
    the card. :func:`write_outputs` writes them all or none."""
    import hashlib
    import tempfile

    from ..publish.card import run_card
    from ..report import plot_eps_curve

    runrecord.verify_weights(run.path)  # again, under the lock, right before the record is rewritten
    folder, record = RunFolder(run.path), run.record
    note = record.add(Evaluation.from_report(report))
    kept = runrecord.public_report(report, f"this run folder ({record.training.name})")
    files: dict[str, bytes] = {EVAL: runrecord.json_bytes(kept)}
    record.eval_sha256 = hashlib.sha256(files[EVAL]).hexdigest()  # push publishes only this one
    if plot and "eps_curve" in report:
        with tempfile.TemporaryDirectory(prefix="robustify-plot-") as tmp:
            plot_eps_curve(report, Path(tmp) / EPS_CURVE_PLOT)
            files[EPS_CURVE_PLOT] = (Path(tmp) / EPS_CURVE_PLOT).read_bytes()
    config = folder.read_json(CONFIG)
    files |= record.files(config)
    recipe = folder.read_text(RECIPE) if folder.has(RECIPE) else None
    files[CARD] = run_card(record, config, recipe, sorted(set(folder.files()) | set(files)),
                           evaluation=kept).encode("utf-8")
    return {folder / name: data for name, data in files.items()}, note


def write_outputs(files: dict[Path, bytes], run_dir: Path | None = None) -> None:
    """Write the evaluation's files all or none; a full disk or a read-only folder is one line."""
    from ..fileio import atomic_write_many, write_error_cause

    try:
        atomic_write_many(files)
    except Exception as e:  # noqa: BLE001 - only the causes a user can fix become one line
        cause = write_error_cause(e)
        if cause is None:
            raise
        where = f"; the run folder {str(run_dir)!r} is unchanged" if run_dir is not None else ""
        raise UserError(f"the evaluation's files could not be written ({cause}): nothing was written{where}; free "
                        "space (or choose a writable --output) and run the same command again") from None


def settings_record(s: EvalSettings) -> dict[str, Any]:
    d = asdict(s)
    d["attacks"], d["pgd_losses"] = list(s.attacks), list(s.pgd_losses)
    return d


# ------------------------------------------------------------------------------------------ the command
@dataclass
class EvalOutcome:
    report: dict[str, Any]
    run: RunInfo | None = None
    written: list[str] = field(default_factory=list)  # paths written
    not_updated: str | None = None  # why a run folder was left as it was
    main: bool = True  # the process that writes and prints (all processes evaluate)
    update_note: str | None = None  # how the evaluation was stored in the run folder's record


def eval_state() -> Any:
    """The processes and device through Accelerate (CUDA when present; ``ACCELERATE_USE_CPU=1`` forces the CPU).
    Under ``accelerate launch`` / ``torchrun`` every process evaluates its share of the examples."""
    import os

    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    # a process-group timeout turns a collective that some process never reaches into a one-line error naming the
    # stage (collectives.stage), not an endless wait
    return PartialState(cpu=use_cpu, timeout=collectives.eval_timeout())


def run_eval(model: str, *, data: str | None = None, split: str | None = None, eps: float | None = None,
             norm: str | None = None, n_examples: int | None = None,
             attacks: tuple[str, ...] | None = None, preset: str = "standard",
             pgd_steps: int | None = None, pgd_restarts: int | None = None, pgd_loss: str | None = None,
             aa_version: str | None = None, curve: bool | None = None, checks: bool | None = None, seed: int = 0,
             batch_size: int = 250, output: str | Path | None = None, plot: str | Path | None = None,
             update_run: bool = True, progress: bool = True,
             suite_options: dict[str, dict[str, Any]] | None = None,
             announce: Callable[[str], None] | None = None) -> EvalOutcome:
    """``robustify eval``: load any model ``finetune`` accepts, evaluate it, write the JSON / PNG, and update a run
    folder when the evaluation measured the run's own threat model on its own data.

    For a run folder, data, split, eps, norm and the number of examples default to the run's own. ``attacks``: the
    suites to run, exactly (None: the preset's full report, :func:`default_attacks`); ``curve`` / ``checks`` False
    drop those suites. ``announce`` (the main process's) receives the plan line before any attack runs: what will
    run and roughly how long it takes.
    """
    from ..data.sources import default_eval_split, is_large
    from ..models import load
    from ..report import plot_eps_curve
    from ..version import __version__

    run = read_run(model)
    data = data or (run.data if run else None)
    if data and data.startswith("local "):  # the record's public name of a local data set no longer found from here
        raise UserError(f"{model!r} was trained on a {data} that is not found from this folder; give it with --data "
                        "(e.g. --data imagefolder:PATH or npz:PATH)")
    if not data:
        raise UserError(f"--data is needed to evaluate {model!r} (only a run folder knows its data set); e.g. "
                        "--data cifar10")
    if eps is None:
        if run is None:
            raise UserError(f"--eps is needed to evaluate {model!r} (only a run folder knows its threat model); "
                            "e.g. --eps 8/255")
        eps = run.eps
    norm = norm or (run.norm if run else "Linf")
    split = split or (run.split if run else default_eval_split(data))  # imagenet-1k: validation (test is unlabelled)
    n_examples = n_examples or (run.n_examples if run else None) or 1000
    if n_examples < 1:
        raise UserError(f"--n-examples {n_examples} is not accepted; use 1 or more")
    attacks = default_attacks()[0] if attacks is None else tuple(attacks)
    settings = EvalSettings.from_preset(
        preset, eps, norm=norm, attacks=attacks, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
        pgd_losses=parse_losses(pgd_loss) if pgd_loss else None, aa_version=aa_version, curve=curve, checks=checks,
        seed=seed, batch_size=batch_size).validate()
    if "autoattack" in settings.attacks:
        from .autoattack import require, settings_for

        require()  # before anything slow: a missing optional package is a one-line error
        settings_for(settings.aa_version)
    state = eval_state()
    device = state.device
    if run is not None and update_run:
        _lock_run(run.path, state)
        run = read_run(model)  # read again under the lock: another command may have changed it meanwhile
    if run is not None:
        runrecord.verify_weights(run.path)  # the record's numbers must belong to these weights
    net = load(model)
    # each process decodes only the block it attacks; the main process prepares the data set first (download,
    # Arrow conversion, or the shards' footers when streamed), the others then read its cache, never racing it
    ex = load_examples(data, split, n_examples, net, progress=progress, state=state, batch_size=settings.batch_size)
    if net.num_classes != ex.num_classes:
        raise UserError(f"model {model!r} has {net.num_classes} outputs but {data!r} has {ex.num_classes} classes; "
                        "evaluate a model on the data set it was trained for")
    if announce is not None and state.is_main_process:
        work = plan_work(settings, ex, net.num_classes, suite_options)
        rates = measure_step(FP32(net).eval().to(device), ex, device, any(w[2] for w in work))
        announce(plan_line(settings, ex, work, rates, state.num_processes))
    report: dict[str, Any] = {"model": model, "robustify_version": __version__}
    suites = [a for a in settings.attacks if a in SUITES]
    settings.attacks = tuple(a for a in settings.attacks if a not in SUITES)
    report |= evaluate(FP32(net), ex, settings, device=device, progress=progress, state=state)
    for name in suites:
        report[name] = SUITES[name](net, ex, (suite_options or {}).get(name, {}), settings, device, state, progress,
                                    run)
    settings.attacks += tuple(suites)
    decoded = [int(ex.y.shape[0])]
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        with collectives.stage("eval: decoded counts"):
            decoded = gather_object(decoded)
    # what each process decoded (its own block only) and how: streamed shards (the large sets) or datasets
    report["data_loading"] = {"streamed": is_large(data), "decoded_per_process": decoded}
    report["settings"] = settings_record(settings)
    outcome = EvalOutcome(report, run, main=state.is_main_process)
    if not state.is_main_process:  # the main process writes the files
        return outcome
    import json
    import tempfile

    files: dict[Path, bytes] = {}
    if output:
        out = Path(output).expanduser()
        files[out] = (json.dumps(report, indent=2) + "\n").encode()
        plot = plot or out.with_name(out.stem + "_eps_curve.png")
    if plot and "eps_curve" in report:
        with tempfile.TemporaryDirectory(prefix="robustify-plot-") as tmp:
            plot_eps_curve(report, Path(tmp) / "plot.png")
            files[Path(plot).expanduser()] = (Path(tmp) / "plot.png").read_bytes()
    if "corruptions" in report:
        from .corruptions import files_for

        if output:
            files |= {out.with_name(k): v for k, v in files_for(report["corruptions"], out.stem).items()}
        if run is not None and update_run and matches_data(run, report) is None:
            files |= {run.path / k: v for k, v in files_for(report["corruptions"]).items()}
    note = None
    if run is not None:
        outcome.not_updated = "--no-update was given" if not update_run else matches_run(run, report)
        if outcome.not_updated is None:
            run_files, note = render_run_update(run, report)
            files |= run_files
    write_outputs(files, run.path if run is not None and note is not None else None)
    outcome.written = [str(p) for p in files]
    outcome.update_note = note  # said only once every file is in place: never "stored" for what was not
    return outcome


def _lock_run(path: Path, state: Any) -> None:
    """The run folder's lock (:mod:`robustify.runlock`), held by the main process until the command ends; every
    process gets the same verdict, so all refuse or none does. Refused at once, never waited for: a second
    evaluation of a folder in use by another command says so instead of reporting results it cannot store."""
    from .. import runlock

    verdict: list[Any] = [None]
    if state.is_main_process:
        try:
            runlock.hold(path)
            verdict = [None]
        except UserError as e:
            verdict = [str(e)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(verdict, from_process=0)
    if verdict[0] is not None:
        raise runlock.RunLocked(verdict[0])
