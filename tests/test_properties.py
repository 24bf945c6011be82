"""Property-based (hypothesis): whatever ``--set`` keys/values and ``finetune``/``eval`` flags a user types, robustify
either accepts a config whose every number is finite and in range, or refuses with exit status 2 and one line. Never a
traceback, never a file written by a refused command.

Runs in-process and stops each accepted command where the real work would begin (loading the model for finetune,
the evaluation for eval), after the run folder was locked and checked, so the whole file takes seconds. Derandomized
and bounded, so CI sees the same examples every time.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from robustify.cli import main
from robustify.config import FinetuneConfig, all_keys, build_config, flatten
from robustify.errors import ConfigError
from tests.helpers import fake_checkpoint

SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + ".-_ ", max_size=8)
TRICKY = ["nan", "inf", "-inf", ".nan", ".inf", "8/255", "8/0", "1e400", "", "null", "none", "true", "no", "[]",
          "[0.5, 0.75]", "[2, -1]", "[0.75, 0.5]", "{a: 1}", "²", "0", "-1", "0.0", "1", "255", "1e-12", "[", "'x'"]
VALUES = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(TRICKY),
    SAFE_TEXT,
)
KNOWN = st.sampled_from([k for k in all_keys() if k != "train.log_with"])
KEYS = st.one_of(KNOWN, KNOWN, KNOWN, SAFE_TEXT,
                 st.sampled_from(["train.lr", "schedule.lrate", "model", "eps", "a..b", ""]))
ASSIGNMENTS = st.lists(st.one_of(st.tuples(KEYS, VALUES).map("=".join), SAFE_TEXT), max_size=4)
SETTINGS = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check_in_range(cfg: FinetuneConfig) -> None:
    for key, value in flatten(cfg.to_dict()).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float):
                assert math.isfinite(v), (key, v)
    assert cfg.train.log_every >= 1 and cfg.optim.weight_decay >= 0 and 0 <= cfg.optim.momentum < 1
    assert cfg.output_dir.strip() and cfg.schedule.lr > 0 and cfg.train.seed >= 0
    assert cfg.data.max_train_examples is None or cfg.data.max_train_examples >= 1
    assert cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0


@settings(SETTINGS, max_examples=150)
@given(ASSIGNMENTS)
def test_set_overrides_build_a_valid_config_or_one_line_error(assignments: list[str]):
    try:
        cfg = build_config("quickstart", assignments)
    except ConfigError as e:
        assert "\n" not in str(e).strip() and str(e).strip()
        event("refused")
        return
    event("accepted")
    _check_in_range(cfg)


class _Reached(Exception):
    """Raised where the real work would start: every check before it has passed."""


def _snapshot(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


FINETUNE_FLAGS = st.fixed_dictionaries({}, optional={
    "--eps": VALUES, "--epochs": VALUES, "--method": st.one_of(st.sampled_from(["fgsm-rs", "free", "pgd"]), SAFE_TEXT),
    "--output-dir": st.sampled_from(["", "run", "a_file", "a_file/run", "full_run", "/sys/robustify-x", "run-{time}"]),
})
EVAL_FLAGS = st.fixed_dictionaries({}, optional={
    "--eps": VALUES, "--n-examples": st.integers(-3, 3).map(str), "--batch-size": st.integers(-1, 2).map(str),
    "--output": st.sampled_from(["", "out.json", ".", "a_file/x.json", "/sys/x.json"]),
    "--attack": st.sampled_from(["clean", "pgd", "bogus", ""]), "--norm": st.sampled_from(["Linf", "L2", "L1"]),
})


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import robustify.evaluate.report as evaluate
    import robustify.train.trainer as trainer

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(trainer, "load_backbone", reached)  # after the run folder was locked and checked
    monkeypatch.setattr(evaluate, "run_eval", reached)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("keep")
    fake_checkpoint(tmp_path / "full_run", 1)
    return tmp_path


def _run(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except _Reached:
        return "reached"
    except SystemExit as e:  # argparse's own usage error (e.g. a flag without its value)
        assert e.code == 2
        capsys.readouterr()
        return "usage"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 2, (argv, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robustify: error: "), (argv, err)
    return "refused"


@settings(SETTINGS, max_examples=60)
@given(flags=FINETUNE_FLAGS, assignments=ASSIGNMENTS)
def test_finetune_flags_never_traceback_nor_write(workdir: Path, capsys, flags: dict[str, str],
                                                  assignments: list[str]):
    before = _snapshot(workdir)
    argv = ["finetune", *[x for kv in flags.items() for x in kv]]
    for a in assignments:
        argv += ["--set", a]
    event(_run(argv, capsys))
    assert _snapshot(workdir) == before  # refused or stopped before training: nothing written or left behind
    assert (workdir / "a_file").read_text() == "keep"


@settings(SETTINGS, max_examples=60)
@given(flags=EVAL_FLAGS)
def test_eval_flags_never_traceback_nor_write(workdir: Path, capsys, flags: dict[str, str]):
    before = _snapshot(workdir)
    event(_run(["eval", "quickstart", "--data", "quickstart", *[x for kv in flags.items() for x in kv]], capsys))
    assert _snapshot(workdir) == before
