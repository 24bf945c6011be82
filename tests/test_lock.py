"""One run per folder: the lock refuses a second run on a live run's folder, a killed run leaves nothing stuck, and
a folder left by a stopped run is tidied (temporary files) or restarted in place (only recipe.yaml)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from robustify import runlock
from robustify.cli import main
from robustify.errors import UserError
from tests.helpers import fake_checkpoint

HOLDER = """
import sys, time
from robustify import runlock
runlock.hold(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def live_holder(tmp_path: Path):
    """Another process holding ``tmp_path / 'run'`` (a live run), killed with SIGKILL at the end."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    yield run, proc
    proc.kill()
    proc.wait()


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_second_run_and_resume_on_a_live_run_are_refused(live_holder, capsys):
    run, proc = live_holder
    fake_checkpoint(run, 1)
    (run / "recipe.yaml").write_text("output_dir: x\n")
    before = _files(run)
    with pytest.raises(runlock.RunLocked, match=f"in use by a live run \\(pid {proc.pid} on "):
        runlock.hold(run)
    for args in (["finetune", "--output-dir", str(run)], ["finetune", "--output-dir", str(run), "--resume"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("robustify: error: run folder") and "live run" in err[0], err
    assert _files(run) == before  # nothing written, nothing tidied away under a live run


def test_a_killed_run_does_not_leave_its_folder_locked(live_holder):
    run, proc = live_holder
    with pytest.raises(runlock.RunLocked):
        runlock.hold(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with runlock.acquire(run):  # the kernel dropped the flock with the process
        assert (run / runlock.LOCK_NAME).is_file()
    assert not (run / runlock.LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_process_and_a_failed_start_leaves_no_folder(tmp_path: Path):
    run = tmp_path / "a" / "b" / "run"
    with runlock.acquire(run), runlock.acquire(run):
        assert run.is_dir()
    assert not (tmp_path / "a").exists()  # created for the lock, removed with it: nothing written


def test_killed_runs_temporary_files_are_cleaned_up(tmp_path: Path):
    run = tmp_path / "run"
    good = fake_checkpoint(run, 1)
    (good / "model.safetensors").write_bytes(b"x")
    leftovers = [run / ".export-k2j3" / "model.safetensors", run / ".metrics.json.abc.tmp",
                 run / "checkpoints" / ".tmp_ckpt_000000002" / "model.safetensors", run / "checkpoints" / "best.tmp"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    with runlock.acquire(run):
        note = runlock.prepare_run_dir(run, resume=True)
    assert "removed temporary files" in note and ".export-k2j3" in note
    assert not any(p.exists() for p in leftovers) and not (run / ".export-k2j3").exists()
    assert (good / "model.safetensors").read_bytes() == b"x"


def test_a_folder_stopped_before_its_first_checkpoint_restarts_in_place(tmp_path: Path):
    for resume, says in ((False, "starting it over"), (True, "nothing to resume, starting from scratch")):
        run = tmp_path / f"run-{resume}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "recipe.yaml").write_text("output_dir: x\n")
        with runlock.acquire(run):
            note = runlock.prepare_run_dir(run, resume=resume)
        assert "held only the recipe of a run stopped before its first checkpoint" in note and says in note
        assert not (run / "recipe.yaml").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize("setup,resume,message", [
    ("checkpoint", False, "already holds a run; pass --resume"),
    ("empty", True, "has no checkpoints to resume from"),
    ("other", False, "holds other files (notes.txt); choose an empty or new folder"),
    ("other", True, "holds other files (notes.txt)"),
])
def test_what_a_folder_holds_decides(tmp_path: Path, setup: str, resume: bool, message: str):
    run = tmp_path / "run"
    run.mkdir()
    if setup == "checkpoint":
        fake_checkpoint(run, 3)
    if setup == "other":
        (run / "notes.txt").write_text("mine")
    with runlock.acquire(run), pytest.raises(UserError) as err:
        runlock.prepare_run_dir(run, resume=resume)
    assert message in str(err.value)
    if setup == "other":
        assert (run / "notes.txt").read_text() == "mine"


def test_output_dir_that_is_a_file_or_unwritable_is_refused_up_front(tmp_path: Path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for out, needle in ((a_file, "is a file, not a folder"), (a_file / "run", "is a file, not a folder")):
        assert main(["finetune", "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert a_file.read_text() == "keep"
    ro = Path("/sys/robustify-test-run")  # sysfs: not writable even by root, where a read-only mount is not at hand
    try:
        ro.mkdir()
        ro.rmdir()
        pytest.skip("no unwritable location on this machine")
    except OSError:
        pass
    assert main(["finetune", "--output-dir", str(ro)]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Traceback" not in err
