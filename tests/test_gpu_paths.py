"""What a GPU run depends on and a CPU can still show (issue 27): per-process random starts that a resume
reproduces, the sign hook without host syncs, fp32 pseudo-labels under bf16 autocast, PowerSGD leaving the RNG
alone, EMA with several stages resumed, a CUDA out-of-memory error as one line, and the self-check's report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(args: list[str], tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


PER_RANK_STARTS = """
import json, sys
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from robustify import attacks
from robustify.train.trainer import seed_process

acc = Accelerator(cpu=True)
seed_process(7)  # what trainer.start does
x = torch.zeros(2, 3, 4, 4)
draw = lambda: attacks.random_init(x, 0.1, "Linf").flatten().tolist()
first = draw()
acc.save_state(sys.argv[2])  # what a checkpoint saves: each process's own RNG state
acc.wait_for_everyone()
uninterrupted = [draw(), draw()]
seed_process(7)  # a resumed run seeds in start(), then loads the checkpoint in setup()
acc.load_state(sys.argv[2])
resumed = [draw(), draw()]
rows = gather_object([{"rank": acc.process_index, "first": first, "uninterrupted": uninterrupted,
                       "resumed": resumed}])
if acc.is_main_process:
    open(sys.argv[1], "w").write(json.dumps(rows))
acc.wait_for_everyone()
acc.end_training()
"""


def test_each_process_draws_its_own_random_starts_and_a_resume_draws_them_again(tmp_path: Path):
    script = tmp_path / "starts.py"
    script.write_text(PER_RANK_STARTS)
    res = _torchrun([str(script), str(tmp_path / "out.json"), str(tmp_path / "ckpt")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = sorted(json.loads((tmp_path / "out.json").read_text()), key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1]
    assert rows[0]["first"] != rows[1]["first"]  # different random starts per process
    assert rows[0]["uninterrupted"][0] != rows[1]["uninterrupted"][0]
    for r in rows:  # each process continues its own stream after a resume, exactly
        assert r["resumed"] == r["uninterrupted"]
    # one process: the seed itself, so single-process runs draw what they drew before per-process seeding
    from robustify import attacks

    torch.manual_seed(7)
    assert attacks.random_init(torch.zeros(2, 3, 4, 4), 0.1, "Linf").flatten().tolist() == rows[0]["first"]


SIGN_HOOK_SYNCS = r"""
import json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from robustify.train.options import sign_hook

dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
calls = {"tensor": 0, "repeat_interleave": 0, "without_output_size": 0}
real_tensor, real_ri = torch.tensor, torch.repeat_interleave
def from_hook():
    return sys._getframe(2).f_globals.get("__name__") == "robustify.train.options.sign_hook"
def tensor(*a, **k):
    calls["tensor"] += from_hook()
    return real_tensor(*a, **k)
def repeat_interleave(*a, **k):
    if from_hook():
        calls["repeat_interleave"] += 1
        calls["without_output_size"] += "output_size" not in k
    return real_ri(*a, **k)
torch.tensor, torch.repeat_interleave = tensor, repeat_interleave
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))
ddp = DDP(net, bucket_cap_mb=0.001)
state = sign_hook.register(ddp)
per_backward = []
for step in range(4):
    before = dict(calls)
    ddp.zero_grad()
    torch.nn.functional.cross_entropy(ddp(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,))).backward()
    per_backward.append({k: calls[k] - before[k] for k in calls})
json.dump({"per_backward": per_backward, "layouts": len(state.repeats)}, open(sys.argv[1], "w"))
del ddp
dist.destroy_process_group()
"""


def test_sign_hook_builds_no_host_tensor_per_bucket_and_sizes_every_repeat(tmp_path: Path):
    """The host syncs of the sign hook on a GPU: ``torch.tensor(sizes, device=...)`` per bucket (a pageable copy)
    and ``repeat_interleave`` without ``output_size`` (reads the sum back). Counted on CPU: after DDP's bucket
    rebuild (first backward) the hook creates no tensor from host lists, and every repeat_interleave is sized."""
    script = tmp_path / "hook.py"
    script.write_text(SIGN_HOOK_SYNCS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "out.json"), str(tmp_path / "store")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    steady = out["per_backward"][2:]
    assert all(c["repeat_interleave"] > 0 for c in out["per_backward"])  # the hook ran, two per bucket
    assert all(c["without_output_size"] == 0 for c in out["per_backward"])
    assert all(c["tensor"] == 0 for c in steady), out
    assert 1 <= out["layouts"] <= 8  # counts built once per bucket layout, not per backward


def test_default_teacher_labels_in_fp32_although_accelerate_wrapped_its_forward_in_bf16_autocast():
    """The default teacher is the prepared module itself (``fp32_copy`` returns an fp32 model as it is), whose
    ``forward`` Accelerate wrapped in autocast; bf16 autocast runs on a CPU too, so the labels' precision shows."""
    from accelerate import Accelerator

    from robustify.train.options.pseudo_labels import _label
    from tests.helpers import quickstart_batch, quickstart_model

    x, _ = quickstart_batch(48)
    reference = quickstart_model()
    with torch.no_grad():
        p = torch.softmax(reference(x), dim=1)
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    teacher = acc.prepare(quickstart_model())
    with torch.no_grad():  # the wrapped forward itself computes in bf16: what labelling must not use
        assert not torch.equal(torch.softmax(teacher(x).float(), dim=1), p)
    labels, conf = _label(teacher, x, torch.device("cpu"), 16)
    assert torch.equal(conf, p.max(dim=1).values)  # bit for bit the fp32 forward
    assert torch.equal(labels, p.argmax(dim=1))


def _lp_ft(run: Path, *extra: str):
    from robustify.config import build_config

    cfg = build_config("quickstart-lp-ft", ["data.max_train_examples=64", "data.batch_size=32", "eval.n_examples=16",
                                            "eval.pgd_steps=1", "train.probe_size=16", "train.probe_steps=1",
                                            "train.ema=true", f"output_dir={run}", *extra])
    cfg.stages[0]["train"]["epochs"], cfg.stages[1]["train"]["epochs"] = 1, 2
    return cfg


def test_ema_with_two_stages_resumes_into_the_second_stage_bit_identically(tmp_path: Path):
    """LP-FT with ``train.ema``: stopped after the first epoch of stage 2 and resumed, the run ends with the same
    exported (averaged) weights as the uninterrupted run; each stage's average was registered with Accelerate, and a
    stage-2 checkpoint held two while the resumed process registered one (Accelerate refused the mismatch)."""
    from robustify.train.trainer import finetune

    whole = finetune(_lp_ft(tmp_path / "whole"))
    assert finetune(_lp_ft(tmp_path / "split", "train.stop_after=2")) == {}
    split = finetune(_lp_ft(tmp_path / "split", "train.stop_after=null"), resume=True)
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (tmp_path / "split" / "model.safetensors"
                                                                       ).read_bytes()
    assert [h["probe_robust_acc"] for h in whole["history"]] == [h["probe_robust_acc"] for h in split["history"]]


def test_out_of_memory_in_a_step_is_one_line_with_the_batch_and_what_to_try(tmp_path: Path, monkeypatch, capsys):
    """A CUDA OOM in the step, simulated on CPU by the step raising torch's own OutOfMemoryError: exit 2, one line
    naming the batch size and what to try, no traceback."""
    from robustify.cli import main
    from robustify.train.methods import fgsm_rs

    def oom(self, ctx, x, y):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")

    monkeypatch.setattr(fgsm_rs.FGSMRandomStart, "step", oom)
    rc = main(["finetune", "--output-dir", str(tmp_path / "run"), "--set", "method.name=fgsm-rs",
               "--set", "data.max_train_examples=64", "--set", "data.batch_size=32", "--set", "eval.n_examples=16",
               "--set", "eval.pgd_steps=1", "--set", "train.probe_size=16", "--set", "train.probe_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("robustify: error: out of memory in a fgsm-rs training step"), err
    assert "data.batch_size=32" in err[0] and "data.batch_size=16 with train.grad_accum=2" in err[0]
    assert "Tried to allocate 2.00 GiB" in err[0] and "train.compile=true" in err[0]


def test_cudnn_benchmark_is_on_unless_the_run_is_deterministic():
    from robustify.train.hardware import apply_determinism

    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        assert apply_determinism(False) == {"deterministic": False}
        assert torch.backends.cudnn.benchmark  # a CUDA run searches each shape's fastest convolution once
    finally:
        torch.backends.cudnn.benchmark = saved


def test_local_sgd_averages_in_bounded_chunks_in_order():
    from robustify.train.options.local_sgd import _chunks

    ts = [torch.zeros(n) for n in (3, 4, 10, 2, 2)]
    groups = _chunks(ts, 8)
    assert [[t.numel() for t in g] for g in groups] == [[3, 4], [10], [2, 2]]  # a larger tensor travels alone
    assert [t for g in groups for t in g] == ts


# ------------------------------------------------------------------------------------ scripts/gpu_check.py on CPU
def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_writes_each_row_as_it_goes_and_a_failure_is_one_row(tmp_path: Path):
    """The self-check's report: the JSON on disk after every row; an exception of any kind (an IndexError with no
    message, a subprocess timeout, a UserError) is a row with its one-line reason and the next check still runs; a
    check past the time budget is a 'skipped' row; the table names every row."""
    from robustify.errors import UserError

    gc = _gpu_check()
    out = tmp_path / "report" / "gpu.json"
    now = [0.0]
    report = gc.Report(out, {"gpu": "test"}, budget_seconds=100, clock=lambda: now[0])
    assert json.loads(out.read_text())["checks"] == []

    def on_disk() -> list[dict]:
        return json.loads(out.read_text())["checks"]

    def fine() -> dict:
        now[0] += 5
        return {"images_per_second": 12.5}

    def raises(error: BaseException):
        def fn() -> dict:
            raise error
        return fn

    report.check("first", fine)
    assert [r["check"] for r in on_disk()] == ["first"] and on_disk()[0]["ok"] is True
    report.check("no message", raises(IndexError()))
    report.check("timeout", raises(subprocess.TimeoutExpired(["robustify"], 240)))
    report.check("refused", raises(UserError("data.decode=device needs torchvision with nvJPEG\nsecond line")))
    report.check("not passed", lambda: {"ok": False, "bit_identical": False})
    rows = on_disk()
    assert [r["ok"] for r in rows] == [True, False, False, False, False]
    assert rows[1]["error"] == "IndexError"
    assert rows[2]["error"].startswith("TimeoutExpired: Command '['robustify']' timed out after 240")
    assert rows[3]["error"] == "UserError: data.decode=device needs torchvision with nvJPEG"  # one line
    assert rows[4]["bit_identical"] is False and "error" not in rows[4]
    now[0] = 101
    report.check("late", fine)
    assert on_disk()[-1]["error"].startswith("skipped: the time budget of 100s was spent")
    assert json.loads(out.read_text())["ok"] is False and report.ok is False
    table = report.table().splitlines()
    assert len(table) == 1 + 6 and table[2].startswith("no message") and "FAIL" in table[2]
    assert "error=IndexError" in table[2] and "images_per_second=12.5" in table[1]


def test_gpu_check_subprocess_failures_are_one_line_and_its_commands_are_accepted(tmp_path: Path, capsys):
    """A robustify subprocess that fails is reported by its last line (or 'no output'); the finetune commands the
    self-check runs on the GPU (exact resume; the real loader path on a parquet folder of JPEGs, decoded by the
    workers or on the device) are accepted by ``--dry-run`` here, so a typo cannot cost a GPU session."""
    import pytest

    from robustify.cli import main

    gc = _gpu_check()
    with pytest.raises(gc.CheckFailed, match=r"robustify finetune exited 2: robustify: error: .*--resume"):
        gc.run_cli(["finetune", "--resume"], timeout=120)
    data = gc.write_jpeg_parquet(tmp_path / "jpegs", n_train=8, n_test=4)
    assert sorted(p.name for p in data.iterdir()) == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    for decode in ("workers", "device"):
        assert main([*gc.loader_args(data, tmp_path / f"run-{decode}", decode), "--dry-run"]) == 0, \
            capsys.readouterr().err
        assert "resnet18" in capsys.readouterr().out
    assert main(["finetune", "--output-dir", str(tmp_path / "resume"), *gc.RESUME_ARGS, "--dry-run"]) == 0
    assert {label for label, _, _ in gc.STEP_VARIANTS} >= {"natural", "fgsm-rs", "n-fgsm", "free", "pgd", "deat",
                                                           "pgd TRADES", "pgd AWP", "fgsm-rs EMA", "pgd FOSC",
                                                           "fgsm-rs L2", "pgd L1", "fgsm-rs eps warm-up",
                                                           "fgsm-rs pure-bf16"}


def test_sync_bn_is_refused_with_attack_forwards_in_train_mode():
    """SyncBatchNorm in train mode would all-gather in every attack pass (and hang under FOSC's early exits)."""
    import pytest

    from robustify.config import build_config
    from robustify.errors import UserError
    from robustify.train.hardware import check_sync_bn

    with pytest.raises(UserError, match="with method.bn_mode=train would synchronise BatchNorm in every attack pass "
                                        "of pgd; set method.bn_mode=eval"):
        check_sync_bn(build_config("quickstart", ["model.sync_bn=true", "method.name=pgd"]), "cuda")
    check_sync_bn(build_config("quickstart", ["model.sync_bn=true", "method.name=pgd", "method.bn_mode=eval"]), "cuda")
    check_sync_bn(build_config("quickstart", ["model.sync_bn=true", "method.name=natural"]), "cuda")
    with pytest.raises(UserError, match="needs GPUs"):
        check_sync_bn(build_config("quickstart", ["model.sync_bn=true", "method.bn_mode=eval"]), "cpu")
