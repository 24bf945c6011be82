"""Every command the documentation shows still runs as written, and every link in it leads somewhere.

The pages are README.md, BENCHMARKS.md and docs/*.md. Each fenced code line that runs robustify (``robustify ...``,
``python -m robustify ...``, or a launcher such as ``accelerate launch ... -m robustify ...``) must parse with the
command's own parser; ``finetune`` lines must also pass ``--dry-run``, in-process and offline, unless they name a
placeholder (a word in capitals such as ORG/NAME, RUN_DIR, PATH: the convention the pages state) or ``--resume``
an existing run. Every relative markdown link must point to a file (and heading) that exists.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# pages other branches add; README links them before they land, so only these may be missing
PLANNED = {"docs/data-at-scale.md", "docs/scale.md", "docs/integrity.md", "docs/zoo.md",
           "docs/methods-frontier.md", "docs/seed-methods.md"}
PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9_]+(?![a-z])")  # ORG/NAME, RUN_DIR, PATH, NODE0, ...
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


SHELL = {"", "bash", "sh", "shell", "console"}  # fences of commands; ```text (program output), ```yaml are not


def fenced_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line inside shell ``` fences, with ``\\`` continuations joined."""
    out: list[tuple[int, str]] = []
    fenced, shell, pending, start = False, False, "", 0
    for i, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            shell = fenced and line.strip()[3:].strip() in SHELL
            continue
        if not shell:
            continue
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def robustify_argv(line: str) -> list[str] | None:
    """The arguments after ``robustify`` of a shell line that runs it, or None when it does not."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):  # OMP_NUM_THREADS=1 robustify ...
        words = words[1:]
    if words[:1] == ["robustify"]:
        return words[1:]
    if words[:1] in (["python"], ["python3"], ["accelerate"], ["torchrun"]):
        for i in range(len(words) - 1):
            if words[i:i + 2] == ["-m", "robustify"]:
                return words[i + 2:]
    return None


def commands() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for number, line in fenced_lines(page):
            argv = robustify_argv(line)
            if argv is not None:
                out.append((f"{page.relative_to(ROOT)}:{number}", argv))
    return out


COMMANDS = commands()


def dry_runnable() -> list[tuple[str, list[str]]]:
    """The ``finetune`` lines a dry-run can check as written (each distinct command once)."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for where, argv in COMMANDS:
        if argv[:1] != ["finetune"] or "--resume" in argv or PLACEHOLDER.search(" ".join(argv)):
            continue
        if tuple(a for a in argv if a != "--dry-run") not in seen:
            seen.add(tuple(a for a in argv if a != "--dry-run"))
            out.append((where, argv))
    return out


FINETUNE = dry_runnable()


def test_the_pages_show_commands():
    """The extraction itself works: README's quickstart, the eval, push/pull, zoo and launch examples are found."""
    found = {" ".join(argv[:2]) for _, argv in COMMANDS}
    assert {"finetune", "eval RUN_DIR", "zoo list", "recipes"} <= found | {argv[0] for _, argv in COMMANDS}
    assert any(argv[:1] == ["push"] for _, argv in COMMANDS) and any(argv[:1] == ["pull"] for _, argv in COMMANDS)
    assert any(w.startswith("README.md") for w, argv in COMMANDS if argv == ["finetune"])
    assert robustify_argv("accelerate launch --multi_gpu --num_processes 8 -m robustify finetune --recipe x") == [
        "finetune", "--recipe", "x"]
    assert robustify_argv("OMP_NUM_THREADS=1 robustify bench --peers  # comment") == ["bench", "--peers"]
    assert robustify_argv("pip install -e .") is None and len(FINETUNE) >= 5


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_parses(where: str, argv: list[str], capsys):
    from robustify.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # --help exits 0; a bad flag or value exits 2
        assert e.code in (0, None), f"{where}: robustify {' '.join(argv)}\n{capsys.readouterr().err}"


@pytest.fixture
def offline(monkeypatch):
    """Dry-runs never reach for the network: the Hub counts as unreachable, so they say what they could not check."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("where,argv", FINETUNE, ids=[w for w, _ in FINETUNE])
def test_finetune_command_dry_runs(where: str, argv: list[str], offline, tmp_path: Path, monkeypatch, capsys):
    from robustify.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(argv + ([] if "--dry-run" in argv else ["--dry-run"]))
    out, err = capsys.readouterr()
    assert code == 0, f"{where}: robustify {' '.join(argv)} --dry-run\n{err}"
    assert "plan:" in out and list(tmp_path.iterdir()) == [], where  # a plan, and nothing written


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lstrip("#").strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    fenced, out = False, set()
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.add(slug(line))
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # relative only (no https:, mailto:)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path):
    bad = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        rel = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
        if not file.exists():
            if rel not in PLANNED:
                bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{target}: no heading #{anchor} in {rel}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_readme_links_every_docs_page_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not missing, f"docs pages README does not link: {missing}"
    assert {t.partition("#")[0] for t in links(ROOT / "README.md")} >= PLANNED  # the "More" list
    assert len(readme.splitlines()) <= 260
    assert 'pip install -e ".[test]"' in readme and "python -m pytest -q" in readme  # what CI runs


def test_every_recipe_key_is_documented():
    from robustify.config import all_keys

    text = "\n".join(p.read_text() for p in PAGES)
    missing = [k for k in all_keys() if f"`{k}`" not in text]
    assert not missing, f"recipe keys no page documents (add them to docs/configuration.md): {missing}"


def test_design_draws_the_layers_the_layout_test_enforces():
    """docs/design.md's table of wings lists the layers of tests/test_layout.py, lowest first, each with its modules."""
    from tests.test_layout import LAYERS

    rows = [line.split("|")[1:-1] for line in (ROOT / "docs" / "design.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in {name for name, _ in LAYERS}]
    assert [r[0].strip() for r in rows] == [name for name, _ in LAYERS]
    for (name, prefixes), row in zip(LAYERS, rows, strict=True):
        for prefix in prefixes:
            if prefix == "robustify":
                continue
            leaf = prefix.removeprefix("robustify.").split(".")[-1]
            assert f"`{leaf}.py`" in row[1] or f"`{leaf}/`" in row[1], f"design.md: layer {name} misses {prefix}"
