"""Integrity of a run folder: its record names the sha256 of its weights and every command checks it; a model whose
logits are not finite is never evaluated; resume continues only the same run; a damaged checkpoint falls back to the
older intact one; one writer at a time; config files that are not what they seem are one line each."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from robustify.cli import main

try:
    from tests.hub_server import LocalHub
    from tests.test_hub import robustify_cli
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub
    from test_hub import robustify_cli

QUICK_EVAL = ["--preset", "quick", "--attack", "clean", "--no-curve", "--no-checks", "--n-examples", "16"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustify: error: "), err
    return err[0]


@pytest.fixture
def run(tiny_runs, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_runs[0], tmp_path / "run"))


# ------------------------------------------------------------------------------ 1. the record names its weights
def test_the_record_names_the_sha256_of_the_exported_weights(tiny_runs):
    for run in tiny_runs:
        config, metrics = (json.loads((run / n).read_text()) for n in ("config.json", "metrics.json"))
        assert config["robustness"]["weights_sha256"] == metrics["weights_sha256"] == _sha(run / "model.safetensors")
    assert _sha(tiny_runs[0] / "model.safetensors") != _sha(tiny_runs[1] / "model.safetensors")


def test_eval_and_push_refuse_weights_from_another_run(run, tiny_runs, capsys):
    shutil.copy(tiny_runs[1] / "model.safetensors", run / "model.safetensors")  # loads fine: same architecture
    before = _files(run)
    assert main(["eval", str(run), *QUICK_EVAL]) == 2
    assert "model.safetensors is not the model its record describes" in _one_error(capsys)
    assert main(["push", str(run), "--repo-id", "robustify/x"]) == 2
    assert "model.safetensors is not the model its record describes" in _one_error(capsys)
    assert _files(run) == before  # nothing written


def test_config_and_metrics_of_different_runs_are_refused(run, tiny_runs, capsys):
    shutil.copy(tiny_runs[1] / "metrics.json", run / "metrics.json")
    assert main(["push", str(run), "--repo-id", "robustify/x"]) == 2
    assert "describe different weights" in _one_error(capsys)


def test_eval_refuses_non_finite_logits_before_writing_anything(run, tmp_path, capsys):
    state = load_file(str(run / "model.safetensors"))
    key = next(k for k in state if state[k].ndim == 4)
    state[key][:] = float("nan")
    save_file(state, str(run / "model.safetensors"), metadata={"format": "pt"})
    (run / "metrics.json").unlink()  # a plain timm folder now: no record to compare with, only the logits
    out = tmp_path / "out" / "eval.json"
    assert main(["eval", f"local-dir:{run}", "--data", "quickstart", "--eps", "8/255", *QUICK_EVAL,
                 "--output", str(out)]) == 2
    assert "logits are not finite" in _one_error(capsys)
    assert not out.exists() and not out.parent.exists()


def test_pull_refuses_a_repo_whose_weights_are_not_its_record(tiny_runs, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    with LocalHub(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        repo = "robustify/swapped"
        api.create_repo(repo)
        ops = [CommitOperationAdd(n, str(tiny_runs[0] / n)) for n in ("config.json", "metrics.json", "README.md")]
        ops.append(CommitOperationAdd("model.safetensors", str(tiny_runs[1] / "model.safetensors")))
        api.create_commit(repo, ops, commit_message="weights of another run")
        proc = robustify_cli(hub, tmp_path / "home", "pull", repo, "--local-dir", str(tmp_path / "dl"))
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and "not the model its record describes" in err[0], err


# ------------------------------------------------------------------------------------- 2. resume the same run only
def _resume(run: Path, *extra: str) -> int:
    return main(["finetune", "--output-dir", str(run), "--resume", *extra])


def test_resume_refuses_checkpoints_copied_from_another_run(run, tiny_runs, capsys):
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(tiny_runs[1] / "checkpoints", run / "checkpoints")
    before = _files(run)
    assert _resume(run) == 2
    err = _one_error(capsys)
    assert "--resume continues the same run, but checkpoint" in err and "train.seed: 1 -> 0" in err, err
    assert _files(run) == before


def test_resume_detects_an_edited_recipe_and_names_the_change(run, capsys):
    text = (run / "recipe.yaml").read_text()
    assert "# robustify: sha256 of the lines above" in text
    assert "\n  eps: 0.1\n" in text
    (run / "recipe.yaml").write_text(text.replace("\n  eps: 0.1\n", "\n  eps: 0.2\n"))
    assert _resume(run) == 2
    err = _one_error(capsys)
    assert "threat.eps: 0.1 -> 0.2" in err and "recipe.yaml was edited" in err, err


def test_resume_with_an_explicit_recipe_compares_it_with_the_run(run, capsys):
    assert _resume(run, "--recipe", "quickstart") == 2  # the tiny run is not the plain quickstart
    err = _one_error(capsys)
    assert err.startswith("robustify: error: --resume continues the same run") and "data.max_train_examples" in err


def test_resume_refuses_other_data_behind_the_same_recipe():
    from types import SimpleNamespace

    from robustify.config import build_config
    from robustify.errors import UserError
    from robustify.train.checkpoint import check_same_data, run_fingerprint

    cfg = build_config("quickstart")
    probe = {"probe_split": "heldout", "probe_indices_sha256": "aaaa"}
    loaders = SimpleNamespace(train_size=96, eval_size=32, num_classes=10, probe_record=probe)
    saved = run_fingerprint(cfg, loaders)
    check_same_data(Path("ckpt_000000002"), saved, cfg, loaders)  # the same data: accepted
    other = SimpleNamespace(train_size=97, eval_size=32, num_classes=10, probe_record=dict(probe,
                                                                                         probe_indices_sha256="b"))
    with pytest.raises(UserError, match=r"other data: data probe: .*; data train_size: 96 -> 97"):
        check_same_data(Path("ckpt_000000002"), saved, cfg, other)


# ------------------------------------------------------------------------------------------ 3. damaged checkpoints
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_intact_one(run, tiny_runs, capsys):
    from robustify.train.checkpoint import checkpoint_dirs

    older, newest = checkpoint_dirs(run)
    data = (newest / "optimizer.bin").read_bytes()
    (newest / "optimizer.bin").write_bytes(data[: len(data) // 2])  # truncated
    assert _resume(run) == 0
    out = capsys.readouterr().out
    assert f"resuming from the older intact checkpoint {older.name}: checkpoint {newest.name} is damaged " \
           f"(optimizer.bin has {len(data) // 2} bytes, {len(data)} were written" in out, out
    assert (run / "checkpoints" / f"damaged_{newest.name}").is_dir()
    # the epoch trained again from the older checkpoint is bit-identical: the same weights as the original run
    assert _sha(run / "model.safetensors") == _sha(tiny_runs[0] / "model.safetensors")


def test_no_intact_checkpoint_says_how_to_start_again(run, capsys):
    from robustify.train.checkpoint import checkpoint_dirs

    for folder in checkpoint_dirs(run):
        (folder / "model.safetensors").unlink()
    assert _resume(run) == 2
    err = _one_error(capsys)
    assert "no intact checkpoint to resume from" in err and "model.safetensors is missing" in err, err
    assert f"robustify finetune --recipe {run / 'recipe.yaml'}" in err


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    import subprocess

    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")


def _umount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(mount: Path, leave: int) -> None:
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_a_full_disk_at_export_or_eval_is_one_line_and_changes_nothing(tiny_runs, tmp_path, capsys):
    """A real full file system (tmpfs, needs root as CI runs): re-exporting a finished run (--resume) and eval's
    outputs (eval.json, metrics.json, config.json, card, plot) fail in one line, exit 2, the folder unchanged."""
    mount = tmp_path / "small"
    _tmpfs(mount, "24m")
    try:
        run = Path(shutil.copytree(tiny_runs[0], mount / "run"))
        _fill(mount, 24 * 1024)
        before = _files(run)
        assert _resume(run) == 2
        err = _one_error(capsys)
        assert "no space left on the device" in err and "--resume" in err, err
        assert main(["eval", str(run), *QUICK_EVAL]) == 2
        err = _one_error(capsys)
        assert "no space left on the device" in err and "nothing was written" in err, err
        assert _files(run) == before  # no temporary file, no half-updated record
    finally:
        _umount(mount)


# -------------------------------------------------------------------------------------- 4. one writer at a time
HOLDER = """
import sys, time
from robustify import runlock
runlock.current_command = "eval"
runlock.hold(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_eval_and_push_are_refused_while_another_command_holds_the_folder(run, capsys):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        before = _files(run)
        for args in (["eval", str(run), *QUICK_EVAL], ["push", str(run), "--repo-id", "robustify/x"],
                     ["finetune", "--output-dir", str(run), "--resume"]):
            assert main(args) == 2
            err = _one_error(capsys)
            assert f"run folder {str(run)!r} is in use by a live run (pid {proc.pid} on " in err, err
            assert "robustify eval)" in err
        assert _files(run) == before
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- 5. config files
@pytest.mark.parametrize("content,expected", [
    (b"threat:\n  eps: 0.1\n  eps: 0.2\n", "key 'eps' is given twice (lines 2 and 3)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is a binary file, not a YAML text file"),
    ("threat:\n  eps: 0.1  # caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    (None, "is a folder, not a YAML file"),
])
def test_recipe_files_that_are_not_recipes_are_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "recipe.yaml"
    if content is None:
        path = tmp_path
    else:
        path.write_bytes(content)
    assert main(["finetune", "--recipe", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert expected in _one_error(capsys)
    assert main(["finetune", "--recipe", str(path), "--dry-run"]) == 2
    assert expected in _one_error(capsys)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- 6. messages and the dry run
def test_dry_run_plans_the_steps_the_run_takes_and_refuses_what_it_refuses(tiny_runs, capsys):
    from robustify.recipes import plan

    try:
        from tests.conftest import TINY
    except ImportError:
        from conftest import TINY
    cost = json.loads((tiny_runs[0] / "metrics.json").read_text())["cost"]
    assert plan("quickstart", TINY).stages[0].optimizer_steps == cost["optimizer_steps"]  # the probe is held out
    sets = ["--set", "data.max_train_examples=64", "--set", "train.probe_size=64"]
    assert main(["finetune", "--dry-run", *sets]) == 2
    assert "train.probe_size=64 cannot be held out of 64 training examples" in _one_error(capsys)


def test_messages_point_to_the_right_fix(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "faces" / "cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "faces" / "cat" / f"{i}.png")
    assert main(["finetune", "--data", f"imagefolder:{tmp_path / 'faces'}", "--dry-run"]) == 2
    err = _one_error(capsys)
    assert "has one class folder ('cat'); a classifier needs at least two" in err, err
    assert main(["finetune", "--dry-run", "--set", "stages=natural"]) == 2
    assert "use a list such as [{name: head" in _one_error(capsys)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["pull", "robustify/x", "--local-dir", str(a_file)]) == 2
    assert "is a file, not a folder" in _one_error(capsys)
    import subprocess

    read_only = tmp_path / "ro"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
                      capture_output=True).returncode == 0:  # needs root, as CI runs
        try:
            assert main(["pull", "robustify/x", "--local-dir", str(read_only / "dl")]) == 2
            err = _one_error(capsys)
            assert "cannot be written (Read-only file system); give a writable folder" in err, err
        finally:
            _umount(read_only)
