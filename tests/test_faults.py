"""Fault injection on a finished run folder: one random corruption at a time (truncate, flip bytes, delete, replace
with another run's file) of one file, then every command that reads the folder (``push`` to the local Hub, ``pull``,
``eval``, ``finetune --resume``). Each must either work correctly or refuse in one line with exit status 2, and none
may ever publish or report numbers that do not belong to the weights beside them.

"Correctly" is checked against the untouched run: a pushed or pulled repo holds the run's own weights with the run's
own results (and a record that names those weights), an evaluation reports what the untouched run's evaluation
reports, a resumed run ends with the run's own weights (exact resume, from the older checkpoint if it must).

The sample of corruptions is fixed and seeded (a handful of files every run must survive, plus a seeded draw from
the rest), so the test is bounded in time and a failure can be replayed. Every command runs in one interpreter
started with the local Hub's environment (``huggingface_hub`` reads ``HF_ENDPOINT`` at import time).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

try:
    from tests.hub_server import LocalHub
    from tests.test_hub import _env
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub
    from test_hub import _env

KINDS = ("truncate", "flip", "delete", "replace")
# corruptions every run of this test applies (file, kind); the rest is a seeded draw
MUST = [("model.safetensors", "replace"), ("metrics.json", "flip"), ("config.json", "replace"),
        ("recipe.yaml", "flip"), ("NEWEST/optimizer.bin", "truncate"), ("NEWEST/trainer_state.json", "flip")]
DRAWN = 3
SEED = 18
EVAL = ["--preset", "quick", "--attack", "clean", "--no-curve", "--no-checks", "--n-examples", "16"]

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from robustify.cli import main

    for case in json.loads(open(sys.argv[1]).read()):
        done = {}
        for name, args in case["commands"]:
            if name == "pull" and done.get("push") != 0:
                continue  # nothing was published to pull
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(args)
                except BaseException:  # a traceback is a failure of the test, recorded with its text
                    rc, _ = "traceback", err.write(traceback.format_exc())
            done[name] = rc
            from accelerate.state import AcceleratorState, GradientState  # as conftest does between tests

            AcceleratorState._reset_state(reset_partial_state=False)
            GradientState._reset_state()
            with open(sys.argv[2], "a") as f:  # one line per command: a slow machine's partial results survive
                f.write(json.dumps({"case": case["name"], "command": name, "rc": rc, "stdout": out.getvalue(),
                                    "stderr": err.getvalue()}) + "\\n")
""")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _newest(run: Path) -> str:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("ckpt_"))[-1]


def _corrupt(run: Path, other: Path, rel: str, kind: str, rng: random.Random) -> None:
    path = run / rel
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "flip":
        buf = bytearray(data)
        for i in rng.sample(range(len(buf)), k=min(3, len(buf))):
            buf[i] ^= 0xFF
        path.write_bytes(bytes(buf))
    elif kind == "delete":
        path.unlink()
    else:
        shutil.copy(other / rel, path)


def _cases(run: Path, other: Path) -> list[tuple[str, str]]:
    newest = _newest(run)
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    must = [(f.replace("NEWEST", f"checkpoints/{newest}"), k) for f, k in MUST]
    rest = [(f, k) for f in files for k in KINDS if (f, k) not in must and (k != "replace" or (other / f).is_file())]
    return must + random.Random(SEED).sample(rest, DRAWN)


def _one_line_refusal(r: dict) -> bool:
    lines = [ln for ln in r["stderr"].splitlines() if ln.startswith("robustify: error: ")]
    return r["rc"] == 2 and len(lines) == 1 and "Traceback" not in r["stderr"]


def test_every_command_works_or_refuses_in_one_line_and_never_reports_foreign_numbers(tiny_runs, tmp_path):
    pristine, other = tiny_runs
    truth = json.loads((pristine / "metrics.json").read_text())
    weights = _sha(pristine / "model.safetensors")
    rng = random.Random(SEED)
    cases, dirs = [], {}
    for i, (rel, kind) in enumerate([("", "none"), *_cases(pristine, other)]):
        name = f"{i}-{kind}-{rel.replace('/', '_') or 'untouched'}"
        run = Path(shutil.copytree(pristine, tmp_path / "runs" / name))
        if kind != "none":
            _corrupt(run, other, rel, kind, rng)
        dirs[name] = run
        repo = f"robustify/fault-{i}"
        cases.append({"name": name, "commands": [
            ("push", ["push", str(run), "--repo-id", repo]),
            ("pull", ["pull", repo, "--local-dir", str(tmp_path / "pulled" / name)]),
            ("eval", ["eval", str(run), *EVAL]),
            ("resume", ["finetune", "--output-dir", str(run), "--resume"]),
        ]})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    with LocalHub(tmp_path / "hub") as hub:
        env = _env(hub, tmp_path / "home") | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "cases.json"), str(tmp_path / "out.json")],
                              env=env, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = [json.loads(line) for line in (tmp_path / "out.json").read_text().splitlines()]
        hub_files = {f"robustify/fault-{i}": hub.repo_files(f"robustify/fault-{i}") for i, case in enumerate(cases)
                     if by_command(results, case["name"], "push")["rc"] == 0}

    by_case: dict[str, dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["command"]] = r
    baseline = by_case[cases[0]["name"]]
    assert all(r["rc"] == 0 for r in baseline.values()), baseline  # the untouched run: every command works
    reference_eval = json.loads((dirs[cases[0]["name"]] / "eval.json").read_text())["clean_acc"]

    for i, case in enumerate(cases):
        got, run = by_case[case["name"]], dirs[case["name"]]
        for r in got.values():
            assert r["rc"] == 0 or _one_line_refusal(r), (case["name"], r["command"], r["rc"], r["stderr"][-2000:])
        if got["push"]["rc"] == 0:  # published: the run's own weights, with the run's own numbers
            files = hub_files[f"robustify/fault-{i}"]
            published = json.loads(files["metrics.json"])
            assert hashlib.sha256(files["model.safetensors"]).hexdigest() == weights == published["weights_sha256"]
            assert published["after"]["clean_acc"] == truth["after"]["clean_acc"], case["name"]
            assert published["after"]["pgd_acc"] == truth["after"]["pgd_acc"], case["name"]
            assert got["pull"]["rc"] == 0, got["pull"]
            assert _sha(tmp_path / "pulled" / case["name"] / "model.safetensors") == weights
        if got["eval"]["rc"] == 0:  # an evaluation of these weights reports what the untouched run's reports
            assert json.loads((run / "eval.json").read_text())["clean_acc"] == reference_eval, case["name"]
        if got["resume"]["rc"] == 0:  # exact resume (from the older checkpoint if it must): the run's own weights
            assert _sha(run / "model.safetensors") == weights, (case["name"], got["resume"]["stdout"][-500:])
            record = json.loads((run / "metrics.json").read_text())
            assert record["weights_sha256"] == weights and record["after"] == truth["after"] | {
                "evaluated_at": record["after"]["evaluated_at"]}, case["name"]
    # the corruptions are real: a record that no longer describes its weights is never published, and a damaged
    # newest checkpoint is resumed from the older one
    for i, (rel, _kind) in enumerate(MUST, start=1):
        got = by_case[cases[i]["name"]]
        if rel.startswith("NEWEST/"):
            assert "resuming from the older intact checkpoint" in got["resume"]["stdout"], got["resume"]
        else:
            assert got["push"]["rc"] == 2, (cases[i]["name"], got["push"])
    refused = sum(r["rc"] == 2 for r in results)
    print(f"{len(cases)} cases, {len(results)} commands, {refused} refused in one line")


def by_command(results: list[dict], case: str, command: str) -> dict:
    return next(r for r in results if r["case"] == case and r["command"] == command)
