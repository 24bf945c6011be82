"""Output a user can read and script: tables keep names whole at any width and in a pipe, every listing command has
``--json`` (valid JSON on stdout, nothing else there), argparse mistakes are one line, and the quickstart's
figures are stated once (assets/quickstart/expected.json) and said the same way everywhere."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from robustify import recipes
from robustify.cli import main
from robustify.publish import zoo
from robustify.report import Listing, print_table
from tests.test_config import run_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK_EVAL = ["eval", "quickstart", "--data", "quickstart", "--eps", "0.1", "--n-examples", "8", "--preset", "quick",
              "--attack", "clean,pgd", "--no-curve", "--no-checks", "--batch-size", "8"]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """The recipes catalogue, planned once for the module (planning every recipe takes seconds)."""
    return recipes.catalogue()


def render(table, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(table, crop=False)
    return buf.getvalue().splitlines()


def row_lines(lines: list[str], name: str) -> list[str]:
    """The table lines whose first cell is exactly ``name`` (a whole name, not a fragment)."""
    return [ln for ln in lines if re.match(rf"^[│|]\s{re.escape(name)}\s+[│|]", ln)]


# ------------------------------------------------------------------------------------------------ tables
@pytest.mark.parametrize("width", [80, 120, 200])
def test_recipes_table_keeps_every_name_whole(rows: list[dict], width: int):
    lines = render(recipes.catalogue_table(rows), width)
    assert max(len(ln) for ln in lines) <= width
    for r in rows:
        assert len(row_lines(lines, r["name"])) == 1, (r["name"], width)
    assert len(lines) < 4 * len(rows) + 12  # no 750-line table of fragments: a row is a few lines at most


def test_recipes_table_leaves_out_the_least_important_columns_first(rows: list[dict]):
    wide, narrow = render(recipes.catalogue_table(rows), 400), render(recipes.catalogue_table(rows), 80)
    assert "passes" in "\n".join(wide[:4]) and "left out" not in "\n".join(wide)
    caption = next(ln for ln in narrow if "left out to fit 80 columns" in ln)
    assert caption.split(": ", 1)[1].split(", ")[0] == "passes"  # the first of recipes.CATALOGUE_DROP
    assert "expected" in "\n".join(narrow[:5])  # the most important columns stay


def test_no_word_is_cut_when_columns_are_left_out():
    table = Listing(title="t", name="name", drop=("b", "c"))
    for header in ("name", "a", "b", "c"):
        table.add_column(header, overflow="fold")
    table.add_row("imagenet-convnext_tiny-linf2-fgsm-rs", "alpha beta (RobustBench", "x" * 20, "y" * 30)
    for width in (60, 80, 100):
        text = "\n".join(render(table, width))
        assert "imagenet-convnext_tiny-linf2-fgsm-rs" in text and "(RobustBench" in text, text
    assert "b" not in render(table, 60)[2]  # b went, with a note saying so
    assert any("left out to fit 60 columns: b, c" in ln for ln in render(table, 60))
    # narrower than the name itself: the name still prints whole (the terminal wraps the line)
    assert any("imagenet-convnext_tiny-linf2-fgsm-rs" in ln for ln in render(table, 30))


def test_pipe_width_is_columns_or_wide(monkeypatch, capsys):
    table = Listing(title="t", name="name")
    table.add_column("name")
    table.add_column("text", overflow="fold")
    table.add_row("a-name", " ".join(["word"] * 40))
    monkeypatch.delenv("COLUMNS", raising=False)
    print_table(table)  # capsys: not a terminal
    assert sum("word" in ln for ln in capsys.readouterr().out.splitlines()) == 1  # one line per row
    monkeypatch.setenv("COLUMNS", "60")
    print_table(table)
    out = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in out) <= 60 and sum("word" in ln for ln in out) > 1


def test_recipes_command_in_a_pipe_greps_whole_lines():
    """The real process writing to a pipe (not a terminal), COLUMNS unset: ``robustify recipes | grep cifar10``."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-m", "robustify", "recipes"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    hits = [ln for ln in res.stdout.splitlines() if "cifar10" in ln]
    expected = [n for n in recipes.recipe_names() if "cifar10" in n]
    assert len(hits) == len(expected)  # one whole line per recipe
    for name in expected:
        line = next(ln for ln in hits if f"│ {name} " in ln)
        assert "@32px" in line and "not yet measured" in line  # the whole row, not a fragment
    assert re.search(r"^\[1\] Reference", res.stdout, re.M)  # the notes the expected cells point to


def test_cli_tables_at_80_columns(rows: list[dict], monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(recipes, "catalogue", lambda: rows)
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = out[: next(i for i, ln in enumerate(out) if ln.startswith("└")) + 1]
    assert max(len(ln) for ln in table) <= 80
    assert all(len(row_lines(table, r["name"])) == 1 for r in rows)
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in out) <= 80
    for e in zoo.load_zoo():
        assert len(row_lines(out, e.name + (" (demo)" if e.demo else " (imported)" if e.imported else ""))) == 1


# ------------------------------------------------------------------------------------------------ --json
def test_recipes_json(rows: list[dict], monkeypatch, capsys):
    monkeypatch.setattr(recipes, "catalogue", lambda: rows)
    assert main(["recipes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data] == recipes.recipe_names()
    r = next(r for r in data if r["name"] == "cifar10-resnet50-free8")
    assert r["threat_model"]["norm"] == "Linf" and r["stages"][1]["method"] == "free" and r["est_h100_hours"] > 0
    assert r["train_passes"] == sum(s["train_passes"] for s in r["stages"]) and r["global_batch"] == 128


def test_zoo_json(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    entries = zoo.load_zoo()
    assert [e["name"] for e in listed] == [e.name for e in entries]
    first = entries[0]
    assert main(["zoo", "show", first.name, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == listed[0] and shown["hub_id"] == first.hub_id and shown["clean_acc"] == first.clean_acc
    assert shown["load_command"] == first.load_command and shown["recipe_command"].startswith("robustify finetune")


def test_eval_json_is_the_report_and_nothing_else():
    res = run_cli(*QUICK_EVAL, "--json", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)  # stdout holds the JSON only
    assert report["n_examples"] == 8 and 0 <= report["pgd_acc"] <= report["clean_acc"] <= 1
    assert report["subset"]["split"] == "test" and report["threat_model"]["eps"] == pytest.approx(0.1)
    assert "8 examples (first 8 of test" in res.stderr  # the summary line went to stderr


def test_bench_json_with_data(tmp_path: Path):
    out = tmp_path / "bench.json"
    res = run_cli("bench", "--methods", "natural,fgsm-rs", "--batch-size", "8", "--steps", "1", "--warmup", "0",
                  "--data", "quickstart", "--data-images", "8", "--output", str(out), "--json",
                  env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report == json.loads(out.read_text())  # what --output writes
    assert [r["method"] for r in report["results"]] == ["natural", "fgsm-rs"] and "bound_by" in report
    assert f"wrote {out}" in res.stderr and "fgsm-rs:" in res.stderr  # notes to stderr, no table anywhere
    assert "┃" not in res.stdout + res.stderr


def test_bench_peers_json():
    res = run_cli("bench", "--peers", "--methods", "natural", "--batch-size", "8", "--rounds", "1", "--batches", "1",
                  "--json", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert {"hardware", "config", "results", "skipped"} <= set(report) and report["results"]


def test_json_mode_sends_everything_else_to_stderr(monkeypatch, capfd):
    """Whatever a --json command prints on the way (robustify, a library, C code, a child process) lands on stderr."""
    import robustify.bench.time_to_robust as ttr

    def fake(**kwargs) -> dict:
        print("a progress line")
        os.system("echo from a child process")  # writes to file descriptor 1 directly
        return {"speedup": 2.5, "recipe": kwargs["recipe"]}

    monkeypatch.setattr(ttr, "main", fake)
    assert main(["bench", "--time-to-robust", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == {"speedup": 2.5, "recipe": "quickstart"}
    assert "a progress line" in err and "from a child process" in err


def test_json_errors_are_one_line_and_leave_stdout_empty(capfd):
    assert main([*QUICK_EVAL, "--n-examples", "0", "--json"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.strip().splitlines() == ["robustify: error: --n-examples 0 is not accepted; use 1 or more"]


# ------------------------------------------------------------------------------------------------ argparse
@pytest.mark.parametrize("argv, needles", [
    (["finetune", "--bogus"], ["unknown option '--bogus'", "see 'robustify finetune --help'"]),
    (["finetune", "--dry-rn"], ["unknown option '--dry-rn' (did you mean --dry-run?)"]),
    (["zoo", "list", "--jsn"], ["'--jsn' (did you mean --json?)", "see 'robustify zoo list --help'"]),
    (["recipes", "extra"], ["unexpected argument 'extra'"]),
    (["eval"], ["the following arguments are required: MODEL", "see 'robustify eval --help'"]),
    (["push", "runs/x"], ["required: --repo-id"]),
    (["eval", "quickstart", "--norm", "L3"], ["invalid choice: 'L3'", "Linf", "L2"]),
    (["eval", "quickstart", "--eps"], ["argument --eps: expected one argument"]),
    (["bench", "--steps", "x"], ["argument --steps: invalid int value: 'x'"]),
    (["fintune"], ["invalid choice: 'fintune'", "finetune", "see 'robustify --help'"]),
])
def test_argument_mistakes_are_one_line(argv: list[str], needles: list[str], capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustify: error: "), captured.err
    assert "usage:" not in captured.err and captured.out == ""
    for needle in needles:
        assert needle in lines[0]


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: robustify eval") and "--json" in out and "--preset {standard,quick}" in out


# ------------------------------------------------------------------------------------------------ quickstart figures
def test_quickstart_figures_come_from_one_place(rows: list[dict], tmp_path: Path, monkeypatch, capsys):
    e = recipes.quickstart_expected()
    text = recipes.expected_text(e)
    assert f"{e['after']['clean_acc']:.1f}% clean / {e['after']['pgd_acc']:.1f}% PGD-10" in text
    # the recipe header (written by scripts/make_recipes.py from the same file)
    assert recipes.header(ROOT / "recipes" / "quickstart.yaml")["expected"] == text
    # the recipes table and --json
    assert next(r for r in rows if r["name"] == "quickstart")["expected"] == text
    # the dry-run
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--dry-run"]) == 0
    assert f"expected: {text}" in capsys.readouterr().out
    # --help
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert recipes.quickstart_help_text(e) in " ".join(capsys.readouterr().out.split())


def test_readme_states_the_quickstart_figures():
    """README's quickstart output and time say what expected.json says (README is written by hand)."""
    e = recipes.quickstart_expected()
    readme = (ROOT / "README.md").read_text()
    for when in ("before", "after"):
        clean, pgd = (f"{e[when][k]:.1f}%" for k in ("clean_acc", "pgd_acc"))
        assert any(when in ln and clean in ln and pgd in ln for ln in readme.splitlines()), (when, clean, pgd)
    assert f"about {e['seconds']:.0f} s" in readme
