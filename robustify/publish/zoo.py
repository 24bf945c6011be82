"""The model zoo: one small YAML file per published robust model, under ``zoo/``.

Adding a model is adding a file ``zoo/NAME.yaml``. Its fields are the card's ``robustbench`` block (see
:func:`robustify.publish.card.robustbench_block`: threat model, eps, clean/robust accuracy in percent, the resolution
the
attacks perturb at, ...) plus where the weights live (``hub_id``) and the recipe that made them, so
``robustify zoo show NAME`` can say both how to load a model and how to make it again. :func:`entry_from_record`
renders an entry from a run's record, so an entry says exactly what the card says. Files are parsed with
``yaml.safe_load`` and checked against :class:`ZooEntry`; a mistake names the file and the field.

Must not: list a number without its source.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..errors import UserError, did_you_mean
from ..runfolder import CONFIG, RunFolder

ZOO_DIRS = (
    Path(__file__).resolve().parents[2] / "zoo",  # a source checkout / editable install
    Path(__file__).resolve().parents[1] / "_zoo",  # a wheel install (zoo/ is packaged there)
)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")
NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
THREAT_MODELS = ("Linf", "L2", "corruptions")  # corruptions: RobustBench's common-corruptions benchmark (no eps)


@dataclass(frozen=True)
class ZooEntry:
    """One published model. Accuracies are percentages (RobustBench's convention); eps is in [0,1] pixel units."""

    name: str  # must equal the file name without .yaml
    hub_id: str  # ORG/NAME on the Hugging Face Hub
    base_model: str  # what was fine-tuned (timm name, hf-hub:ORG/NAME, quickstart)
    architecture: str  # timm architecture
    dataset: str
    threat_model: str  # Linf | L2
    eps: str | None  # "8/255" or a decimal (None only for an imported model whose training eps is not recorded)
    clean_acc: float | None  # None only for an imported model whose source publishes no clean accuracy
    attack: str  # how pgd_acc was measured, e.g. "PGD-20 x1 restart (ce), step 0.00157"
    n_examples: int | None  # examples of the eval split the accuracies were measured on (None: not published)
    method: str  # fgsm-rs | free | pgd | natural
    recipe: str  # a shipped recipe name (robustify finetune --recipe NAME) or a path/URL to the recipe YAML
    pgd_acc: float | None = None
    autoattack_acc: float | None = None  # the standard AutoAttack only (RobustBench's meaning)
    additional_data: bool = True  # RobustBench's: real images beyond the target's training split (robustbench.py)
    resolution: str | None = None  # the resolution the attacks perturb at, e.g. "32x32"
    precision: str | None = None  # of the evaluation, e.g. "fp32"
    number_forward_passes: int = 1
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE on top of the recipe
    license: str | None = None
    demo: bool = False  # a demonstration model, not a useful defense
    notes: str = ""
    # third-party models that `robustify pull NAME` imports (None for models made with robustify):
    file: str | None = None  # the checkpoint inside hub_id, e.g. resnet50_l2_eps3.ckpt
    revision: str | None = None  # a commit of hub_id to pin (None: main, recorded at import)
    converter: str | None = None  # madrylab | state-dict (see robustify.publish.converters) | timm (as is)
    training: str | None = None  # how the source trained it, in words
    numbers_source: str | None = None  # who reported clean_acc/pgd_acc/autoattack_acc, on which protocol
    corruptions_acc: float | None = None  # RobustBench's corruptions benchmark (ImageNet-C), threat_model corruptions
    authors: str | None = None  # the weights' authors (the paper's), for the card
    paper: str | None = None  # "TITLE (VENUE), URL"
    leaderboard: str | None = None  # the leaderboard entry the numbers are read from (a URL)
    pushed: bool = False  # a robustify-converted timm folder of an imported model is on the Hub at hub_id

    @property
    def imported(self) -> bool:
        return self.converter is not None

    @property
    def eps_value(self) -> float:
        from ..config import parse_number

        return parse_number(self.eps, "eps")

    @property
    def robust_acc(self) -> tuple[float | None, str]:
        """The headline robust accuracy and the attack behind it: AutoAttack when measured, else PGD (ImageNet-C
        accuracy for a corruptions entry)."""
        if self.autoattack_acc is not None:
            return self.autoattack_acc, "AutoAttack"
        if self.corruptions_acc is not None:
            return self.corruptions_acc, "ImageNet-C"
        return self.pgd_acc, "PGD"

    @property
    def robustbench_entry(self) -> tuple[str, str, str] | None:
        """(dataset, threat model, name) of a RobustBench model-zoo entry (converter robustbench; ``file`` is its
        place under load_model's model_dir, DATASET/THREAT/NAME.pt)."""
        if self.converter != "robustbench" or not self.file:
            return None
        from .converters.robustbench import entry_from_path

        name, dataset, threat = entry_from_path(self.file)
        return (dataset, threat, name) if dataset and threat else None

    @property
    def checked_against(self) -> str | None:
        """The original project's release the entry's converter is checked against (None: not an imported model,
        or a converter not checked against original code)."""
        if self.converter in (None, "timm"):
            return None
        from . import converters

        return converters.get(self.converter).checked_against

    @property
    def on_hub(self) -> str:
        """What of the model is on the Hugging Face Hub, for ``zoo list``: ``timm`` (a timm repo at hub_id),
        ``ckpt`` (the source checkpoint, converted by ``robustify pull``) or ``no`` (not pushed yet: RobustBench's
        files are on Google Drive until ``robustify push`` publishes the converted folder)."""
        if self.converter in (None, "timm") or self.pushed:
            return "timm"
        if self.converter == "robustbench":
            return "no"
        return "ckpt"

    @property
    def load_command(self) -> str:
        return f'timm.create_model("hf-hub:{self.hub_id}", pretrained=True)'

    @property
    def recipe_command(self) -> str:
        sets = "".join(f" --set {o}" for o in self.overrides)
        return f"robustify finetune --recipe {self.recipe}{sets}"


def _check_type(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ``TypeError`` with what was expected."""
    if get_origin(tp) is not None and type(None) in get_args(tp):  # X | None
        if value is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("a whole number")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError("a string")
    if get_origin(tp) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeError("a list of strings")
    raise TypeError(f"{tp}")  # pragma: no cover - every field type is handled above


def parse_entry(data: Any, source: str = "<zoo entry>", stem: str | None = None) -> ZooEntry:
    """Validate one entry's mapping; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise UserError(f"zoo entry {source}: must be a mapping of fields (name:, hub_id:, ...)")
    hints = get_type_hints(ZooEntry)
    known = [f.name for f in fields(ZooEntry)]
    for key in data:
        if key not in known:
            hint = f" ({hint})" if (hint := did_you_mean(str(key), known)) else ""
            raise UserError(f"zoo entry {source}: unknown field '{key}'{hint}; known fields: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for f in fields(ZooEntry):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in data:
            if required:
                raise UserError(f"zoo entry {source}: missing field '{f.name}'")
            continue
        try:
            kwargs[f.name] = _check_type(data[f.name], hints[f.name])
        except TypeError as e:
            raise UserError(f"zoo entry {source}: field '{f.name}'={data[f.name]!r} is not accepted; use {e}") from None
    entry = ZooEntry(**kwargs)
    _check_values(entry, source, stem)
    return entry


def _check_values(e: ZooEntry, source: str, stem: str | None) -> None:
    def bad(key: str, why: str) -> UserError:
        return UserError(f"zoo entry {source}: field '{key}'={getattr(e, key)!r} is not accepted; {why}")

    if not NAME.fullmatch(e.name):
        raise bad("name", "use lower-case letters, digits, '-', '_' and '.'")
    if stem is not None and e.name != stem:
        raise bad("name", f"it must equal the file name '{stem}'")
    if not HUB_ID.fullmatch(e.hub_id):
        raise bad("hub_id", "use ORG/NAME")
    if e.threat_model not in THREAT_MODELS:
        raise bad("threat_model", f"choose one of: {', '.join(THREAT_MODELS)}")
    if e.threat_model == "corruptions" and (e.eps is not None or e.corruptions_acc is None):
        raise bad("threat_model", "a corruptions entry has no eps and needs corruptions_acc")
    if e.eps is None and not e.imported:
        raise bad("eps", "use a fraction such as 8/255 or a decimal")
    try:
        eps = e.eps_value if e.eps is not None else 1.0
    except UserError:
        raise bad("eps", "use a fraction such as 8/255 or a decimal") from None
    if not 0 < eps <= (1 if e.threat_model == "Linf" else 1e3):
        raise bad("eps", "eps is in [0,1] pixel units and must be > 0")
    for key in ("clean_acc", "pgd_acc", "autoattack_acc", "corruptions_acc"):
        value = getattr(e, key)
        if value is not None and not 0 <= value <= 100:
            raise bad(key, "accuracies are percentages in [0, 100]")
    if e.imported:
        from . import converters

        if e.converter != "timm" and e.converter not in converters.names():
            raise bad("converter", f"choose one of: timm, {', '.join(converters.names())}")
        if e.converter != "timm" and not e.file:
            raise UserError(f"zoo entry {source}: an imported model needs field 'file' (the checkpoint in {e.hub_id})")
        if e.converter == "robustbench" and e.robustbench_entry is None:
            raise bad("file", "a robustbench entry's file is DATASET/THREAT/NAME.pt (where load_model keeps it)")
        if any(v is not None for v in (e.clean_acc, e.pgd_acc, e.autoattack_acc, e.corruptions_acc)) \
                and not e.numbers_source:
            raise UserError(f"zoo entry {source}: published numbers need field 'numbers_source' (who reported them, "
                            "on which protocol)")
    else:
        if e.clean_acc is None:
            raise bad("clean_acc", "give the measured clean accuracy in percent")
        if e.pgd_acc is None and e.autoattack_acc is None and e.corruptions_acc is None:
            raise UserError(f"zoo entry {source}: needs a robust accuracy: field 'pgd_acc' or 'autoattack_acc'")
    if e.n_examples is not None and e.n_examples <= 0:
        raise bad("n_examples", "use the number of evaluated examples (> 0)")
    if e.n_examples is None and not e.imported:
        raise bad("n_examples", "use the number of evaluated examples (> 0)")
    if e.number_forward_passes < 1:
        raise bad("number_forward_passes", "use 1 or more")
    for o in e.overrides:
        if "=" not in o:
            raise UserError(f"zoo entry {source}: field 'overrides' item {o!r} is not accepted; use KEY=VALUE")


def entry_from_record(record: Any, name: str, hub_id: str, recipe: str, **extra: Any) -> dict[str, Any]:
    """A zoo entry (as YAML-ready fields) for a run's :class:`~robustify.publish.runrecord.RunRecord`: the card's
    ``robustbench`` block plus name, Hub id, base model, recipe and the base model's license; validated here."""
    from .card import robustbench_block

    block = {k: v for k, v in robustbench_block(record).items() if k in {f.name for f in fields(ZooEntry)}}
    data = block | {"name": name, "hub_id": hub_id, "base_model": record.training.base_model, "recipe": recipe} | extra
    parse_entry(data, f"entry for {name}")
    return data


def load_file(path: Path) -> ZooEntry:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"zoo entry {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_entry(data, str(path), stem=path.stem)


def zoo_dirs() -> tuple[Path, ...]:
    """The shipped zoo, after any folders in ``ROBUSTIFY_ZOO_PATH`` (a private zoo; also how tests add entries)."""
    extra = [Path(p).expanduser() for p in os.environ.get("ROBUSTIFY_ZOO_PATH", "").split(os.pathsep) if p]
    return (*extra, *ZOO_DIRS)


def zoo_files(dirs: tuple[Path, ...] | list[Path] | None = None) -> list[Path]:
    """``*.yaml`` files of the zoo; a name in an earlier folder hides the same name in a later one."""
    seen: dict[str, Path] = {}
    for d in dirs if dirs is not None else zoo_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.y*ml")):
                if p.suffix in (".yaml", ".yml"):
                    seen.setdefault(p.stem, p)
    return list(seen.values())


def load_zoo(dirs: tuple[Path, ...] | list[Path] | None = None) -> list[ZooEntry]:
    """Every entry, validated; demo entries first, then by name (so the quickstart demo leads the list)."""
    entries = [load_file(p) for p in zoo_files(dirs)]
    return sorted(entries, key=lambda e: (not e.demo, e.name))


def get_entry(name: str, dirs: tuple[Path, ...] | list[Path] | None = None) -> ZooEntry:
    entries = load_zoo(dirs)
    for e in entries:
        if e.name == name or e.hub_id == name:
            return e
    names = [e.name for e in entries]
    hint = did_you_mean(name, names, n=3, cutoff=0.3)
    hint = f"; {hint}" if hint else f"; known: {', '.join(names) or '(none)'}"
    raise UserError(f"zoo: no model named {name!r}{hint} (see 'robustify zoo list')")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


# columns of the zoo table that go first when the terminal is narrow ('zoo show NAME' has them all)
LIST_DROP = ("base model", "method", "Hub id", "threat model", "eps", "data")


def list_table(entries: list[ZooEntry]):
    """The ``zoo list`` table: one row per model, the name never cut."""
    from ..report import Listing

    table = Listing(title="robustify zoo", name="name", drop=LIST_DROP)
    for col, just in (("name", "left"), ("base model", "left"), ("data", "left"), ("threat model", "left"),
                      ("eps", "right"), ("clean", "right"), ("robust", "right"), ("method", "left"),
                      ("Hub id", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for e in entries:
        robust, attack = e.robust_acc
        table.add_row(e.name + (" (demo)" if e.demo else " (imported)" if e.imported else ""), e.base_model,
                      e.dataset, e.threat_model, e.eps or "-", _pct(e.clean_acc),
                      f"{_pct(robust)} {attack}" if robust is not None else "-", e.method, e.hub_id)
    table.caption = provenance_caption(entries)
    return table


def provenance_caption(entries: list[ZooEntry]) -> str:
    """Under the table (per-entry columns would not fit a terminal): which imported entries' converter is checked
    against the original project's own code, and which are not yet on the Hub as timm repos (``zoo show`` and
    ``--json`` say it per entry: checked_against, on_hub)."""
    groups: dict[str, list[ZooEntry]] = {}
    for e in entries:
        if e.imported and e.converter != "timm":
            groups.setdefault(e.converter or "", []).append(e)
    checked = [f"{len(es)} {conv} entries ({es[0].checked_against})" for conv, es in sorted(groups.items())
               if es[0].checked_against]
    unchecked = [f"{len(es)} {conv}" for conv, es in sorted(groups.items()) if not es[0].checked_against]
    unpushed = sorted({e.converter for e in entries if e.on_hub == "no"})
    n_unpushed = sum(e.on_hub == "no" for e in entries)
    text = "imported, converter checked against the original project's own code: " + (", ".join(checked) or "none")
    if unchecked:
        text += f"; not checked: {', '.join(unchecked)}"
    if n_unpushed:
        text += (f"; not yet on the Hub as timm repos: the {n_unpushed} {'/'.join(unpushed)} entries (robustify pull "
                 "NAME converts them; robustify push publishes)")
    return text


def print_list(entries: list[ZooEntry]) -> None:
    """Print the table: a terminal's width, or in a pipe (a file, grep) COLUMNS or a width that keeps each model
    on one line."""
    from ..report import print_table

    print_table(list_table(entries))


def entry_json(e: ZooEntry) -> dict[str, Any]:
    """``zoo list --json`` / ``zoo show --json``: every field (accuracies in percent), the headline robust accuracy
    and its attack, and the commands that load the model and make it again."""
    robust, attack = e.robust_acc
    return dataclasses.asdict(e) | {"robust_acc": robust, "robust_attack": attack, "load_command": e.load_command,
                                    "recipe_command": e.recipe_command, "checked_against": e.checked_against,
                                    "on_hub": e.on_hub}


def show_text(e: ZooEntry) -> str:
    """``zoo show``: every field, the command that loads the model and the recipe that made it (plain text, so
    the commands can be copied)."""
    from ..config import resolve_recipe_path

    width = max(len(f.name) for f in fields(ZooEntry))
    lines = [f"{e.name}" + ("  [demo]" if e.demo else ""), ""]
    for f in fields(ZooEntry):
        value = getattr(e, f.name)
        if f.name in ("clean_acc", "pgd_acc", "autoattack_acc", "corruptions_acc"):
            value = _pct(value)
        elif f.name == "overrides":
            value = " ".join(value) or "-"
        lines.append(f"  {f.name:<{width}}  {value if value not in (None, '') else '-'}")
    if e.imported:
        return "\n".join(lines + _imported_text(e))
    lines += [
        "",
        "Load it (plain timm, no robustify needed; inputs normalized with the model's pretrained_cfg mean/std):",
        f"  import timm; model = {e.load_command}",
        "Load it with normalization inside ([0,1] inputs, for attacks):",
        f'  import robustify; model = robustify.load("hf-hub:{e.hub_id}")',
        "Download it:",
        f"  robustify pull {e.hub_id}",
        "Make it again:",
        f"  {e.recipe_command}",
    ]
    try:
        path = resolve_recipe_path(e.recipe)
    except UserError:
        lines.append(f"  (recipe {e.recipe!r} is not shipped with this robustify; see the model repo's recipe.yaml)")
    else:
        lines += ["", f"Recipe ({path.name}):", *("  " + line for line in path.read_text().rstrip().splitlines())]
    return "\n".join(lines)


def _imported_text(e: ZooEntry) -> list[str]:
    """``zoo show`` of an imported model: how to get it as a timm folder, and that its numbers are reported ones."""
    from ..models import zoo_folder

    trust = " --trust-pickle" if e.file and not e.file.endswith(".safetensors") and e.converter != "robustbench" \
        else ""
    return [
        "",
        f"Published numbers (not measured here): {e.numbers_source or 'none recorded'}.",
        f"Converter {e.converter}: " + (f"checked against {e.checked_against} (the original project's own code)."
                                        if e.checked_against else "not checked against an original project's code."),
        "Download, convert and check it (a timm folder; pickles are read only with --trust-pickle, through "
        "torch.load(weights_only=True)):",
        f"  robustify pull {e.name}{trust}",
        "Then use it:",
        f'  import timm; model = timm.create_model("local-dir:{zoo_folder(e.name)}", pretrained=True)',
        f"  robustify finetune --model zoo:{e.name} --data DATA   # robust transfer to a new data set",
        "Or import it by hand:",
        f"  {import_command(e)}",
    ]


def import_command(e: ZooEntry) -> str:
    """The ``robustify import`` command equivalent to ``robustify pull NAME`` for an imported entry."""
    rb = e.robustbench_entry
    if rb is not None:
        return f"robustify pull robustbench:{'/'.join(rb)} --local-dir {e.name}"
    if e.converter == "timm":
        return f"robustify pull {e.hub_id}" + (f" --revision {e.revision}" if e.revision else "")
    trust = " --trust-pickle" if e.file and not e.file.endswith(".safetensors") else ""
    rev = f" --revision {e.revision}" if e.revision else ""
    return (f"robustify import hf-hub:{e.hub_id}/{e.file} --arch {e.architecture} --format {e.converter}{rev}{trust} "
            f"--output-dir {e.name}")


def reported_numbers(e: ZooEntry) -> list[dict[str, Any]]:
    """The entry's published numbers as :class:`robustify.publish.importer.Reported` fields."""
    by = e.numbers_source or "the source"
    protocol = f"{e.n_examples} examples; {e.attack}" if e.n_examples else e.attack
    return [{"metric": k, "value": getattr(e, k), "by": by, "protocol": protocol if k != "clean_acc" else
             (f"{e.n_examples} examples" if e.n_examples else "")}
            for k in ("clean_acc", "pgd_acc", "autoattack_acc", "corruptions_acc") if getattr(e, k) is not None]


def entry_meta(e: ZooEntry) -> dict[str, Any]:
    """What an import of ``e`` records in config.json and the card: license, threat model, training, the published
    numbers (as reported, not measured), authors, paper and leaderboard entry."""
    return {"license": e.license, "norm": e.threat_model, "eps": e.eps, "dataset": e.dataset,
            "training": e.training, "reported": reported_numbers(e), "zoo_name": e.name, "authors": e.authors,
            "paper": e.paper, "leaderboard": e.leaderboard}


def robustbench_name(dataset: str, threat: str, name: str) -> str:
    """The zoo name of a RobustBench entry: the entry that lists it, else robustbench-NAME (lower case)."""
    for e in load_zoo():
        if e.robustbench_entry == (dataset, threat, name):
            return e.name
    return "robustbench-" + re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def pull_robustbench_spec(spec: str, local_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``robustify pull robustbench:NAME``: into the zoo folder of the entry that lists it (or ``--local-dir``),
    with that entry's published numbers, authors, paper and license for the card. A folder already holding the
    model is checked, not downloaded again."""
    from ..models import is_model_folder, zoo_folder
    from .converters.robustbench import find
    from .hub import verify_loads
    from .importer import parse_robustbench, pull_robustbench

    dataset, threat, name = parse_robustbench(spec)
    (dataset, threat, name), _ = find(name, dataset, threat)
    zname = robustbench_name(dataset, threat, name)
    entry = next((e for e in load_zoo() if e.name == zname), None)
    folder = Path(local_dir).expanduser() if local_dir is not None else zoo_folder(zname)
    if is_model_folder(folder):
        verify_loads(folder, f"robustbench:{name} ({folder})")
        return folder, "already downloaded"
    meta = entry_meta(entry) if entry is not None else {"dataset": dataset, "zoo_name": zname,
                                                        "norm": threat if threat != "corruptions" else None}
    res = pull_robustbench(f"robustbench:{dataset}/{threat}/{name}", folder, meta)
    return folder, (f"downloaded through robustbench's load_model and converted with the robustbench converter "
                    f"(checked against {res.provenance.converter_checked_against}); logits equal robustbench's model "
                    f"(max difference {res.max_logit_diff:.1e})")


def _check_architecture(e: ZooEntry, folder: Path, what: str) -> None:
    """Refuse a folder whose config.json names another architecture than the entry: a repo that loads with timm
    is not yet the model the zoo entry describes (its numbers, threat model and license are the entry's)."""
    try:
        arch = RunFolder(folder, what).read_json(CONFIG).get("architecture")
    except (UserError, AttributeError):
        arch = None
    if arch != e.architecture:
        raise UserError(f"{what}: {CONFIG}'s architecture is {arch!r}, but zoo entry {e.name} is "
                        f"{e.architecture!r}; the repo does not hold the model the entry describes")


def pull_entry(e: ZooEntry, trust_pickle: bool = False, local_dir: str | os.PathLike | None = None
               ) -> tuple[Path, str]:
    """Download ``e`` into its zoo folder (``robustify pull NAME``), or into ``local_dir`` (``--local-dir DIR``), as
    a timm folder and check that it loads: imported through its converter, or downloaded as is when it already is a
    timm repo. Returns (folder, what was done). A model folder already there is checked, not downloaded again; a
    ``local_dir`` that holds anything else is refused (nothing in it is overwritten)."""
    import shutil
    import tempfile

    from ..models import is_model_folder, zoo_folder
    from .hub import pull, verify_loads

    folder = Path(local_dir).expanduser() if local_dir is not None else zoo_folder(e.name)
    if local_dir is not None and folder.exists() and not folder.is_dir():
        raise UserError(f"--local-dir {str(local_dir)!r} is a file; give a new or empty folder")
    if (local_dir is not None and folder.is_dir() and not is_model_folder(folder)
            and any(p.name != ".cache" for p in folder.iterdir())):
        raise UserError(f"--local-dir {str(local_dir)!r} is not empty and holds no model; give a new or empty folder "
                        "(nothing in it was changed)")
    if is_model_folder(folder):
        _check_architecture(e, folder, f"{folder} (remove it and pull again)")
        verify_loads(folder, f"zoo model {e.name} ({folder})")
        return folder, "already downloaded"
    if e.converter in (None, "timm"):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{e.name}.pull-"))
        try:
            pull(e.hub_id, revision=e.revision, local_dir=tmp)
            _check_architecture(e, tmp, f"{e.hub_id} (nothing kept)")
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping of a local_dir
            if folder.exists():  # an empty --local-dir (or one holding only a failed pull's bookkeeping)
                shutil.rmtree(folder / ".cache", ignore_errors=True)
                folder.rmdir()
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder, f"downloaded {e.hub_id} (already timm's format)"
    rb = e.robustbench_entry
    if rb is not None:
        return pull_robustbench_spec("robustbench:" + "/".join(rb), local_dir)
    from .importer import import_checkpoint

    meta = entry_meta(e)
    res = import_checkpoint(f"hf-hub:{e.hub_id}/{e.file}", folder, arch=e.architecture, fmt=e.converter,
                            trust_pickle=trust_pickle, revision=e.revision, meta=meta)
    verify_loads(folder, f"zoo model {e.name} ({folder})")
    return folder, (f"imported hf-hub:{e.hub_id}/{e.file} at {str(res.provenance.revision)[:8]} with the "
                    f"{e.converter} converter (logits match the converted weights: max difference "
                    f"{res.max_logit_diff:.1e})")
