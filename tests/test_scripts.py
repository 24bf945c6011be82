"""The maintenance scripts (README's commands for the methods table, the recipes and the quickstart assets) still
import and parse their arguments against the current package: a renamed function must break a test, not a user."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_imports_and_shows_help(script: Path, monkeypatch, capsys):
    """Each script runs as ``python scripts/NAME.py --help`` would, in this interpreter (torch is imported once)."""
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_every_script_is_covered():
    assert {s.name for s in SCRIPTS} >= {"compare_methods.py", "make_recipes.py", "make_quickstart.py"}
