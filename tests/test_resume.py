"""Exact resume: a run interrupted anywhere (an invocation limit, kill -9 mid-epoch, SIGTERM) and continued with
``--resume`` ends with the same weights as the uninterrupted run; ``--resume`` refuses to continue a different run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robustify.cli import main as cli
from robustify.config import build_config
from robustify.data import QUICKSTART_DIR
from robustify.train.checkpoint import checkpoint_dirs
from robustify.train.trainer import finetune

SMALL = ["data.max_train_examples=384", "train.epochs=2", "eval.n_examples=64", "eval.pgd_steps=2",
         "train.probe_size=64", "train.probe_steps=2", "data.batch_size=64", "train.log_every=1"]
PATHS = {"in-memory": [], "workers": ["data.cache_mb=0", "data.num_workers=2"]}


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bit-identical, not merely close


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Uninterrupted reference runs, trained on first use."""
    cache: dict[tuple[str, str], Path] = {}

    class Lazy(dict):
        def __missing__(self, key: tuple[str, str]) -> Path:
            method, path = key
            run = tmp_path_factory.mktemp("straight") / f"{method}-{path}"
            finetune(build_config("quickstart", SMALL + PATHS[path] + [f"method.name={method}", f"output_dir={run}"]))
            self[key] = run
            return run

    return Lazy(cache)


def test_stop_after_then_resume_equals_uninterrupted(tmp_path: Path, straight):
    run = tmp_path / "run"
    finetune(build_config("quickstart", SMALL + [f"output_dir={run}", "train.stop_after=1"]))
    assert len(checkpoint_dirs(run)) == 1 and not (run / "model.safetensors").exists()
    metrics = finetune(build_config(str(run / "recipe.yaml"), ["train.stop_after=null"]), resume=True)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["history"] == metrics["history"]
    _same_weights(straight["fgsm-rs", "in-memory"], run)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import robustify.train.trainer as trainer
    sig, after = getattr(signal, sys.argv[2]), int(sys.argv[3])
    saved = trainer.checkpoint
    count = [0]
    def checkpoint(run):  # the process dies right after its Nth mid-epoch checkpoint is on disk
        where = saved(run)
        count[0] += run.state.batch > 0
        if count[0] == after and run.state.batch > 0:
            os.kill(os.getpid(), sig)
        return where
    trainer.checkpoint = checkpoint
    from robustify.cli import main
    sets = [a for kv in sys.argv[4:] for a in ("--set", kv)]
    sys.exit(main(["finetune", "--output-dir", sys.argv[1], *sets]))
""")


# each method and each data path once (the full 2x2 matrix cost a minute more of the suite's time for no other code)
@pytest.mark.parametrize("method,path", [("fgsm-rs", "in-memory"), ("free", "workers")])
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path, straight, method: str, path: str):
    run = tmp_path / "run"
    args = SMALL + PATHS[path] + [f"method.name={method}", "train.checkpoint_every=2"]
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), "SIGKILL", "2", *args], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    state = json.loads((checkpoint_dirs(run)[-1] / "trainer_state.json").read_text())
    assert state["batch"] > 0  # the last checkpoint is in the middle of an epoch
    assert cli(["finetune", "--output-dir", str(run), "--resume"]) == 0
    _same_weights(straight[method, path], run)


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path: Path, straight):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), "SIGTERM", "1", *SMALL,
                          "train.checkpoint_every=2"], capture_output=True, text=True, timeout=600)
    # the signal arrives right after a checkpoint; the trainer finishes the minibatch, checkpoints again and exits
    assert res.returncode == 143, res.stderr[-2000:]
    assert f"robustify finetune --output-dir {run} --resume" in res.stderr
    assert cli(["finetune", "--output-dir", str(run), "--resume"]) == 0
    _same_weights(straight["fgsm-rs", "in-memory"], run)


def test_resume_refuses_a_different_run_and_extends_epochs(tmp_path: Path, capsys):
    run = tmp_path / "run"
    finetune(build_config("quickstart", SMALL + [f"output_dir={run}", "train.epochs=1", "threat.eps=0.1"]))
    capsys.readouterr()
    for change in (["--eps", "0.2"], ["--method", "pgd"], ["--set", "schedule.lr=0.1"], ["--set", "train.seed=1"]):
        assert cli(["finetune", "--output-dir", str(run), "--resume", *change]) == 2
        err = capsys.readouterr().err
        assert err.startswith("robustify: error: --resume continues the same run") and err.count("\n") == 1, err
    before = (run / "model.safetensors").read_bytes()
    assert cli(["finetune", "--output-dir", str(run), "--resume", "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "train.epochs 1 -> 2" in out
    assert (run / "model.safetensors").read_bytes() != before
    assert [h["epoch"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [1, 2]


STAGES = ["--set", "stages=[{name: natural, method: {name: natural}, train: {epochs: 1}}, {name: adversarial}]"]


def test_stages_run_in_order_and_resume_inside_the_right_one(tmp_path: Path):
    """A recipe's stages run one after another; a run stopped inside the second resumes there, bit-identically."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    sets = [a for kv in SMALL for a in ("--set", kv)]
    assert cli(["finetune", "--output-dir", str(straight), *sets, *STAGES]) == 0
    history = json.loads((straight / "metrics.json").read_text())["history"]
    assert [(h["stage"], h["epoch"]) for h in history] == [("natural", 1), ("adversarial", 1), ("adversarial", 2)]
    assert cli(["finetune", "--output-dir", str(run), *sets, *STAGES, "--set", "train.stop_after=2"]) == 0
    state = json.loads((checkpoint_dirs(run)[-1] / "trainer_state.json").read_text())
    assert (state["stage"], state["epoch"]) == (1, 1)
    assert cli(["finetune", "--output-dir", str(run), "--resume", "--set", "train.stop_after=null"]) == 0
    _same_weights(straight, run)


def test_a_low_resolution_stage_is_judged_at_the_exported_resolution(tmp_path: Path, monkeypatch, straight):
    """Progressive resizing (a 24 px stage, then the quickstart's 32 px): the 24 px stage trains at 24 px, but its
    "before" evaluation, probes, guard and best-robust selection see the exported 32 px inputs, so "before" is the
    same number as a single-stage run's and every verdict of the run compares like with like."""
    from robustify.train import trainer

    seen: list[tuple[int, ...]] = []
    real = trainer.sharded_pgd_accuracy

    def spy(model, x, *args, **kwargs):  # the real attack, recording the resolution it was given
        seen.append(tuple(x.shape[-2:]))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(trainer, "sharded_pgd_accuracy", spy)
    two = ["stages=[{name: low-res, data: {image_size: 24}, train: {epochs: 1}}, {name: full-res, train: {epochs: 1}}]"]
    m2 = finetune(build_config("quickstart", SMALL + two + [f"output_dir={tmp_path / 'two'}"]))
    assert seen and set(seen) == {(32, 32)}, seen  # before, 2 probes, after
    assert len(seen) == 4
    # a single-stage run's "before" (the uninterrupted reference: the same backbone, examples and evaluation; the
    # number of epochs does not enter it)
    m1 = json.loads((straight["fgsm-rs", "in-memory"] / "metrics.json").read_text())
    assert m2["before"] == m1["before"]  # the same backbone on the same examples at the same resolution
    assert m2["evaluations"][0]["input_size"] == [3, 32, 32]


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_partial_checkpoint(tmp_path: Path, capsys):
    """A real full file system (a 2 MB tmpfs; needs root, as CI runs): exit 2, one line, nothing half-written."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        run = mount / "run"
        assert cli(["finetune", "--output-dir", str(run), *[a for kv in SMALL for a in ("--set", kv)]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no space left on the device" in err[0] and "--resume" in err[0], err
        assert not list((run / "checkpoints").glob(".tmp_*"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # lazy: detached even if a file is open


def test_a_key_added_after_the_checkpoint_compares_as_its_default():
    """A checkpoint made before a recipe key existed (e.g. data.decode) still resumes with the default; a change of
    substance is still refused, and the decode route may change on resume (it changes no example, crop or flip)."""
    from robustify.config import FinetuneConfig, flatten
    from robustify.train.checkpoint import resume_changes

    current = flatten(FinetuneConfig().to_dict())
    saved = {k: v for k, v in current.items() if k not in ("data.decode", "method.fosc")}
    assert resume_changes(saved, current) == ([], [])
    assert resume_changes(saved, {**current, "data.decode": "device"}) == ([], [])
    refused, _ = resume_changes(saved, {**current, "method.fosc": True})
    assert refused == ["method.fosc: False -> True"]


# Time-sliced runs of each option (issue 26): stop after one epoch, resume until done, bit-identical weights. The
# options whose own test file already does this (awp, eps warm-up, local SGD, sign compression, pure-bf16, and the
# plain methods above) are not repeated alone; the others alone and the two-stage LP-FT recipe (stopped at the
# stage boundary) with each option. The suite runs SLICED_FAST (3 tiny runs each); ROBUSTIFY_ALL_PAIRS=1 runs them all.
SLICED_ALONE = [("ema",), ("fosc",), ("trades",), ("L2",), ("L1",), ("unlabeled",), ("freeze",), ("few-shot",),
                ("grad-accum",), ("deterministic",), ("powersgd",), ("mixup",), ("label-smoothing",), ("randaugment",),
                ("extra",)]
SLICED_LPFT = [("lp-ft",)] + [("lp-ft", n) for n in ("awp", "ema", "eps-warmup", "local-sgd", "sign", "powersgd",
                                                     "unlabeled", "pure-bf16", "fosc", "trades", "L2", "L1",
                                                     "deterministic", "few-shot", "grad-accum", "mixup",
                                                     "label-smoothing", "randaugment", "extra")]
SLICED_FAST = {("trades",), ("lp-ft", "awp")}


@pytest.mark.parametrize("names", SLICED_ALONE + SLICED_LPFT, ids=lambda n: "+".join(n))
def test_a_time_sliced_run_of_an_option_equals_the_uninterrupted_one(names: tuple[str, ...], tmp_path: Path):
    from tests.test_compose import compose

    if names not in SLICED_FAST and not os.environ.get("ROBUSTIFY_ALL_PAIRS"):
        pytest.skip("set ROBUSTIFY_ALL_PAIRS=1 to run every option's time-sliced run")
    with np.load(QUICKSTART_DIR / "digits.npz") as a:
        x = a["x_test"][-48:]
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, x_train=x, y_train=np.zeros(len(x), np.int64), x_test=x[:1], y_test=np.zeros(1, np.int64))
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        straight, sliced = tmp_path / "straight", tmp_path / "sliced"
        recipe, sets = compose(names, unlabeled, straight)
        sets += ["train.epochs=2"] if "lp-ft" not in names and "fosc" not in names else []  # one epoch per slice
        finetune(build_config(recipe, sets))
        recipe, sets = compose(names, unlabeled, sliced)
        sets += ["train.epochs=2"] if "lp-ft" not in names and "fosc" not in names else []
        finetune(build_config(recipe, [*sets, "train.stop_after=1"]))
        assert len(checkpoint_dirs(sliced)) == 1 and not (sliced / "model.safetensors").exists()
        finetune(build_config(str(sliced / "recipe.yaml"), ["train.stop_after=null"]), resume=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    _same_weights(straight, sliced)
