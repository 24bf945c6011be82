"""The recipe catalogue: listing the shipped recipes, the dry-run plan and the cost estimate.

A recipe's header comment carries what a table needs besides the config: ``# expected: ...`` (the result to expect,
with its source, or "not yet measured"), for a recipe that reproduces a published setting ``# target: ...`` (the
published result it aims at, with its source; shown next to the estimate), and free text. The plan and the cost are
computed here from the resolved config, never written by hand: per stage, the training examples, batches, epochs
over the data, forward/backward passes (the method's own ``passes_per_batch``), plus the evaluation before and after
and the per-epoch probe.

H100-hours are an *estimate* from assumed training throughputs (:data:`THROUGHPUT`, images/s for one
forward+backward pass per image on one H100 in bf16 at 224 px, scaled by pixel count to other resolutions). They
are not measurements: replace them with ``robustify bench`` on your GPU (``--set`` the same model and image size).

Must not: train or write anything (the dry-run only reads and plans).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FinetuneConfig, build_config, expand_stages, resolve_recipe_path
from .config import recipes_folder as recipes_dir
from .errors import UserError
from .runfolder import CONFIG

# assumed images/s for one forward+backward pass per image, one H100, bf16, channels_last, 224x224 — order-of-
# magnitude figures (roughly 1.5-2x published A100 mixed-precision training rates), NOT measured here
THROUGHPUT: dict[str, float] = {"resnet18": 7500.0, "resnet50": 2600.0, "convnext_tiny": 2000.0,
                                "vit_base_patch16_224": 1300.0}
THROUGHPUT_NOTE = ("estimate: assumed H100 bf16 throughput (resnet18 7,500, resnet50 2,600, convnext_tiny 2,000, "
                   "vit_base_patch16_224 1,300 images/s per forward+backward pass at 224 px, scaled by pixel count), "
                   "not measured; run 'robustify bench' on your GPU")
# split sizes of the aliases, for plans before anything is downloaded
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "quickstart": {"train": 1297, "test": 500},
    "cifar10": {"train": 50000, "test": 10000},
    "cifar100": {"train": 50000, "test": 10000},
    "mnist": {"train": 60000, "test": 10000},
    "imagenet-1k": {"train": 1281167, "validation": 50000, "test": 100000},
    "tiny-imagenet": {"train": 100000, "valid": 10000},
}

CLASSES = {"quickstart": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "imagenet-1k": 1000, "tiny-imagenet": 200}


# what the quickstart gives, measured once: the one place its figures live (README, the recipe header, --help,
# the dry-run and the recipes table all say what this file says)
QUICKSTART_EXPECTED = Path(__file__).resolve().parent / "assets" / "quickstart" / "expected.json"


def quickstart_expected() -> dict[str, Any]:
    """The measured quickstart result: ``before``/``after`` accuracies in percent, ``seconds``, where and when."""
    import json

    return json.loads(QUICKSTART_EXPECTED.read_text())


def expected_text(e: dict[str, Any] | None = None) -> str:
    """The quickstart's ``expected:`` line (recipe header, dry-run, recipes table)."""
    e = e or quickstart_expected()
    b, a = e["before"], e["after"]
    return (f"{a['clean_acc']:.1f}% clean / {a['pgd_acc']:.1f}% PGD-10 (before: {b['clean_acc']:.1f}% / "
            f"{b['pgd_acc']:.1f}%; {e['evaluation']}; measured {e['measured']} on a {e['machine']}, about "
            f"{e['seconds']:.0f} s)")


def quickstart_help_text(e: dict[str, Any] | None = None) -> str:
    """What ``robustify finetune --help`` says the quickstart does (after "offline, ")."""
    e = e or quickstart_expected()
    b, a = e["before"], e["after"]
    return (f"in about {e['seconds']:.0f} s on a 2-core CPU, taking PGD-10 accuracy from {b['pgd_acc']:.1f}% to "
            f"{a['pgd_acc']:.1f}% and clean accuracy from {b['clean_acc']:.1f}% to {a['clean_acc']:.1f}% (measured "
            f"{e['measured']} on a {e['machine']})")


def recipe_names() -> list[str]:
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d else []


def header(path: Path) -> dict[str, str]:
    """``# key: value`` lines of a recipe's leading comment (expected, what, ...)."""
    out: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s?([a-z][a-z -]*):\s*(.+)", line)
        if m:
            key = m.group(1).strip()
            out[key] = m.group(2).strip()
        elif key and line.startswith("#   "):  # a continuation line
            out[key] += " " + line[1:].strip()
        else:
            key = None
    return out


@dataclass
class StagePlan:
    name: str
    method: str
    epochs: int  # requested epochs (free AT divides them by m)
    data_passes: int  # passes over the training data
    examples: int
    global_batch: int
    batches_per_epoch: int
    optimizer_steps: int
    passes_per_batch: int
    train_passes: int  # example forward/backward passes
    image_size: tuple[int, int]  # what the backbone computes at
    hours: float | None


@dataclass
class Plan:
    name: str
    cfg: FinetuneConfig
    stages: list[StagePlan]
    eval_passes: int
    eval_hours: float | None
    header: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def train_passes(self) -> int:
        return sum(s.train_passes for s in self.stages)

    @property
    def hours(self) -> float | None:
        parts = [s.hours for s in self.stages] + [self.eval_hours]
        return None if any(p is None for p in parts) else sum(parts)


def throughput(model_name: str, size: tuple[int, int]) -> float | None:
    arch = model_name.removeprefix("hf-hub:timm/").split(".", 1)[0]
    base = THROUGHPUT.get(arch)
    return None if base is None else base * (224 * 224) / (size[0] * size[1])


def backbone_size(cfg: FinetuneConfig) -> tuple[int, int]:
    """The resolution the backbone computes at (image_size, else the timm default config of the architecture)."""
    if cfg.data.image_size:
        return cfg.data.image_size, cfg.data.image_size
    try:
        import json

        import timm

        from .models import resolve_spec

        spec = resolve_spec(cfg.model.name)
        if spec.startswith("local-dir:"):
            size = json.loads((Path(spec[len("local-dir:"):]) / CONFIG).read_text())["pretrained_cfg"][
                "input_size"]
        else:
            size = timm.get_pretrained_cfg(spec.split(":", 1)[-1]).input_size
        return int(size[1]), int(size[2])
    except Exception:  # noqa: BLE001 - unknown names have no default config: assume 224
        return 224, 224


def split_size(cfg: FinetuneConfig, split: str) -> int | None:
    return SPLIT_SIZES.get(cfg.data.name, {}).get(split)


DEFAULTS_NAME = "(no recipe)"
DEFAULTS_TEXT = ("no recipe: robustify's defaults (docs/configuration.md#every-recipe-key: eps 8/255, batch 128, "
                 "PGD-20 on 1000 examples) with your flags; bare 'robustify finetune' is the quickstart")


def plan(recipe: str | None, overrides: list[str] | None = None) -> Plan:
    """The dry-run plan of a recipe (``None``: the defaults, no recipe file): resolved config, stages, passes and
    the cost estimate."""
    from .train import options
    from .train.methods import build_method

    cfg = build_config(recipe, overrides)
    path = resolve_recipe_path(recipe) if recipe is not None else None
    notes: list[str] = []
    stages: list[StagePlan] = []
    for name, scfg in expand_stages(cfg):
        method = build_method(scfg.method, scfg.threat)
        total = split_size(scfg, scfg.data.train_split)
        examples = min(total, scfg.data.max_train_examples) if (total and scfg.data.max_train_examples) else (
            total or scfg.data.max_train_examples)
        if examples is not None and scfg.train.probe_split == "heldout":
            from .data.heldout import train_size

            # the same check and the same count as the run's split (data.heldout): the probe is never trained on
            examples = train_size(examples, scfg.train.probe_size)
        gb = scfg.train.global_batch or scfg.data.batch_size
        if scfg.data.per_class is not None and examples and scfg.data.name in CLASSES:  # few-shot subset
            examples = min(examples, scfg.data.per_class * CLASSES[scfg.data.name])
        data_passes = method.epochs(scfg.train.epochs)
        size = backbone_size(scfg)
        option_per_batch, option_passes = options.extra_passes(scfg, data_passes)  # the active options' own passes
        if examples is None:
            notes.append(f"stage {name}: the size of {scfg.data.name!r} is not known offline; passes per example only")
            bpe, passes = 0, 0
        else:
            bpe = examples // gb
            passes = data_passes * bpe * gb * method.passes_per_batch
            passes += option_passes * bpe * gb
            extra = options.extra_examples(scfg)  # examples an option appends to each minibatch (pseudo-labelled)
            if extra:
                b = scfg.data.batch_size
                passes = passes * (b + extra) // b
        tp = throughput(scfg.model.name, size)
        stages.append(StagePlan(name, scfg.method.name, scfg.train.epochs, data_passes, examples or 0, gb, bpe,
                                data_passes * bpe * method.optimizer_steps_per_batch,
                                method.passes_per_batch + option_per_batch, passes,
                                size, None if tp is None or examples is None else passes / tp / 3600))
        notes += frontier_notes(name, scfg, data_passes)
    e = cfg.eval
    n_eval = min(e.n_examples, split_size(cfg, cfg.data.eval_split) or e.n_examples)
    probe = sum(s.data_passes for s in stages) * cfg.train.probe_size * (cfg.train.probe_steps + 1)
    eval_passes = 2 * n_eval * (1 + e.pgd_steps * e.pgd_restarts) + probe
    tp = throughput(cfg.model.name, backbone_size(cfg))
    if tp is None:
        notes.append(f"no throughput assumption for {cfg.model.name!r}: no H100-hours estimate (run 'robustify bench')")
    if e.autoattack:
        notes.append("the cost leaves out AutoAttack (eval.autoattack: true), which can exceed the training cost")
    head = header(path) if path is not None else {}
    if path is not None and path.resolve() == resolve_recipe_path("quickstart").resolve():  # one place
        head["expected"] = expected_text()
    return Plan(path.stem if path is not None else DEFAULTS_NAME, cfg, stages, eval_passes,
                None if tp is None else eval_passes / tp / 3600, head, notes)


def frontier_notes(name: str, cfg: FinetuneConfig, data_passes: int) -> list[str]:
    """Dry-run notes for the fine-tuning frontier's options of one stage (what they change in the plan)."""
    from .train import options

    out = options.plan_notes(name, cfg, data_passes)  # each active option's own notes (train/options/)
    if cfg.data.per_class is not None:
        known = cfg.data.name in CLASSES
        out.append(f"stage {name}: few-shot, {cfg.data.per_class} training examples per class ("
                   + ("counted above" if known else "the number of classes is not known offline: the plan counts the "
                      "whole split") + ")")
    return out


def threat_text(cfg: FinetuneConfig) -> str:
    """``Linf 8/255 @32px``: the norm, eps as every record prints it (:func:`runrecord.eps_text`: ``8/255`` below 1,
    an L1 budget of 12 as ``12``) and the attack resolution."""
    from .publish.runrecord import eps_text

    return f"{cfg.threat.norm} {eps_text(cfg.threat.eps)} @{cfg.data.attack_size or backbone_size(cfg)[0]}px"


def method_text(cfg: FinetuneConfig) -> str:
    m = cfg.method
    return {"free": f"free m={m.replays}", "pgd": f"pgd-{m.steps}", "apgd": f"apgd-{m.steps}"}.get(m.name, m.name)


def _hours(h: float | None) -> str:
    return "n/a" if h is None else (f"{h:.2f}" if h < 10 else f"{h:,.0f}")


def catalogue() -> list[dict[str, Any]]:
    """One JSON-able row per shipped recipe: what ``robustify recipes`` shows (``--json`` prints these rows)."""
    rows: list[dict[str, Any]] = []
    for name in recipe_names():
        try:
            p = plan(name)
        except UserError as e:
            rows.append({"name": name, "invalid": " ".join(str(e).split())})
            continue
        c = p.cfg
        rows.append({
            "name": name, "backbone": c.model.name, "pretrained": c.model.pretrained, "data": c.data.name,
            "methods": list(dict.fromkeys(method_text(sc) for _, sc in expand_stages(c))),
            "threat_model": {"norm": c.threat.norm, "eps": c.threat.eps, "text": threat_text(c)},
            "stages": [{"name": s.name, "method": s.method, "epochs": s.epochs, "data_passes": s.data_passes,
                        "examples": s.examples, "global_batch": s.global_batch, "train_passes": s.train_passes,
                        "image_size": list(s.image_size), "est_h100_hours": s.hours} for s in p.stages],
            "global_batch": p.stages[-1].global_batch, "train_passes": p.train_passes, "eval_passes": p.eval_passes,
            "est_h100_hours": p.hours, "target": p.header.get("target"),
            "expected": p.header.get("expected", "not yet measured"),
        })
    return rows


# columns of the recipes table; the name says data, backbone and method already, so those go first when narrow
CATALOGUE_DROP = ("passes", "global batch", "data", "backbone", "method", "epochs", "threat model", "target",
                  "est. H100-h")


def expected_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The table's short "expected" cells and the numbered notes under it: "not yet measured. Reference ..." is shown
    as "not yet measured [1]" with "[1] Reference ..." below (as README's table does), so each recipe stays one line
    wide enough to read; the notes are printed whole."""
    cells: list[str] = []
    notes: list[str] = []
    for r in rows:
        text = r.get("expected") or f"invalid: {r.get('invalid', '')}"
        cut = min((i for i in (text.find(". "), text.find(" (")) if i > 0), default=-1)
        if cut < 0 or text.startswith("invalid: "):
            cells.append(text)
            continue
        head, tail = text[:cut], text[cut:].lstrip(". ")
        if text[cut:].startswith(" (") and tail.startswith("(") and tail.endswith(")"):
            tail = tail[1:-1]
        if tail not in notes:
            notes.append(tail)
        cells.append(f"{head} [{notes.index(tail) + 1}]")
    return cells, [f"[{i}] {n}" for i, n in enumerate(notes, 1)]


def target_cell(target: str | None) -> str:
    """The table's short "target" cell: the published numbers and the entry they are from, without the details in
    parentheses after the entry's id (``72.72% clean / 49.46% AutoAttack (RobustBench Singh2023..., ...)``)."""
    if not target:
        return ""
    head, _, rest = target.partition(" (")
    return f"{head} ({rest.split(',')[0].rstrip(')')})" if rest else head


def catalogue_table(rows: list[dict[str, Any]] | None = None):
    """The ``robustify recipes`` table (a :class:`robustify.report.Listing`) of :func:`catalogue`'s rows; the notes
    its "expected" cells point to are :func:`expected_cells`' second list."""
    from .report import Listing

    rows = catalogue() if rows is None else rows
    table = Listing(title="robustify recipes", show_lines=False, name="name", drop=CATALOGUE_DROP)
    for col in ("name", "backbone", "data", "method", "threat model", "epochs", "global batch", "passes",
                "est. H100-h", "target", "expected"):
        table.add_column(col, overflow="fold")
    for r, expected in zip(rows, expected_cells(rows)[0], strict=True):
        if "invalid" in r:
            table.add_row(r["name"], "", "", "", "", "", "", "", "", "", expected)
            continue
        table.add_row(r["name"], r["backbone"] + ("" if r["pretrained"] else " (scratch)"), r["data"],
                      " → ".join(r["methods"]), r["threat_model"]["text"],
                      "+".join(str(s["epochs"]) for s in r["stages"]), str(r["global_batch"]),
                      f"{r['train_passes'] / 1e6:,.1f}M", _hours(r["est_h100_hours"]), target_cell(r.get("target")),
                      expected)
    return table


def dry_run_text(p: Plan, checks: list[str]) -> str:
    """What ``finetune --dry-run`` prints (besides the resolved YAML)."""
    what = f"{p.cfg.model.name} on {p.cfg.data.name}, {threat_text(p.cfg)}"
    lines = [f"{p.name}: {what}" if p.name == DEFAULTS_NAME else f"recipe {p.name}: {what}"]
    if "target" in p.header:
        lines.append(f"target: {p.header['target']}")
    if "expected" in p.header:
        lines.append(f"expected: {p.header['expected']}")
    lines.append("plan:")
    for s in p.stages:
        lines.append(f"  stage {s.name}: {s.method}, {s.epochs} epochs ({s.data_passes} over the data) x "
                     f"{s.batches_per_epoch:,} batches of {s.global_batch} = {s.optimizer_steps:,} optimizer steps; "
                     f"{s.passes_per_batch} passes/batch = {s.train_passes:,} example passes at "
                     f"{s.image_size[0]}x{s.image_size[1]}; est. {_hours(s.hours)} H100-hours")
    lines.append(f"  evaluation before/after and probes: {p.eval_passes:,} example passes; est. "
                 f"{_hours(p.eval_hours)} H100-hours")
    lines.append(f"cost: {p.train_passes + p.eval_passes:,} example passes, est. {_hours(p.hours)} H100-hours "
                 f"({THROUGHPUT_NOTE})")
    lines += [f"note: {n}" for n in p.notes]
    lines += [f"check: {c}" for c in checks]
    return "\n".join(lines)


def check_model(name: str, pretrained: bool) -> str:
    """Is the model spec valid (offline-safe)? One line saying what was and was not checked."""
    import timm


    if name.startswith("hf-hub:"):
        return f"model {name}: a Hub id, not checked offline (it is downloaded when training starts)"
    if name == "quickstart" or name.startswith("local-dir:") or Path(name).expanduser().exists():
        from .models import resolve_spec

        resolve_spec(name)
        return f"model {name}: folder found"
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        from .models import resolve_spec

        resolve_spec(name)  # raises the one-line error with similar names
    if tag and pretrained and name not in timm.list_pretrained(name):
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:6])
        raise UserError(f"model {name!r}: timm has no pretrained tag {tag!r} for {arch}; known: {tags}")
    return f"model {name}: a timm architecture" + (" with pretrained weights (downloaded when training starts)"
                                                   if pretrained else " (random init)")


def check_data(cfg: FinetuneConfig) -> str:
    from .data.sources import ALIASES, get_dataset

    d = cfg.data
    if d.name in ALIASES:
        a = ALIASES[d.name]
        lab = d.label_column or a.label_column
        for key, col in (("data.image_column", d.image_column), ("data.label_column", d.label_column)):
            if col is not None and col not in a.columns:
                raise UserError(f"{key}={col!r} is not a column of {a.repo}; its columns: {', '.join(a.columns)}")
        for key, split in (("data.train_split", d.train_split), ("data.eval_split", d.eval_split)):
            if split not in a.splits:
                raise UserError(f"{key}={split!r} is not a split of {a.repo}; its splits: {', '.join(a.splits)}")
            if split in a.unlabelled:
                raise UserError(f"{key}={split!r}: that split of {a.repo} has no labels (all -1); use "
                                f"{a.eval_split!r}")
        return (f"data {d.name}: alias of {a.repo} (columns {d.image_column or a.image_column}, {lab}; eval split "
                f"{d.eval_split}); its Hub files are not checked offline")
    if "/" in d.name and ":" not in d.name and not Path(d.name).exists():
        try:
            import datasets

            from .models import hub_reachable

            if not hub_reachable():
                return f"data {d.name}: a Hub data set; id and columns not checked (the Hub is unreachable)"
            feats = datasets.load_dataset_builder(d.name).info.features
            cols = ", ".join(feats) if feats else "unknown"
            return f"data {d.name}: found on the Hub (columns: {cols})"
        except Exception as e:  # noqa: BLE001
            raise UserError(f"data {d.name!r} could not be checked on the Hub: {str(e).splitlines()[0]}") from None
    kw = {"image_column": d.image_column, "label_column": d.label_column, "holdout": d.holdout}
    tr = get_dataset(d.name, d.train_split, **kw)
    ev = get_dataset(d.name, d.eval_split, **kw)
    return f"data {d.name}: {len(tr)} train / {len(ev)} eval examples, {tr.features['label'].num_classes} classes"


def dry_run(recipe: str | None, overrides: list[str] | None = None) -> str:
    """Resolve, check and plan a recipe (``None``: the defaults) without training or writing anything."""
    from .config import dump_yaml
    from .train.preflight import preflight

    p = plan(recipe, overrides)
    p.notes[:0] = preflight(p.cfg)  # what the run refuses before it starts, by the run's own code (and its notes)
    checks = [check_model(p.cfg.model.name, p.cfg.model.pretrained), check_data(p.cfg)]
    from .data.loaders import use_streaming

    if use_streaming(p.cfg.data):  # bytes per node from the shards' footers (issue 16)
        from .data.stream import bytes_plan
        from .models import hub_reachable

        if not Path(p.cfg.data.name).exists() and not hub_reachable():  # not ~25 s of the client's retries
            checks.append(f"streaming {p.cfg.data.name}: shard sizes not checked (the Hub is unreachable)")
        else:
            checks.append(bytes_plan(p.cfg.data, p.cfg.train.epochs, p.cfg.train.seed))
    if p.cfg.data.decode == "device":
        checks.append("data.decode=device: the training JPEGs are decoded on the GPU (nvJPEG) in the training process; "
                      "the run checks its CUDA device before loading anything (not measured on a GPU yet)")
    source = DEFAULTS_TEXT if recipe is None else f"recipe {p.name} ({resolve_recipe_path(recipe)})"
    return f"settings: {source}\nresolved config:\n" + dump_yaml(p.cfg) + "\n" + dry_run_text(p, checks)


def summary(p: Plan) -> dict[str, Any]:
    """A JSON-able summary (for scripts and the README table)."""
    return {"name": p.name, "train_passes": p.train_passes, "eval_passes": p.eval_passes, "hours": p.hours,
            "stages": [s.__dict__ for s in p.stages]}
