"""``robustify bench``: the report's schema and cost accounting, and its errors. Never its timings.

Timings depend on the machine and on whatever else runs on it (these tests share 2 CPU cores with other suites), so
nothing here compares one time with another: the tests check that every time is measured (positive) and that the
pass counts and relative costs follow from the method settings.
"""

from __future__ import annotations

import json

import pytest

from robustify.cli import main as cli_main
from tests.test_config import run_cli

TINY = ["--batch-size", "16", "--warmup", "2", "--steps", "3"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One tiny bench of all four methods through the real command (a fresh process: its own Accelerator state)."""
    out = tmp_path_factory.mktemp("bench") / "sub" / "bench.json"
    # one intra-op thread: on a shared 2-core machine, 2 OpenMP threads competing with other processes can make a
    # step 100x slower (spin-waits); the numbers are not checked, only the time the test takes matters here
    res = run_cli("bench", *TINY, "--methods", "natural,fgsm-rs,free,pgd", "--epochs", "8",
                  "--set", "method.steps=3", "--set", "method.replays=3", "--output", str(out),
                  "--data", "quickstart", "--data-images", "8",
                  env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text()), res.stdout


def test_schema(report: tuple[dict, str]):
    data, _ = report
    assert set(data) == {"hardware", "config", "results", "data_pipeline", "bound_by", "state_memory"}
    hw, cfg = data["hardware"], data["config"]
    # weights + gradients + optimizer state, measured per precision: pure-bf16 holds 2-byte weights and gradients
    # and two 2-byte buffers (SGD momentum, Kahan compensation) where fp32 holds three 4-byte tensors
    mem = data["state_memory"]
    assert set(mem) == {"no", "pure-bf16"}
    assert mem["pure-bf16"]["weights"] * 2 == mem["no"]["weights"] == mem["no"]["optimizer_state"]
    assert mem["pure-bf16"]["optimizer_state"] == mem["pure-bf16"]["weights"] * 2
    assert mem["pure-bf16"]["total"] * 3 == mem["no"]["total"] * 2
    assert {"device", "device_type", "device_name", "torch", "cpu_count", "mixed_precision", "channels_last"} <= set(hw)
    # 'auto' (the default) resolved by the hardware: fp32 and contiguous on a CPU, bf16 and channels-last on CUDA
    cuda = hw["device_type"] == "cuda"
    assert hw["device_type"] in ("cpu", "cuda") and (cuda or (hw["mixed_precision"] == "no"
                                                              and hw["channels_last"] is False))
    assert cfg["model"] == "quickstart" and cfg["input_size"] == [3, 32, 32] and cfg["batch_size"] == 16
    assert cfg["warmup_steps"] == 2 and cfg["timed_steps"] == 3 and cfg["epochs"] == 8
    assert cfg["methods"] == ["natural", "fgsm-rs", "free", "pgd"]
    assert [r["method"] for r in data["results"]] == cfg["methods"]
    keys = {"method", "seconds_per_batch", "images_per_second", "passes_per_batch", "relative_cost_per_batch",
            "relative_cost_per_run", "epochs_run", "step_seconds", "peak_memory_mb", "note"}
    for r in data["results"]:
        assert keys <= set(r), keys - set(r)
        assert len(r["step_seconds"]) == 3


def test_passes_follow_the_method_settings(report: tuple[dict, str]):
    passes = {r["method"]: r["passes_per_batch"] for r in report[0]["results"]}
    assert passes == {"natural": 1, "fgsm-rs": 2, "free": 3, "pgd": 3 + 1}  # free: m; pgd: steps + 1


def test_times_are_measured_and_costs_are_relative_to_natural(report: tuple[dict, str]):
    results = {r["method"]: r for r in report[0]["results"]}
    for r in results.values():
        assert all(t > 0 for t in r["step_seconds"]) and r["seconds_per_batch"] > 0
        assert r["images_per_second"] == pytest.approx(16 / r["seconds_per_batch"])
        assert r["relative_cost_per_batch"] == pytest.approx(r["seconds_per_batch"]
                                                             / results["natural"]["seconds_per_batch"])
    nat = results["natural"]
    assert nat["relative_cost_per_batch"] == 1 and nat["relative_cost_per_run"] == 1
    # a run of E=8 epochs: free-3 makes ceil(8/3) = 3 passes over the data, the others 8
    assert [results[m]["epochs_run"] for m in ("natural", "fgsm-rs", "free", "pgd")] == [8, 8, 3, 8]
    free = results["free"]
    assert free["relative_cost_per_run"] == pytest.approx(free["relative_cost_per_batch"] * 3 / 8)
    assert results["pgd"]["relative_cost_per_run"] == pytest.approx(results["pgd"]["relative_cost_per_batch"])


def test_terminal_table(report: tuple[dict, str]):
    _, stdout = report
    for text in ("robustify bench", "natural", "fgsm-rs", "free-3", "pgd-3", "replayed m=3", "wrote",
                 "data pipeline (quickstart/train", "images/s per worker"):
        assert text in stdout, text


def test_data_pipeline_is_timed_and_compared_with_each_step(report: tuple[dict, str]):
    data, _ = report
    pipe = data["data_pipeline"]
    assert pipe["data"] == "quickstart" and pipe["images"] == 8 and pipe["input_size"] == [3, 32, 32]
    assert pipe["images_per_second_per_worker"] > 0 and pipe["decode_seconds"] > 0 and pipe["augment_seconds"] > 0
    assert [v["method"] for v in data["bound_by"]] == ["natural", "fgsm-rs", "free", "pgd"]
    for v in data["bound_by"]:
        assert v["bound"] == ("data" if v["loader_images_per_second"] < v["step_images_per_second"] else "step")


def test_peers_side_by_side_report():
    """The peers harness on the tiny quickstart model: every runner timed, ratios relative to the plain loop."""
    from robustify.bench.peers import ART, FAST_AT, PLAIN, art_available, run_peers
    from robustify.bench.steps import bench_config

    report = run_peers(bench_config(batch_size=8, overrides=["method.replays=2"]), ["natural", "free"], rounds=2,
                       batches=1, warmup=0)
    names = [r["name"] for r in report["results"]]
    assert names[:4] == [PLAIN, "robustify:natural", "robustify:free", FAST_AT]
    assert (ART in names) == art_available() and (ART in [s["name"] for s in report["skipped"]]) != art_available()
    rows = {r["name"]: r for r in report["results"]}
    assert rows[PLAIN]["relative_to_plain"] == 1 and rows[PLAIN]["relative_to_plain_cpu"] == 1
    assert rows["robustify:free"]["passes_per_batch"] == 2 and rows["robustify:free"]["replays"] == 2
    assert rows["robustify:free"]["relative_per_replay"] == pytest.approx(rows["robustify:free"]["relative_to_plain"]
                                                                          / 2)
    for r in report["results"]:
        assert len(r["epoch_seconds"]) == 2 and r["seconds_per_epoch"] > 0 and r["images_per_second"] > 0
    assert report["config"]["baseline"] == PLAIN and report["config"]["batch_size"] == 8


def test_time_to_robust_json(tmp_path):
    """A tiny time-to-robustness run through the command: both blocks, their costs and the speedup."""
    out = tmp_path / "ttr.json"
    res = run_cli("bench", "--time-to-robust", "--epochs", "1", "--scratch-epochs", "2,1", "--limit-train", "64",
                  "--limit-eval", "32", "--set", "data.batch_size=32", "--set", "eval.pgd_steps=2",
                  "--output", str(out), env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    keys = {"finetune", "scratch", "speedup", "speedup_is_lower_bound", "passes_ratio", "target", "excluded"}
    assert keys <= set(data)
    ft, sc = data["finetune"], data["scratch"]
    for block in (ft, sc):
        assert {"seconds", "passes", "epochs", "robust_acc", "reached", "history"} <= set(block)
        assert block["seconds"] > 0 and 0 <= block["robust_acc"] <= 1
    # budgets tried shortest first, each a fresh run, until one reaches the target; the scratch block is the last
    runs = data["scratch_runs"]
    assert [r["epoch_budget"] for r in runs] == [1, 2][:len(runs)] and not any(r["reached"] for r in runs[:-1])
    assert sc["epoch_budget"] == runs[-1]["epoch_budget"] and sc["reached"] == runs[-1]["reached"]
    if data["speedup"] is not None:
        assert data["counting_failed_budgets"]["passes"] == sum(r["passes"] for r in runs)
    assert sc["passes"] == runs[-1]["passes"] == sc["epochs"] * 2 * 32 * 8  # batches x batch size x passes
    assert ft["epochs"] == 1 and 1 <= sc["epochs"] <= sc["epoch_budget"]
    assert sc["reached"] or sc["epochs"] == sc["epoch_budget"]
    assert ft["pretrained"] is True and sc["pretrained"] is False
    assert ft["method"]["name"] == "fgsm-rs" and ft["schedule"] == "slow-start-fast-decay"
    assert sc["method"] == {"name": "pgd", "alpha": pytest.approx(2.5 * 0.1 / 7), "steps": 7, "bn_mode": "train"}
    assert ft["passes"] == 2 * 32 * 2  # batches x batch size x passes per batch
    assert data["target"]["pgd_acc"] == max(r["pgd_acc"] for r in ft["history"]) and ft["reached"]
    assert data["speedup_is_lower_bound"] is (not sc["reached"])
    assert data["speedup"] == pytest.approx(sc["seconds"] / ft["seconds"])
    assert "pretraining" in data["excluded"] and "speedup" in res.stdout


@pytest.mark.parametrize("text", ["0", "a,3", "", "0,10"])
def test_time_to_robust_refuses_bad_budgets(text, capsys):
    # in this process (the command's own exit path; a fresh interpreter per value cost 5 s each and proved no more)
    assert cli_main(["bench", "--time-to-robust", "--scratch-epochs", text]) == 2
    err = capsys.readouterr().err
    assert "--scratch-epochs" in err and "15,30,60" in err
    assert "Traceback" not in err


def test_auto_precision_and_layout_resolve_by_device():
    from robustify.config import build_config
    from robustify.errors import ConfigError
    from robustify.train.hardware import resolve_channels_last, resolve_hardware_settings, resolve_mixed_precision

    cfg = build_config("quickstart")
    assert cfg.train.mixed_precision == "auto" and cfg.model.channels_last == "auto" and cfg.train.compile is False
    resolve_hardware_settings(cfg, "cpu")
    assert cfg.train.mixed_precision == "no" and cfg.model.channels_last is False
    assert resolve_channels_last("auto", "cuda") is True and resolve_channels_last(True, "cpu") is True
    assert resolve_mixed_precision("bf16", "cpu") == "bf16" and resolve_mixed_precision("no", "cuda") == "no"
    assert build_config("quickstart", ["model.channels_last=false"]).model.channels_last is False
    with pytest.raises(ConfigError, match="model.channels_last='sideways'.*true, false or auto"):
        build_config("quickstart", ["model.channels_last=sideways"])


def test_notes_name_the_unit_and_flag_unsteady_times():
    from robustify.bench.steps import bench_notes

    report = {"hardware": {"device_type": "cpu", "device_name": "x", "cpu_count": 2, "torch_threads": 2,
                           "torch": "2"},
              "config": {"methods": ["pgd"], "timed_steps": 3, "warmup_steps": 1},
              "results": [{"method": "natural", "passes_per_batch": 1, "note": "unit"},
                          {"method": "pgd", "passes_per_batch": 8, "note": "pgd"}]}
    lines = bench_notes(report)
    assert lines[:2] == ["natural: unit", "pgd-7: pgd"] and "natural was timed too" in lines[-1]
    report["results"][1].update(seconds_per_batch_min=0.1, seconds_per_batch_max=0.3)  # unsteady steps are flagged
    assert bench_notes(report)[-1].startswith("warning: step times varied") and "pgd-7 100.0 ms-300.0 ms" in \
        bench_notes(report)[-1]


def test_unknown_method_exits_2_with_one_line(capsys):
    assert cli_main(["bench", "--methods", "natural,fgsm"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "fgsm" in lines[0] and "natural, fgsm-rs" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--methods", "pgd,bogus"], "unknown method 'bogus'"),
    (["--methods", ","], "--methods is empty"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "-4"], "--batch-size -4"),
    (["--image-size", "4"], "--image-size 4"),
    (["--steps", "0"], "--steps 0"),
    (["--warmup", "-1"], "--warmup -1"),
    (["--epochs", "0"], "--epochs 0"),
    (["--mixed-precision", "fp8"], "train.mixed_precision='fp8'"),
    (["--set", "method.steps=0"], "method.steps=0"),
    (["--model", "definitely_not_a_model"], "definitely_not_a_model"),
])
def test_bad_input_is_a_one_line_user_error(args: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    assert cli_main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robustify: error:") and message in err[0], err


def test_help_lists_bench(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "--methods" in out and "--output" in out and "offline" in out
