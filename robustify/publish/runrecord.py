"""The typed record of a run folder: what was trained, from what, on what, and every evaluation of it.

One module defines it, writes it and reads it back (:meth:`RunRecord.files` is the one writer of its two files,
:meth:`RunRecord.read` / :meth:`RunRecord.from_files` the one reader; the files' names and their atomic reading and
writing are ``runfolder.py``'s); everything else renders from it:

- ``metrics.json``: ``before`` / ``after`` (the DESIGN.md contract: ``clean_acc``, ``pgd_acc``, ``pgd``, and the
  standard ``autoattack_acc`` when run), ``history``, ``cost``, plus ``evaluations``: every evaluation ever made of
  the model, each labelled with its attack, budget, examples, precision and resolution;
- ``config.json``'s ``robustness`` block (beside what timm's ``save_for_hf`` writes);
- the model card (:mod:`robustify.publish.card`) and a zoo entry (:func:`robustify.publish.zoo.entry_from_record`).

Update rules (:meth:`RunRecord.add`). An evaluation never overwrites a stronger one: each is stored in
``evaluations``; one with exactly the same settings on the same examples replaces its earlier copy. ``after`` is
always the strongest evaluation, ranked by (number of examples, AutoAttack standard > other AutoAttack versions >
PGD > clean only, fp32 over reduced precision, PGD budget = steps x restarts x losses); a tie keeps the earlier one.
So a 100-example evaluation never replaces 500-example results, a ``--preset quick`` AutoAttack never passes as the
standard one (its number is stored as ``autoattack_quick_acc``, never as ``autoattack_acc``), and a later
``--attack clean,pgd`` never hides an AutoAttack number measured on the same examples: ``after.worst_case`` is the
lowest robust accuracy any evaluation found on those examples.

Every name stored here is public (see :mod:`robustify.publish.public`): the record is built to be published.

Must not: hold a local path or a private name (everything here may be published).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import sections
from ..errors import UserError
from ..fileio import file_sha256
from ..runfolder import CONFIG, METRICS, RECIPE, WEIGHTS, RunFolder
from . import public

SCHEMA = 3  # 1: the inline blocks before this module (read as legacy); 3: the record names its weights' sha256
WEIGHTS_FILE = WEIGHTS  # the weights the record names (the file name is runfolder.py's)
HASH_KEY = "weights_sha256"  # in config.json's robustness block and in metrics.json: the exported weights' sha256
SEAL_KEY = "record_sha256"  # in both: the digest of config.json + metrics.json together (:func:`seal`)
EVAL_KEY = "eval_sha256"  # in metrics.json: the sha256 of the eval.json that robustify eval wrote beside it
RECIPE_KEY = "recipe_sha256"  # in metrics.json: the sha256 of the recipe.yaml exported with the weights
AA_RANK = {"standard": 3}  # any other AutoAttack version ranks 2
AA_KEYS = ("package", "version", "attacks", "per_attack", "settings")  # what a record keeps of an AutoAttack run
PRECISIONS = {"no": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}  # Accelerate's, as a record names them


def precision_name(value: Any, default: str | None = None) -> str:
    """A training or evaluation precision as the record names it: Accelerate's by :data:`PRECISIONS`, one an option
    implements itself (declared to robustify/sections.py) as it is spelled; anything else ``default`` (None: as it
    is). Only an unknown value with a ``default`` asks the registry, so reading a record stays cheap."""
    text = str(value)
    if text in PRECISIONS:
        return PRECISIONS[text]
    if default is None or text in sections.declared("precision"):
        return text
    return default


def eps_text(eps: float) -> str:
    """8/255 for eps values below 1 that are whole multiples of 1/255, else the decimal (an L1 budget of 12 is "12")."""
    if not math.isfinite(eps):
        return str(eps)
    if eps >= 1:
        return f"{eps:g}"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


def resolution_text(input_size: list[int] | tuple[int, ...]) -> str:
    """``32x32`` for (3, 32, 32)."""
    return "x".join(str(int(s)) for s in list(input_size)[-2:]) if input_size else "?"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------- evaluations
@dataclass
class Evaluation:
    """One measurement of the model on a fixed subset: the first ``n_examples`` of ``split``, attacked at
    ``input_size`` in ``precision``. Accuracies are fractions in [0,1]."""

    source: str  # "finetune" (its own before/after evaluation) | "robustify eval"
    norm: str
    eps: float
    split: str
    n_examples: int
    input_size: list[int]  # the resolution the attacks perturb at (C, H, W)
    precision: str  # fp32 | bf16 | fp16
    clean_acc: float
    preset: str | None = None  # robustify eval's preset (standard | quick)
    data: str = ""  # public data set name
    sha256_16: str | None = None  # hash of the decoded subset, when known
    fgsm_acc: float | None = None
    pgd_acc: float | None = None
    pgd: dict[str, Any] | None = None  # norm, eps, steps, restarts, loss, alpha
    autoattack_acc: float | None = None  # of the version in ``autoattack["version"]``
    autoattack: dict[str, Any] | None = None  # version, package, attacks, per_attack, settings
    robust_acc: float | None = None  # robust to every attack of this evaluation, per example
    checks: dict[str, Any] | None = None  # gradient-masking checks: passed, verdict
    before: dict[str, Any] | None = None  # the base model on the same examples and attacks (finetune only)
    evaluated_at: str = ""
    # beyond the threat model (:func:`beyond`): the other norms at their standard radii, each marked unseen
    # (robustify.evaluate.unseen), and common corruptions (robustify.evaluate.corruptions: per corruption x severity
    # accuracy, mean accuracy, mCE); ``before`` holds the base model's under the same keys
    unseen: list[dict[str, Any]] | None = None
    corruptions: dict[str, Any] | None = None

    # ---- what it is
    @property
    def aa_version(self) -> str | None:
        if self.autoattack_acc is None:
            return None
        return str((self.autoattack or {}).get("version") or "standard")

    @property
    def pgd_text(self) -> str | None:
        """``PGD-10 x1 restart (ce), step 0.025``."""
        if self.pgd_acc is None:
            return None
        p = self.pgd or {}
        restarts = p.get("restarts", 1)
        text = f"PGD-{p.get('steps', '?')} x{restarts} restart{'s' if restarts != 1 else ''} ({p.get('loss', 'ce')})"
        alpha = p.get("alpha")
        return text + (f", step {alpha:.3g}" if isinstance(alpha, (int, float)) else "")

    @property
    def aa_text(self) -> str | None:
        """``AutoAttack (standard)`` or ``AutoAttack (quick version: reduced budgets, not comparable with
        RobustBench)``."""
        version = self.aa_version
        if version is None:
            return None
        if version == "standard":
            return "AutoAttack (standard)"
        return f"AutoAttack ({version} version: reduced budgets, not comparable with RobustBench)"

    @property
    def setup_text(self) -> str:
        """Which examples, at what precision and resolution."""
        sub = f", subset sha256 {self.sha256_16}" if self.sha256_16 else ""
        data = f" of {self.data}" if self.data else ""
        return (f"first {self.n_examples} examples of the `{self.split}` split{data}{sub}; {self.precision}; "
                f"attacked at {resolution_text(self.input_size)} ({self.norm}, eps={eps_text(self.eps)})")

    @property
    def label(self) -> str:
        """A one-line name: who measured, which attacks, on how many examples."""
        who = "finetune's evaluation" if self.source == "finetune" else (
            f"robustify eval --preset {self.preset}" if self.preset else "robustify eval")
        attacks = []
        if self.pgd_acc is not None:
            p = self.pgd or {}
            attacks.append(f"PGD-{p.get('steps', '?')} x{p.get('restarts', 1)} ({p.get('loss', 'ce')})")
        if self.aa_version:
            attacks.append(f"AutoAttack {self.aa_version}")
        return f"{who}: {' + '.join(attacks) or 'clean only'}, n={self.n_examples}, {self.precision}, " \
               f"{resolution_text(self.input_size)}"

    def strength(self) -> tuple[int, int, int, int]:
        """Larger is stronger: examples, attack family, full precision, PGD budget."""
        if self.autoattack_acc is not None:
            family = AA_RANK.get(self.aa_version or "", 2)
        else:
            family = 1 if self.pgd_acc is not None else 0
        p = self.pgd or {}
        losses = len(str(p.get("loss", "ce")).split("+"))
        budget = int(p.get("steps", 0) or 0) * int(p.get("restarts", 1) or 1) * losses if self.pgd_acc is not None \
            else 0
        return self.n_examples, family, int(self.precision == "fp32"), budget

    def same_examples(self, other: Evaluation) -> bool:
        if (self.split, self.n_examples, list(self.input_size)) != (other.split, other.n_examples,
                                                                      list(other.input_size)):
            return False
        return self.sha256_16 is None or other.sha256_16 is None or self.sha256_16 == other.sha256_16

    def same_settings(self, other: Evaluation) -> bool:
        """The same attacks with the same budgets on the same examples (a re-run)."""
        def key(e: Evaluation) -> tuple:
            return (e.source, e.preset, e.precision, e.fgsm_acc is not None, e.pgd_acc is not None,
                    _settings_key(e.pgd), e.aa_version, _settings_key((e.autoattack or {}).get("settings")),
                    tuple((u.get("norm"), u.get("eps"), u.get("label")) for u in e.unseen or []),
                    e.corruptions is not None)
        return self.same_examples(other) and key(self) == key(other)

    def robust_numbers(self) -> list[tuple[float, str]]:
        """Every robust accuracy this evaluation measured, with the attack behind it."""
        out = []
        if self.robust_acc is not None:
            out.append((self.robust_acc, "worst case per example over this evaluation's attacks"))
        if self.aa_text and self.autoattack_acc is not None:
            out.append((self.autoattack_acc, self.aa_text))
        if self.pgd_text and self.pgd_acc is not None:
            out.append((self.pgd_acc, self.pgd_text))
        if self.fgsm_acc is not None:
            out.append((self.fgsm_acc, "FGSM"))
        return out

    # ---- the stored form (the metrics.json contract keys, flat)
    def block(self) -> dict[str, Any]:
        """This evaluation as metrics.json stores it: ``clean_acc``, ``pgd_acc``, ``pgd``; the AutoAttack number
        as ``autoattack_acc`` only for the standard version (``autoattack_<version>_acc`` otherwise)."""
        d: dict[str, Any] = {"label": self.label, "source": self.source}
        if self.preset:
            d["preset"] = self.preset
        d |= {"clean_acc": self.clean_acc, "n_examples": self.n_examples, "split": self.split,
              "precision": self.precision, "input_size": list(self.input_size),
              "subset": {"data": self.data, "split": self.split, "first_n": self.n_examples,
                         "input_size": list(self.input_size), "sha256_16": self.sha256_16},
              "threat_model": {"norm": self.norm, "eps": self.eps}}
        if self.fgsm_acc is not None:
            d["fgsm_acc"] = self.fgsm_acc
        if self.pgd_acc is not None:
            d["pgd_acc"] = self.pgd_acc
            d["pgd"] = dict(self.pgd or {})
        if self.autoattack_acc is not None:
            version = self.aa_version
            d["autoattack_acc" if version == "standard" else f"autoattack_{version}_acc"] = self.autoattack_acc
            d["autoattack_version"] = version
            d["autoattack"] = dict(self.autoattack or {})
        if self.robust_acc is not None:
            d["robust_acc"] = self.robust_acc
        if self.checks is not None:
            d["checks"] = self.checks
        if self.unseen is not None:
            d["unseen"] = [dict(u) for u in self.unseen]
        if self.corruptions is not None:
            d["corruptions"] = corruption_summary(self.corruptions)
        if self.before is not None:
            d["before"] = self.before
        d["evaluated_at"] = self.evaluated_at
        return d

    @classmethod
    def from_block(cls, d: Mapping[str, Any], *, norm: str, eps: float, input_size: list[int], precision: str,
                   data: str, source: str | None = None) -> Evaluation:
        """Read a stored block (this module's, or an older run folder's ``after``); missing facts come from the
        run (its threat model, resolution and precision)."""
        aa = d.get("autoattack") if isinstance(d.get("autoattack"), Mapping) else None
        version = d.get("autoattack_version") or (aa or {}).get("version")
        aa_acc = d.get("autoattack_acc")
        if aa_acc is None:
            key = next((k for k in d if k.startswith("autoattack_") and k.endswith("_acc")), None)
            if key:
                aa_acc, version = d[key], version or key[len("autoattack_"):-len("_acc")]
        if aa_acc is not None:
            aa = {k: v for k, v in (aa or {}).items() if k in AA_KEYS} | {"version": version or "standard"}
        sub = d.get("subset") if isinstance(d.get("subset"), Mapping) else {}
        tm = d.get("threat_model") if isinstance(d.get("threat_model"), Mapping) else {}
        pgd = d.get("pgd") if isinstance(d.get("pgd"), Mapping) else None
        by = source or d.get("source") or ("robustify eval" if d.get("evaluated_by") == "robustify eval"
                                          else "finetune")
        return cls(
            source=by, norm=str(tm.get("norm") or (pgd or {}).get("norm") or norm),
            eps=float(tm.get("eps") or (pgd or {}).get("eps") or eps),
            split=str(d.get("split") or sub.get("split") or "test"),
            n_examples=int(d.get("n_examples") or sub.get("first_n") or 0),
            input_size=list(d.get("input_size") or sub.get("input_size") or input_size),
            precision=precision_name(d.get("precision") or precision),
            clean_acc=float(d["clean_acc"]), preset=d.get("preset"),
            data=public.dataset_name(str(sub.get("data") or data))[0], sha256_16=sub.get("sha256_16"),
            fgsm_acc=d.get("fgsm_acc"), pgd_acc=d.get("pgd_acc"), pgd=dict(pgd) if pgd is not None else None,
            autoattack_acc=aa_acc, autoattack=aa, robust_acc=d.get("robust_acc"),
            checks=d.get("checks"), before=d.get("before"),
            evaluated_at=str(d.get("evaluated_at") or ""), unseen=unseen_entries(d.get("unseen")),
            corruptions=dict(d["corruptions"]) if isinstance(d.get("corruptions"), Mapping) else None)

    @classmethod
    def from_report(cls, report: Mapping[str, Any], precision: str = "fp32") -> Evaluation:
        """An evaluation report of ``robustify eval`` (:func:`robustify.evaluate.report.evaluate`)."""
        sub = report["subset"]
        aa = report.get("autoattack")
        checks = report.get("checks")
        return cls(
            source="robustify eval", preset=report.get("preset"), norm=report["threat_model"]["norm"],
            eps=float(report["threat_model"]["eps"]), split=sub["split"], n_examples=int(report["n_examples"]),
            input_size=list(sub.get("input_size") or []), precision=report.get("precision", precision),
            clean_acc=report["clean_acc"], data=public.dataset_name(str(sub.get("data", "")))[0],
            sha256_16=sub.get("sha256_16"), fgsm_acc=report.get("fgsm_acc"), pgd_acc=report.get("pgd_acc"),
            pgd={k: v for k, v in report["pgd"].items() if k in ("norm", "eps", "steps", "restarts", "loss", "alpha")}
            if "pgd" in report else None,
            autoattack_acc=report.get("autoattack_acc"),
            autoattack={k: aa[k] for k in AA_KEYS if k in aa}
            if aa else None,
            robust_acc=report.get("robust_acc"),
            checks={"passed": checks["passed"], "verdict": checks["verdict"]} if checks else None,
            evaluated_at=now(), unseen=unseen_entries(report.get("unseen")),
            corruptions=corruption_summary(report.get("corruptions")))


UNSEEN_KEYS = ("norm", "eps", "threat", "seen", "radii", "attack", "label", "settings", "acc", "n_examples")


def unseen_entries(value: Any) -> list[dict[str, Any]] | None:
    """The unseen threats of a report or a stored block, as the record keeps them (None: not measured)."""
    if not isinstance(value, list):
        return None
    return [{k: u[k] for k in UNSEEN_KEYS if k in u} | {"seen": False} for u in value if isinstance(u, Mapping)]


def corruption_summary(value: Any) -> dict[str, Any] | None:
    """The corruptions result as the record keeps it (None: not measured). The corruptions suite
    (robustify/evaluate/corruptions/) owns its fields (per corruption x severity ``accuracy``,
    ``mean_corruption_acc``, ``mce`` / ``relative_mce`` in percent against its ``baseline``, the ``source``); the
    record keeps them, less what describes the machine rather than the model (seconds, workers)."""
    if not isinstance(value, Mapping):
        return None
    return {k: v for k, v in value.items() if k not in ("seconds", "workers", "processes")}


def beyond(d: Mapping[str, Any] | Evaluation | None) -> dict[str, Any]:
    """One model's measurements beyond its threat model, from an evaluation or a stored ``before`` block:
    ``{"unseen": [...], "corruptions": {...}}``, each key only when measured. The generic per-model block the
    record, the card and ``robustify eval`` share: a new kind of measurement is one more key here."""
    if d is None:
        return {}
    get = (lambda k: getattr(d, k)) if isinstance(d, Evaluation) else d.get
    out: dict[str, Any] = {}
    if get("unseen"):
        out["unseen"] = get("unseen")
    if get("corruptions"):
        out["corruptions"] = get("corruptions")
    return out


def before_after_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """The trade a fine-tuning made, one row per measurement, the base model (``before``) beside the robust one
    (``after``) on the same examples with the same attacks: clean, the seen threat model, each unseen threat model,
    then the corruptions suite's rows. A row's ``before`` is None where the base model was not measured."""
    b = ev.before or {}
    threat = f"{ev.norm} eps={eps_text(ev.eps)}"
    rows: list[dict[str, Any]] = [{"what": "clean", "before": b.get("clean_acc"), "after": ev.clean_acc}]
    if ev.aa_version is not None:
        rows.append({"what": "seen", "threat": threat, "attack": ev.aa_text, "before": b.get("autoattack_acc"),
                     "after": ev.autoattack_acc})
    if ev.pgd_acc is not None:
        rows.append({"what": "seen", "threat": threat, "attack": ev.pgd_text, "before": b.get("pgd_acc"),
                     "after": ev.pgd_acc})
    return rows + unseen_rows(ev) + corruption_rows(ev.corruptions, b.get("corruptions"))


def unseen_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """The before/after rows of ``ev``'s unseen threats (``before`` None where the base model was not measured)."""
    base = {(u.get("norm"), u.get("eps")): u for u in (ev.before or {}).get("unseen") or []}
    rows = []
    for u in ev.unseen or []:
        was = base.get((u.get("norm"), u.get("eps")), {})
        rows.append({"what": "unseen", "threat": u.get("threat") or f"{u['norm']} eps={eps_text(u['eps'])}",
                     "attack": u.get("label"), "before": was.get("acc"), "after": u.get("acc")})
    return rows


# ---- corruptions: the corruptions suite (robustify/evaluate/corruptions/) owns these keys and may refine the rows
def corruption_rows(after: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The before/after rows of the corruptions result: mean corruption accuracy and mCE, when measured. The base
    model's numbers come from its own result (``before``: finetune measured both) or else from the result's
    ``baseline`` (``robustify eval RUN --attack corruptions`` evaluates the run's base model beside it); mCE is
    relative to that baseline, so the baseline's own is 100% by definition."""
    if not after:
        return []
    base = dict(before or {})
    baseline = after.get("baseline") if isinstance(after.get("baseline"), Mapping) else None
    if not base and baseline:
        base = {"mean_corruption_acc": baseline.get("mean_corruption_acc"), "mce": 100.0, "relative_mce": 100.0}
    source = str(after.get("published_set") or after.get("source") or "common corruptions")
    n = len(after.get("corruptions") or []) or 15
    levels = sorted(int(v) for v in after.get("severities") or [1, 2, 3, 4, 5])
    sev = f"{levels[0]}-{levels[-1]}" if levels == list(range(levels[0], levels[-1] + 1)) and len(levels) > 1 else \
        ",".join(str(v) for v in levels)
    rows = []
    if after.get("mean_corruption_acc") is not None:
        rows.append({"what": "corruptions", "threat": f"common corruptions ({n} types, severities {sev}), mean "
                     "accuracy", "attack": source, "before": base.get("mean_corruption_acc"),
                     "after": after.get("mean_corruption_acc")})
    for key, name in (("mce", "mCE"), ("relative_mce", "relative mCE")):
        if after.get(key) is not None:
            against = (baseline or {}).get("model") or "the baseline"
            rows.append({"what": "corruptions", "threat": f"{name} (relative to {against}; lower is better)",
                         "attack": source, "before": base.get(key), "after": after.get(key), "unit": "percent"})
    return rows
# ---- end of corruptions


def _settings_key(d: Any) -> tuple:
    if not isinstance(d, Mapping):
        return ()
    return tuple(sorted((k, str(v)) for k, v in d.items() if k not in ("seconds", "per_attack", "per_loss_acc")))


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Training:
    """What was trained, from what, on what, and how (public names only)."""

    name: str
    architecture: str
    base_model: str  # Hub id, timm name, "quickstart", or the architecture of a local model
    base_model_hub_id: str | None
    pretrained: bool  # started from pretrained weights (RobustBench counts that as additional data)
    dataset: str  # alias, Hub id, or a neutral name for a local data set
    dataset_hub_id: str | None
    train_split: str
    eval_split: str
    norm: str
    eps: float
    input_size: list[int]  # the model's input size: the resolution attacks perturb at
    mean: list[float]
    std: list[float]
    method: dict[str, Any]  # name and its arguments
    bn_mode: str | None  # BatchNorm mode while training attacks were generated (None: natural training)
    schedule: dict[str, Any]  # name, lr
    optimizer: str
    batch_size: int
    epochs: int
    selection: str = "best-robust"  # best-robust | last
    selected_epoch: int | None = None
    stopped: str | None = None
    mixed_precision: str = "fp32"  # training precision
    weights: str = "raw"  # which weights were exported: "raw", or an option's name for its own (exported_as)
    probe: dict[str, Any] | None = None  # how the probe examples were chosen (held out of training or not)
    options: dict[str, Any] | None = None  # options in use (each option's entries, few-shot)
    weights_sha256: str | None = None  # sha256 of the exported model.safetensors (as ``weights`` says)


@dataclass
class RunRecord:
    """A run folder's record: the training and every evaluation, plus history and cost."""

    training: Training
    evaluations: list[Evaluation] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    eval_sha256: str | None = None  # the eval.json written with this record (robustify eval), None: none belongs to it
    recipe_sha256: str | None = None  # the recipe.yaml exported with the weights

    # ---- evaluations
    def strongest(self) -> Evaluation:
        if not self.evaluations:
            raise UserError(f"run {self.training.name!r} has no evaluation results")
        best = self.evaluations[0]
        for e in self.evaluations[1:]:
            if e.strength() > best.strength():
                best = e
        return best

    def finetune_evaluation(self) -> Evaluation | None:
        return next((e for e in self.evaluations if e.source == "finetune"), None)

    def add(self, ev: Evaluation) -> str:
        """Store ``ev`` by the update rules (module docstring); returns what happened, for the user."""
        mismatch = self.mismatch(ev)
        if mismatch:
            raise UserError(f"evaluation not stored in run {self.training.name!r}: {mismatch}")
        previous = self.strongest() if self.evaluations else None
        same = [i for i, e in enumerate(self.evaluations) if e.same_settings(ev)]
        if same:
            self.evaluations[same[0]] = ev
            verb = "replaced the earlier evaluation with the same settings"
        else:
            self.evaluations.append(ev)
            verb = "stored beside the earlier evaluations"
        strongest = self.strongest()
        if strongest is ev:
            return f"{verb}; it is now the reported (strongest) evaluation"
        return f"{verb}; the reported evaluation is still the stronger {strongest.label}" if previous else verb

    def mismatch(self, ev: Evaluation) -> str | None:
        """None when ``ev`` measured this run's threat model on its eval split; else why not."""
        t = self.training
        if ev.split != t.eval_split:
            return f"evaluated on split {ev.split!r}, but the run is evaluated on {t.eval_split!r}"
        if ev.norm != t.norm or not math.isclose(ev.eps, t.eps, rel_tol=1e-6, abs_tol=1e-9):
            return f"evaluated at {ev.norm} eps={ev.eps:.4g}, but the model is for {t.norm} eps={t.eps:.4g}"
        return None

    def worst_case(self, ev: Evaluation | None = None) -> tuple[float, str] | None:
        """The lowest robust accuracy any evaluation found on ``ev``'s examples (default: the strongest's), with
        what found it. An upper bound on the true per-example worst case."""
        ev = ev or self.strongest()
        numbers = [(acc, f"{e.label}: {what}") for e in self.evaluations if e.same_examples(ev)
                   for acc, what in e.robust_numbers()]
        return min(numbers, key=lambda t: t[0]) if numbers else None

    # ---- rendered forms
    def after(self) -> dict[str, Any]:
        s = self.strongest()
        d = s.block()
        d.pop("before", None)
        worst = self.worst_case(s)
        if worst is not None:
            d["worst_case"] = {"acc": worst[0], "by": worst[1]}
        return d

    def before(self) -> dict[str, Any]:
        ft = self.finetune_evaluation()
        return dict(ft.before) if ft is not None and ft.before else {}

    def before_after(self) -> dict[str, Any] | None:
        """The base model beside the robust one (:func:`before_after_rows`), from finetune's evaluation, which
        measured both on the same examples, when it measured beyond the threat model (unseen threats,
        corruptions); None otherwise (clean and seen are metrics.json's ``before``/``after`` already, and a record
        without more stays byte for byte what earlier versions wrote)."""
        ft = self.finetune_evaluation()
        if ft is None or not ft.before:
            return None
        rows = before_after_rows(ft)
        for key, more in (("unseen", unseen_rows), ("corruptions", lambda e: corruption_rows(
                e.corruptions, (e.before or {}).get("corruptions")))):
            other = self.beyond_source(key)
            if not beyond(ft).get(key) and other is not None:  # measured later (robustify eval RUN), on its examples
                rows += [r | {"evaluation": other.label} for r in more(other)]
        if not any(r["what"] in ("unseen", "corruptions") for r in rows):  # clean and seen alone: as before
            return None
        return {"base_model": self.training.base_model, "evaluation": ft.label, "n_examples": ft.n_examples,
                "rows": rows}

    def beyond_source(self, key: str) -> Evaluation | None:
        """The evaluation whose ``key`` (unseen, corruptions: :func:`beyond`) the record reports: the strongest's
        when it has one, then finetune's (which measured the base model too), else the latest that measured it."""
        if not self.evaluations:
            return None
        first = [self.strongest(), self.finetune_evaluation()]
        for e in [e for e in first if e is not None] + list(reversed(self.evaluations)):
            if beyond(e).get(key):
                return e
        return None

    def metrics(self) -> dict[str, Any]:
        """metrics.json."""
        t = self.training
        trade = self.before_after()
        return {"schema": SCHEMA, "before": self.before(), "after": self.after(),
                **({"before_after": trade} if trade else {}), "history": self.history,
                "cost": self.cost, "selected_epoch": t.selected_epoch, "selection": t.selection,
                "stopped": t.stopped, "weights": t.weights, "probe": t.probe,
                "evaluations": [e.block() for e in self.evaluations], HASH_KEY: t.weights_sha256,
                EVAL_KEY: self.eval_sha256, RECIPE_KEY: self.recipe_sha256}

    def results(self) -> dict[str, Any]:
        """The strongest evaluation in short (config.json's ``robustness.results``)."""
        s = self.strongest()
        out: dict[str, Any] = {"clean_acc": s.clean_acc}
        if s.pgd_acc is not None:
            out["pgd_acc"] = s.pgd_acc
        if s.autoattack_acc is not None:
            out["autoattack_acc" if s.aa_version == "standard" else f"autoattack_{s.aa_version}_acc"] = \
                s.autoattack_acc
        out |= {"evaluation": s.label, "n_examples": s.n_examples, "precision": s.precision,
                "input_size": list(s.input_size)}
        return out

    def robustness(self) -> dict[str, Any]:
        """config.json's ``robustness`` block."""
        t = self.training
        return {
            "schema": SCHEMA, "name": t.name,
            "threat_model": {"norm": t.norm, "eps": t.eps}, "resolution": resolution_text(t.input_size),
            "method": dict(t.method), "bn_mode": t.bn_mode, "schedule": dict(t.schedule),
            "base_model": t.base_model, "base_model_hub_id": t.base_model_hub_id, "pretrained": t.pretrained,
            "dataset": t.dataset, "dataset_hub_id": t.dataset_hub_id, "train_split": t.train_split,
            "eval_split": t.eval_split, "architecture": t.architecture, "input_size": list(t.input_size),
            "mean": list(t.mean), "std": list(t.std), "epochs": t.epochs, "batch_size": t.batch_size,
            "weights": t.weights,
            "optimizer": t.optimizer, "mixed_precision": t.mixed_precision, "selection": t.selection,
            "selected_epoch": t.selected_epoch, "results": self.results(),
            **({"options": dict(t.options)} if t.options else {}), HASH_KEY: t.weights_sha256,
        }

    # ---- files
    def files(self, config: Mapping[str, Any]) -> dict[str, bytes]:
        """config.json (``config``'s fields, timm's, with this record's ``robustness`` block) and metrics.json,
        sealed together (:func:`seal`): the one writer of the record, whether the files go into a run folder (export,
        ``robustify eval``, :meth:`write`) or into a pushed repo."""
        import copy

        config, metrics = copy.deepcopy(dict(config)), self.metrics()
        config["robustness"] = self.robustness()
        seal(config, metrics)
        return {CONFIG: json_bytes(config), METRICS: json_bytes(metrics)}

    def write(self, run_dir: Path) -> None:
        """metrics.json, and the ``robustness`` block of an existing config.json (timm's fields are kept); both
        replaced together. Without a config.json (a folder being assembled) only metrics.json is written."""
        folder = RunFolder(run_dir)
        if folder.has(CONFIG):
            folder.write(self.files(folder.read_json(CONFIG)))
        else:
            folder.write({METRICS: json_bytes(self.metrics())})

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        """The record of ``run_dir`` (config.json's robustness block + metrics.json), older folders included."""
        folder = RunFolder(run_dir)
        config, metrics = folder.read_record_files()
        return cls.from_files(config, metrics, folder.path.name, folder.what)

    @classmethod
    def from_files(cls, config: Any, metrics: Any, name: str, what: str,
                   need: tuple[str, ...] = ("threat_model",)) -> RunRecord:
        """The record in a run folder's config.json and metrics.json as read (:meth:`RunFolder.read_record_files`);
        a config.json without a ``robustness`` block holding ``need`` (a plain timm folder) is one line."""
        robustness = config.get("robustness") if isinstance(config, dict) else None
        if not isinstance(robustness, dict) or not set(need) <= set(robustness) or not isinstance(metrics, dict):
            held = " (threat model, method, data set)" if len(need) > 1 else ""
            raise UserError(f"{what}: {CONFIG} has no 'robustness' block{held}; was it written by 'robustify "
                            "finetune'?")
        return cls.from_dicts(robustness, metrics, name=name)

    @classmethod
    def from_dicts(cls, robustness: Mapping[str, Any], metrics: Mapping[str, Any], name: str = "run") -> RunRecord:
        """Parse config.json's ``robustness`` and metrics.json (either schema). Local names of older folders are
        made public here, so nothing read from an old folder can leak."""
        r = robustness
        try:
            tm = r["threat_model"]
            method = dict(r.get("method") or {"name": "?"})
            input_size = list(r.get("input_size") or tm.get("input_size") or [3, 224, 224])
            arch = str(r.get("architecture") or "?")
            base, base_hub = r.get("base_model", arch), r.get("base_model_hub_id")
            if "base_model_hub_id" not in r:  # schema 1: a raw spec, possibly a local path
                base, base_hub = public.model_name(str(base), architecture=arch)
            data, data_hub = public.dataset_name(str(r.get("dataset", "")))
            cost = dict(metrics.get("cost") or {})
            precision = precision_name(r.get("mixed_precision") or (cost.get("hardware") or {}).get(
                "mixed_precision") or "no", "fp32")
            training = Training(
                name=str(r.get("name") or name), architecture=arch, base_model=str(base),
                base_model_hub_id=base_hub,
                pretrained=bool(r.get("pretrained", True)), dataset=data,
                dataset_hub_id=r.get("dataset_hub_id", data_hub), train_split=str(r.get("train_split", "train")),
                eval_split=str(r.get("eval_split", "test")), norm=str(tm["norm"]), eps=float(tm["eps"]),
                input_size=input_size, mean=list(r.get("mean") or []), std=list(r.get("std") or []),
                method=method, bn_mode=r.get("bn_mode", method.get("bn_mode")),
                schedule=dict(r.get("schedule") or {"name": "?"}), optimizer=str(r.get("optimizer", "?")),
                batch_size=int(r.get("batch_size") or 0), epochs=int(r.get("epochs") or cost.get("epochs") or 0),
                selection=str(metrics.get("selection") or r.get("selection") or "best-robust"),
                selected_epoch=metrics.get("selected_epoch", r.get("selected_epoch")),
                stopped=metrics.get("stopped"), mixed_precision=precision,
                weights=str(metrics.get("weights") or r.get("weights") or "raw"), probe=metrics.get("probe"),
                options=dict(r["options"]) if isinstance(r.get("options"), Mapping) else None,
                weights_sha256=metrics.get(HASH_KEY) or r.get(HASH_KEY))
            common = dict(norm=training.norm, eps=training.eps, input_size=input_size, precision=precision,
                          data=training.dataset)
            if isinstance(metrics.get("evaluations"), list):
                evaluations = [Evaluation.from_block(b, **common) for b in metrics["evaluations"]]
            else:  # schema 1: finetune's before/after, or "after" as robustify eval rewrote it
                after = metrics.get("after")
                evaluations = []
                if isinstance(after, Mapping) and "clean_acc" in after:
                    ev = Evaluation.from_block(after, **common)
                    if ev.source == "finetune" and metrics.get("before"):
                        ev.before = dict(metrics["before"])
                    evaluations.append(ev)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"run {name!r}: its config.json/metrics.json do not describe a run ({e!r})") from None
        return cls(training, evaluations, list(metrics.get("history") or []), cost,
                   eval_sha256=metrics.get(EVAL_KEY) if isinstance(metrics.get(EVAL_KEY), str) else None,
                   recipe_sha256=metrics.get(RECIPE_KEY) if isinstance(metrics.get(RECIPE_KEY), str) else None)


def json_bytes(obj: Any) -> bytes:
    """A record file's bytes: indented JSON and a final newline (every JSON file of a run folder has this form)."""
    import json

    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------- binding record and weights
def _schema(d: Any) -> int:
    value = d.get("schema") if isinstance(d, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def recorded_weights_hash(config: Any, metrics: Any, what: str, run_dir: Path | str = "RUN_DIR") -> str | None:
    """The sha256 the record says its weights have: config.json's robustness block and metrics.json must agree.
    None only for a folder written before records carried it (schema < 3 in both files): nothing to check."""
    robustness = config.get("robustness") if isinstance(config, Mapping) else None
    a = robustness.get(HASH_KEY) if isinstance(robustness, Mapping) else None
    b = metrics.get(HASH_KEY) if isinstance(metrics, Mapping) else None
    if a is None and b is None:
        if max(_schema(robustness), _schema(metrics)) >= 3:
            raise UserError(f"{what}: its record (config.json, metrics.json) names no weights hash, so nothing says "
                            f"which weights its results belong to; restore the run's own files, or re-export them "
                            f"with: robustify finetune --output-dir {run_dir} --resume")
        return None
    if a != b or not isinstance(a, str):
        raise UserError(f"{what}: config.json and metrics.json describe different weights (sha256 {str(a)[:12]} vs "
                        f"{str(b)[:12]}): one of them belongs to another run; restore the run's own files, or "
                        f"re-export them with: robustify finetune --output-dir {run_dir} --resume")
    return a


def record_digest(config: Any, metrics: Any) -> str:
    """One digest of config.json and metrics.json together (each without the digest itself): any change to either
    after robustify wrote them (a flipped digit in a result, an eps, a mean) no longer matches."""
    import hashlib
    import json

    c = json.loads(json.dumps(config))
    if isinstance(c.get("robustness"), dict):
        c["robustness"].pop(SEAL_KEY, None)
    m = {k: v for k, v in dict(metrics).items() if k != SEAL_KEY}
    return hashlib.sha256(json.dumps([c, m], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the record digest into both files' contents (in place), right before they are written."""
    digest = record_digest(config, metrics)
    config["robustness"][SEAL_KEY] = digest
    metrics[SEAL_KEY] = digest


def check_seal(config: Any, metrics: Any, what: str, fix: str) -> None:
    """Refuse a record whose config.json or metrics.json changed after robustify wrote them (a folder from before
    records were sealed, schema < 3, is not checked)."""
    robustness = config.get("robustness") if isinstance(config, Mapping) else None
    a = robustness.get(SEAL_KEY) if isinstance(robustness, Mapping) else None
    b = metrics.get(SEAL_KEY) if isinstance(metrics, Mapping) else None
    if a is None and b is None and max(_schema(robustness), _schema(metrics)) < 3:
        return
    if a is None or a != b or a != record_digest(config, metrics):
        raise UserError(f"{what}: config.json or metrics.json was changed after robustify wrote them (their record "
                        f"digest does not match), so its results cannot be trusted to describe its weights; {fix}")


def verify_weights(run_dir: Path, config: Any = None, metrics: Any = None, what: str | None = None,
                   fix: str | None = None) -> str | None:
    """Refuse (one line) a run folder whose ``model.safetensors`` is not the file its record describes: weights
    copied in from another run, or damaged on disk. Returns the verified sha256 (None for a pre-schema-3 folder)."""
    folder = RunFolder(run_dir, what)
    run_dir, what = folder.path, folder.what
    config = folder.read_json(CONFIG) if config is None else config
    metrics = folder.read_json(METRICS) if metrics is None else metrics
    expected = recorded_weights_hash(config, metrics, what, run_dir)
    if expected is None:
        return None
    check_seal(config, metrics, what, fix or f"restore the run's own files (robustify finetune --output-dir {run_dir} "
               "--resume re-exports them from the last checkpoint)")
    recipe = metrics.get(RECIPE_KEY) if isinstance(metrics, Mapping) else None
    restore = f"restore the run's own {RECIPE}"
    if isinstance(recipe, str) and (not folder.has(RECIPE) or file_sha256(folder / RECIPE) != recipe):
        raise UserError(f"{what}: {RECIPE} is missing or not the recipe the weights were trained with (its sha256 "
                        f"differs from the record's); {fix or restore}")
    path = run_dir / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{what} has no {WEIGHTS_FILE}; restore it, or re-export it with: robustify finetune "
                        f"--output-dir {run_dir} --resume")
    actual = file_sha256(path)
    if actual != expected:
        fix = fix or (f"restore the run's own file (robustify finetune --output-dir {run_dir} --resume re-exports it "
                      "from the last checkpoint), or evaluate these weights as a new model")
        raise UserError(f"{what}: {WEIGHTS_FILE} is not the model its record describes (sha256 {actual[:12]}, the "
                        f"record's results belong to {expected[:12]}): the weights were replaced or damaged; {fix}")
    return actual


# ---------------------------------------------------------------------------------------------- builders
def _finetune_evaluation(block: Mapping[str, Any], before: Mapping[str, Any] | None, training: Training,
                         precision: str, data_spec: str) -> Evaluation:
    d = dict(block)
    sub = dict(d.get("subset") or {})
    sub.setdefault("data", data_spec)
    sub.setdefault("input_size", list(training.input_size))
    d["subset"] = sub
    ev = Evaluation.from_block(d, norm=training.norm, eps=training.eps, input_size=list(training.input_size),
                               precision=d.get("precision") or precision, data=training.dataset, source="finetune")
    ev.evaluated_at = ev.evaluated_at or now()
    if before:
        keep = ("clean_acc", "pgd_acc", "pgd", "autoattack_acc", "autoattack_version", "n_examples", "split",
                "precision")
        ev.before = {k: v for k, v in before.items() if k in keep}
        if before.get("unseen"):
            ev.before["unseen"] = unseen_entries(before["unseen"])
        if isinstance(before.get("corruptions"), Mapping):
            ev.before["corruptions"] = corruption_summary(before["corruptions"])
    return ev


def from_finetune(cfg: Any, model: Any, *, name: str, method: Mapping[str, Any], before: Mapping[str, Any],
                  after: Mapping[str, Any], history: list[dict[str, Any]], cost: Mapping[str, Any],
                  selected_epoch: int | None, stopped: str | None, weights: str = "raw",
                  probe: Mapping[str, Any] | None = None, lr: float | None = None) -> RunRecord:
    """The record ``finetune`` writes: ``cfg`` (FinetuneConfig), ``model`` (the exported RobustModel), the
    ``method.describe()`` dict, the before/after evaluation dicts, history, cost and which epoch was exported."""
    backbone = model.backbone
    pcfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
    arch = str(pcfg.get("architecture") or type(backbone).__name__)
    base, base_hub = public.model_name(cfg.model.name, pcfg, arch, pretrained=cfg.model.pretrained,
                                       checkpoint=cfg.model.checkpoint)
    data, data_hub = public.dataset_name(cfg.data.name)
    precision = precision_name(cfg.train.mixed_precision)
    bn_mode = cfg.method.bn_mode if cfg.method.name != "natural" else None
    training = Training(
        name=name, architecture=arch, base_model=base, base_model_hub_id=base_hub,
        pretrained=bool(cfg.model.pretrained or cfg.model.checkpoint), dataset=data, dataset_hub_id=data_hub,
        train_split=cfg.data.train_split, eval_split=cfg.data.eval_split, norm=cfg.threat.norm,
        eps=float(cfg.threat.eps), input_size=list(model.input_size),
        mean=[float(v) for v in model.normalize.mean.flatten().tolist()],
        std=[float(v) for v in model.normalize.std.flatten().tolist()],
        method={k: v for k, v in dict(method).items() if k != "bn_mode"}, bn_mode=bn_mode,
        schedule={"name": cfg.schedule.name, "lr": cfg.schedule.lr if lr is None else lr}, optimizer=cfg.optim.name,
        batch_size=cfg.data.batch_size, epochs=int(cost.get("epochs") or cfg.train.epochs),
        selection=cfg.train.select, selected_epoch=selected_epoch, stopped=stopped, mixed_precision=precision,
        weights=weights, probe=dict(probe) if probe else None, options=frontier_options(cfg) or None)
    ev = _finetune_evaluation(after, before, training, "fp32", cfg.data.name)  # finetune always evaluates in fp32
    return RunRecord(training, [ev], public.redact_all(list(history)), public.redact_all(dict(cost)))


def frontier_options(cfg: Any) -> dict[str, Any]:
    """The options that are on in ``cfg`` (the last stage's config; per-epoch details are in the history), each
    registered option's own entries then few-shot, for the record and the card."""
    out: dict[str, Any] = {}
    for unit in sections.options():  # each registered option's own entries (train/options/), in registry order
        out.update(unit.record(cfg))
    if cfg.data.per_class is not None:
        out["per_class"] = cfg.data.per_class
    return out


def public_report(report: Mapping[str, Any], model_label: str) -> dict[str, Any]:
    """An evaluation report (eval.json) as a run folder keeps it: the model named by ``model_label`` instead of a
    local path, the data set by its public name, every other absolute path redacted."""
    out = public.redact_all(dict(report))
    out["model"] = model_label
    sub = dict(out.get("subset") or {})
    if "data" in sub:
        sub["data"] = public.dataset_name(str(report.get("subset", {}).get("data", "")))[0]
        out["subset"] = sub
    return out

