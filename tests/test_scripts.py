"""The maintenance scripts (README's commands for the methods table, the recipes and the quickstart assets) still
import and parse their arguments against the current package: a renamed function must break a test, not a user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_imports_and_shows_help(script: Path):
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


def test_every_script_is_covered():
    assert {s.name for s in SCRIPTS} >= {"compare_methods.py", "make_recipes.py", "make_quickstart.py"}
