"""Regenerate the reference tables of docs/configuration.md from the code, so that the page cannot drift from it.

- **Every recipe key**: one row per key of ``robustify.config.FinetuneConfig`` (``config.all_keys()``), with its
  default (the dataclasses'), its accepted values (``config.choices()``, the method and schedule registries, the
  ``--data``/``--model`` forms, the type for booleans) and a one-line meaning. The meaning is the only hand-written
  column: it is kept from the page, and a key the page does not describe yet gets the comment its dataclass field
  carries in config.py (or, without one, the generator stops and names the key).
- **The recipe table**: the rows of ``robustify recipes --json`` (``robustify.recipes.catalogue()``), with the
  numbered notes its "expected" cells point to.

Each table sits between ``<!-- BEGIN GENERATED: NAME ... -->`` and ``<!-- END GENERATED: NAME -->`` comments;
nothing else on the page is touched.

    python scripts/make_docs.py           # rewrite docs/configuration.md
    python scripts/make_docs.py --check   # exit 1 when the page differs (tests/test_docs_reference.py checks too)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, get_type_hints

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"
CONFIG_SOURCE = ROOT / "robustify" / "config.py"

# the headings of the key tables (kept word for word: other pages link to their anchors)
SECTION_HEADINGS = {
    "model": "### `model`",
    "data": "### `data` (see [data.md](data.md))",
    "threat": "### `threat`",
    "method": "### `method` (see [methods.md](methods.md))",
    "schedule": "### `schedule` (see [methods.md](methods.md#schedules))",
    "optim": "### `optim`",
    "train": "### `train`",
    "eval": "### `eval` (the evaluation `finetune` runs before and after training; see [evaluation.md](evaluation.md))",
    "": "### Top level",
}
# accepted values checked by code that has no table to import (config.validate_data, train/options/freeze.py)
OTHER_CHOICES = {
    "data.interpolation": ("null", "bilinear", "bicubic", "nearest"),
    "model.freeze": ("none", "backbone", "stem", "stages:N"),
    "model.channels_last": ("auto", "true", "false"),
}
ROW = re.compile(r"^\| `([A-Za-z_][\w.]*)` \|.*\| (.*) \|$")


def _begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} (scripts/make_docs.py; edit the meaning column only) -->"


def _end(name: str) -> str:
    return f"<!-- END GENERATED: {name} -->"


def defaults() -> dict[str, Any]:
    """Every key's default, by dotted key."""
    from robustify.config import FinetuneConfig

    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = value

    walk(FinetuneConfig(), "")
    return out


PIXEL_KEYS = ("threat.eps", "method.alpha")  # pixel magnitudes: shown as N/255 when they are whole levels


def show(value: Any, key: str = "") -> str:
    """A default as a recipe would spell it: ``true``, ``null``, ``8/255``, ``0.0005``, ``[0.5, 0.75]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        from robustify.publish.runrecord import eps_text

        return eps_text(value) if key in PIXEL_KEYS else f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def choices() -> dict[str, str]:
    """Each key's accepted values, from the tables and registries that check them."""
    from robustify.cli import DATA_FORMS, MODEL_FORMS
    from robustify.config import FinetuneConfig
    from robustify.config import choices as config_choices
    from robustify.train.methods import METHODS
    from robustify.train.schedules import SCHEDULES

    out = {k: ", ".join(f"`{c}`" for c in v) for k, v in {**config_choices(), **OTHER_CHOICES}.items()}
    out["method.name"] = ", ".join(f"`{m}`" for m in METHODS)
    out["schedule.name"] = ", ".join(f"`{s}`" for s in SCHEDULES)
    out["data.name"] = DATA_FORMS
    out["model.name"] = MODEL_FORMS
    for section in dataclasses.fields(FinetuneConfig):
        tp = get_type_hints(FinetuneConfig)[section.name]
        if not dataclasses.is_dataclass(tp):
            continue
        for f, hint in get_type_hints(tp).items():
            key = f"{section.name}.{f}"
            if hint is bool and key not in out:
                out[key] = "`true`, `false`"
    return out


def field_comments() -> dict[str, str]:
    """The comment each dataclass field carries in config.py (trailing, else the comment lines just above it), by
    dotted key: the meaning of a key the page does not describe yet."""
    from robustify.config import FinetuneConfig

    sections = {get_type_hints(FinetuneConfig)[f.name].__name__: f.name for f in dataclasses.fields(FinetuneConfig)
                if dataclasses.is_dataclass(get_type_hints(FinetuneConfig)[f.name])}
    out: dict[str, str] = {}
    section, above = None, []
    for line in CONFIG_SOURCE.read_text().splitlines():
        m = re.match(r"class (\w+)", line)
        if m:
            section, above = sections.get(m.group(1)), []
            continue
        if section is None:
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"    (\w+): [^=]+=.*?(?:  # (.*))?$", line)
        if m:
            text = m.group(2) or " ".join(above)
            if text:
                out.setdefault(f"{section}.{m.group(1)}", text)
        above = []
    return out


def page_meanings(text: str) -> dict[str, str]:
    """The meaning column of the page's key tables, by key (the hand-written part, kept as it is)."""
    out = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def keys_block(meanings: dict[str, str]) -> str:
    from robustify.config import all_keys

    default, accepted, comments = defaults(), choices(), field_comments()
    missing = [k for k in all_keys() if k not in meanings and k not in comments]
    if missing:
        raise SystemExit(f"make_docs: no meaning for {', '.join(missing)}: add a comment to its field in "
                         "robustify/config.py or a row to docs/configuration.md")
    lines: list[str] = []
    for section, heading in SECTION_HEADINGS.items():
        keys = [k for k in all_keys() if (k.split(".")[0] if "." in k else "") == section]
        if not keys:
            continue
        lines += [heading, "", "| key | default | accepted | meaning |", "| --- | --- | --- | --- |"]
        for k in keys:
            meaning = meanings.get(k) or comments[k].replace("|", "\\|")  # a bare | would split the row
            lines.append(f"| `{k}` | `{show(default[k], k)}` | {accepted.get(k, '')} | {meaning} |")
        lines.append("")
    unplaced = [k for k in all_keys() if (k.split(".")[0] if "." in k else "") not in SECTION_HEADINGS]
    if unplaced:
        raise SystemExit(f"make_docs: keys of a section without a heading: {', '.join(unplaced)}")
    return "\n".join(lines).rstrip("\n")


def _hours(h: float | None) -> str:
    return "n/a" if h is None else (f"~{h:.2f}" if h < 10 else f"~{h:,.0f}")


def recipes_block(rows: list[dict[str, Any]] | None = None) -> str:
    from robustify import recipes

    rows = recipes.catalogue() if rows is None else rows
    cells, notes = recipes.expected_cells(rows)
    lines = ["| recipe | backbone | data | method | threat model | epochs (per stage) | global batch | passes | "
             "est. H100-h | target | expected |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, expected in zip(rows, cells, strict=True):
        link = f"[`{r['name']}`](../recipes/{r['name']}.yaml)"
        if "invalid" in r:
            lines.append(f"| {link} | | | | | | | | | | {expected} |")
            continue
        lines.append(" | ".join([
            f"| {link}", f"`{r['backbone']}`" + ("" if r["pretrained"] else " (scratch)"), r["data"],
            " → ".join(r["methods"]), r["threat_model"]["text"], "+".join(str(s["epochs"]) for s in r["stages"]),
            str(r["global_batch"]), f"{r['train_passes'] / 1e6:,.1f}M", _hours(r["est_h100_hours"]),
            recipes.target_cell(r.get("target")), f"{expected} |"]))
    if notes:
        lines += ["", "Notes of the expected column (the recipes' `# expected:` headers; the quickstart's from "
                  "`robustify/assets/quickstart/expected.json`):", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = _begin(name), _end(name)
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"make_docs: {PAGE.relative_to(ROOT)} has no {begin!r} ... {end!r} block")
    return text[:start] + begin + "\n\n" + body + "\n\n" + text[stop:]


def render(text: str, rows: list[dict[str, Any]] | None = None) -> str:
    """The page with both generated blocks rewritten from the code."""
    text = replace_block(text, "keys", keys_block(page_meanings(text)))
    return replace_block(text, "recipes", recipes_block(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when the page differs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    text = PAGE.read_text()
    new = render(text)
    if new == text:
        print(f"{PAGE.relative_to(ROOT)}: up to date")
        return 0
    if args.check:
        print(f"{PAGE.relative_to(ROOT)} differs from the code: run python scripts/make_docs.py", file=sys.stderr)
        return 1
    tmp = PAGE.with_name(f".{PAGE.name}.tmp")
    tmp.write_text(new)
    tmp.replace(PAGE)  # atomic: a reader sees the old page or the new one
    print(f"{PAGE.relative_to(ROOT)}: rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
