"""Runs at real scale, tested at toy size: collectives every process reaches whatever its share (empty, uneven, one
example), a process-group timeout that names the stage, preemption agreed every optimizer step, no host
synchronisation in the training step, BatchNorm buffers identical on every process, fp32 evaluation without TF32."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, launch_env, torchrun, torchrun_cmd

BATCH = 4


def sizes(world: int) -> list[int]:
    """The shares that used to leave a process out of a collective: 1, batch-1, batch, batch+1, world x batch + 1."""
    return [1, BATCH - 1, BATCH, BATCH + 1, world * BATCH + 1]


UNEVEN_EVAL = """
import json, sys
from datetime import timedelta
import torch
from accelerate import Accelerator, PartialState
from robustify.data.examples import Examples
from robustify.evaluate.kernel import FP32, sharded_pgd_accuracy
from robustify.evaluate.report import EvalSettings, evaluate
from tests.helpers import quickstart_batch, quickstart_model

state = PartialState(cpu=True, timeout=timedelta(seconds=60))  # a hang fails within a minute
acc = Accelerator(cpu=True)  # the trainer's probe runs through an Accelerator (the same process group)
x, y = quickstart_batch(64)
x = x.mul(255).round().to(torch.uint8)
model = quickstart_model()
out = {}
for n in json.loads(sys.argv[2]):
    s = EvalSettings.from_preset("quick", 0.03, attacks=("clean", "pgd"), pgd_steps=2, pgd_restarts=2,
                                 pgd_losses=("ce", "cw"), batch_size=BATCH, curve=True, checks=True)
    rep = evaluate(FP32(model), Examples(x[:n], y[:n], "quickstart", "test", 10), s, progress=False, state=state)
    probe = sharded_pgd_accuracy(model, x[:n], y[:n], 0.03, steps=2, restarts=2, loss="ce+cw", batch_size=BATCH,
                                 accelerator=acc, progress=False)
    out[n] = {"clean": rep["clean_acc"], "pgd": rep["pgd_acc"], "first": rep["pgd"]["first_run_acc"],
              "per_loss": rep["pgd"]["per_loss_acc"], "steps": rep["pgd"]["last_iterate_acc_by_step"],
              "curve": [p["acc"] for p in rep["eps_curve"]["points"]],
              "probe": [probe["clean_acc"], probe["pgd_acc"], probe["n_examples"]]}
if state.is_main_process:
    open(sys.argv[1], "w").write(json.dumps(out))
acc.wait_for_everyone()  # every process past its last collective (as trainer._end), then the group destroyed: a
acc.end_training()  # group left alive, or torn down while a peer still works, can abort ("terminate called ...")
""".replace("BATCH", str(BATCH))


def _single_process(script: Path, out: Path, ns: list[int]) -> dict:
    res = subprocess.run([sys.executable, str(script), str(out), json.dumps(ns)], capture_output=True, text=True,
                         env=launch_env(), timeout=240, cwd=out.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The single-process numbers for the shares of both world sizes, in one interpreter (each subset's numbers
    come from generators seeded per batch offset, so they do not depend on the other subsets evaluated with it)."""
    folder = tmp_path_factory.mktemp("uneven-one")
    (folder / "uneven.py").write_text(UNEVEN_EVAL)
    return _single_process(folder / "uneven.py", folder / "one.json", sorted(set(sizes(2)) | set(sizes(3))))


@pytest.mark.parametrize("world", [2, 3])
def test_eval_and_probe_reach_every_collective_with_any_share(tmp_path: Path, world: int, one_process: dict):
    """Subsets of 1, batch-1, batch, batch+1 and world x batch + 1 examples: some processes get no batch at all, one
    gets a single example; every process reaches the same collectives, and the numbers equal one process's."""
    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN_EVAL)
    ns = sizes(world)
    res = torchrun([str(script), str(tmp_path / "many.json"), json.dumps(ns)], tmp_path, nproc=world, timeout=200)
    assert res.returncode == 0, res.stderr[-3000:]
    many = json.loads((tmp_path / "many.json").read_text())
    one = {str(n): one_process[str(n)] for n in ns}
    assert many == one
    assert all(one[str(n)]["probe"][2] == n for n in ns)


MISSED_COLLECTIVE = """
import sys, time
from datetime import timedelta
import torch
from accelerate import PartialState
from robustify.data.examples import Examples
from robustify.evaluate.report import _Runner

state = PartialState(cpu=True, timeout=timedelta(seconds=3))
ex = Examples(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), "x", "test", 2)
runner = _Runner(torch.nn.Identity(), ex, 4, torch.device("cpu"), False, state)
if state.process_index == 1:  # a process that took another path: it never reaches the gather
    time.sleep(15)
    sys.exit(0)
try:
    runner.gather(torch.ones(4, dtype=torch.bool), "pgd first masks")
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 3))
"""


def test_a_collective_not_every_process_reaches_fails_in_one_line_naming_the_stage(tmp_path: Path):
    script = tmp_path / "missed.py"
    script.write_text(MISSED_COLLECTIVE)
    res = torchrun([str(script)], tmp_path, nproc=2, timeout=120)
    assert res.returncode != 0
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("CollectiveTimeout"))
    assert "stage 'eval: pgd first masks'" in line and "process 0" in line, res.stderr[-2000:]


# ------------------------------------------------------------------------------------- no host sync in the step
class HostSyncCounter:
    """Counts what would make the host wait for the device in the per-minibatch path: reading a tensor's value
    (item, tolist, bool, int, float, numpy, cpu) and creating a tensor on a device from Python values
    (``torch.tensor(..., device=...)``). On a CPU every tensor is a host tensor, so the data wing's own host work
    (producing the next batch) is excluded: counting pauses while the loader yields."""

    READS = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu")

    def __init__(self) -> None:
        self.count = 0
        self.paused = False
        self.where: list[str] = []

    def __enter__(self) -> HostSyncCounter:
        import torch

        self._saved = {name: getattr(torch.Tensor, name) for name in self.READS}
        self._tensor, self._as_tensor = torch.tensor, torch.as_tensor
        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, self._counting(fn, name))
        torch.tensor = self._on_device(self._tensor, "torch.tensor")
        torch.as_tensor = self._on_device(self._as_tensor, "torch.as_tensor")
        return self

    def _hit(self, name: str) -> None:
        if not self.paused:
            import traceback

            self.count += 1
            self.where.append(f"{name} at {traceback.format_stack(limit=4)[0].strip()}")

    def _counting(self, fn, name):
        def wrapper(*args, **kwargs):
            self._hit(name)
            return fn(*args, **kwargs)
        return wrapper

    def _on_device(self, fn, name):
        def wrapper(*args, **kwargs):
            if kwargs.get("device") is not None:
                self._hit(name)
            return fn(*args, **kwargs)
        return wrapper

    def __exit__(self, *exc: object) -> None:
        import torch

        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, fn)
        torch.tensor, torch.as_tensor = self._tensor, self._as_tensor


def _one_epoch_run(tmp_path: Path, method: str, device: str = "cpu"):
    from robustify.config import build_config
    from robustify.models import load_backbone
    from robustify.train.checkpoint import BestWeights, TrainState
    from robustify.train.trainer import setup, start

    cfg = build_config("quickstart", [f"output_dir={tmp_path / method}", f"method.name={method}",
                                      "data.max_train_examples=56", "data.batch_size=8", "train.log_every=100000",
                                      "train.epochs=1", "eval.n_examples=8", "train.probe_size=8",
                                      "data.num_workers=0", "method.steps=2", "method.replays=2"])
    acc, run_dir, cfg = start(cfg, False)
    base = load_backbone(cfg.model.name)
    return setup(cfg, acc, run_dir, base.backbone, TrainState(), BestWeights())


METHOD_NAMES = ["natural", "fgsm-rs", "n-fgsm", "free", "pgd", "deat"]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_no_host_sync_per_minibatch(tmp_path: Path, method: str):
    """Every minibatch but the epoch's last (which logs, one sync per log_every) reads nothing from the device and
    copies no Python number to it, for every method (the optimizer step, accumulation and stop agreement included)."""
    from robustify.train.checkpoint import StopSignal
    from robustify.train.trainer import train_epoch

    run = _one_epoch_run(tmp_path, method)
    counter = HostSyncCounter()
    per_batch: list[int] = []
    produce = run.loaders.train_epoch

    def counted(epoch: int, start_batch: int = 0):
        it = produce(epoch, start_batch=start_batch)
        while True:
            per_batch.append(counter.count)
            counter.paused = True
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                counter.paused = False
            yield batch

    run.loaders.train_epoch = counted
    with counter, StopSignal() as stop:
        train_epoch(run, 1, stop)
    bodies = [b - a for a, b in zip(per_batch, per_batch[1:], strict=False)]
    assert len(bodies) == run.loaders.batches_per_epoch >= 6
    assert bodies[:-1] == [0] * (len(bodies) - 1), counter.where


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_no_host_sync_per_minibatch_cuda_sync_debug(tmp_path: Path, method: str):
    """On a GPU: torch's own sync detector, set to raise, over an epoch's minibatches but the last."""
    import torch

    from robustify.train.checkpoint import StopSignal
    from robustify.train.trainer import train_epoch

    run = _one_epoch_run(tmp_path, method, "cuda")
    produce, n = run.loaders.train_epoch, run.loaders.batches_per_epoch

    def checked(epoch: int, start_batch: int = 0):
        for i, batch in enumerate(produce(epoch, start_batch=start_batch)):
            torch.cuda.set_sync_debug_mode("error" if 0 < i < n - 1 else "default")
            yield batch
        torch.cuda.set_sync_debug_mode("default")

    run.loaders.train_epoch = checked
    try:
        with StopSignal() as stop:
            train_epoch(run, 1, stop)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------------------ the same BatchNorm everywhere
BN_SYNC = """
import sys
import torch
from accelerate import Accelerator
from robustify.evaluate.collectives import broadcast_buffers
from robustify.train.trainer import ranks_in_sync

acc = Accelerator(cpu=True)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
torch.manual_seed(100 + acc.process_index)  # each process's own minibatch, as attack forwards see it
model.train()(torch.rand(8, 3, 6, 6))  # updates the running statistics locally (no DDP broadcast)
before = ranks_in_sync(model, acc)
broadcast_buffers(model)
after = ranks_in_sync(model, acc)
mean = acc.gather(model[1].running_mean[None].clone())
print(f"RESULT {acc.process_index} {before} {after} {bool((mean == mean[0]).all())}", flush=True)
acc.wait_for_everyone()  # every process past its last collective (as trainer._end), then the group destroyed: a
acc.end_training()  # group left alive, or torn down while a peer still works, can abort ("terminate called ...")
"""


def test_batchnorm_buffers_are_compared_and_broadcast(tmp_path: Path):
    """Parameters equal, running statistics not: ranks_in_sync says so; after the broadcast every process holds
    process 0's statistics."""
    script = tmp_path / "bn.py"
    script.write_text(BN_SYNC)
    res = torchrun([str(script)], tmp_path, nproc=2, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    # the two ranks share one stdout pipe: their lines can interleave, so match each record on its own
    results = sorted(re.findall(r"RESULT (\d) (\w+) (\w+) (True|False)", res.stdout))
    assert results == [("0", "False", "True", "True"), ("1", "False", "True", "True")]



# ------------------------------------------------------------------------------------- preemption within seconds
def _worker_pid(launcher_pid: int, local_rank: int) -> int | None:
    """The pid of torchrun's worker with ``LOCAL_RANK=local_rank`` (read from /proc)."""
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads torchrun's workers from /proc")
def test_sigterm_on_one_process_stops_all_within_seconds(tmp_path: Path):
    """A SIGTERM to process 1 only, in the middle of epoch 2 of many, with log_every far above the epoch length:
    every process stops after the current optimizer step and one checkpoint is written, within seconds (the old
    agreement every log_every x grad_accum minibatches would have trained on to the end of the run)."""
    import signal
    import time

    run = tmp_path / "run"
    cmd = torchrun_cmd(["-m", "robustify", "finetune", "--output-dir", str(run),
                        "--epochs", "200", "--set", "train.log_every=100000", "--set", "data.max_train_examples=512",
                        "--set", "data.batch_size=16", "--set", "eval.n_examples=16", "--set", "eval.pgd_steps=1",
                        "--set", "train.probe_size=16", "--set", "train.probe_steps=1", "--set", "data.num_workers=0"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=launch_env(),
                            cwd=tmp_path)
    try:
        for line in proc.stdout:  # epoch 1 is done: epoch 2 is being trained
            if line.startswith("epoch 1/"):
                break
        time.sleep(1.0)
        pid = _worker_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert "SIGTERM received: checkpoint written at epoch" in err, err[-3000:]
    assert elapsed < 30, elapsed  # the current step, one checkpoint and the exit (2 loaded CPU cores)
    assert not (run / "metrics.json").exists()
    ckpts = sorted((run / "checkpoints").glob("ckpt_*"))
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert state["epoch"] >= 1 and state["batch"] > 0  # stopped inside an epoch after epoch 1, not at its end


# ------------------------------------------------------------------------------------------ fp32 is fp32
class _RecordsPrecision(__import__("torch").nn.Module):
    """A model that records, at every forward, whether TF32 (or oneDNN bf16) was allowed for float32 math."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, set()

    def forward(self, x):
        from robustify.evaluate.kernel import _fp32_switches

        self.seen.add(tuple(b.fp32_precision for b in _fp32_switches()))
        return self.model(x)


def test_evaluation_turns_tf32_off_and_restores_it():
    """PyTorch's defaults let cuDNN convolutions use TF32; an 'fp32' evaluation must not. The switches can be set
    and read without a GPU, so the whole contract is tested on CPU: ieee inside, the caller's setting after."""
    import torch

    from robustify.data.examples import Examples
    from robustify.evaluate.kernel import _fp32_switches, sharded_pgd_accuracy
    from robustify.evaluate.report import EvalSettings, evaluate
    from tests.helpers import quickstart_batch, quickstart_model

    switches = _fp32_switches()
    assert switches  # torch >= 2.9 has them
    saved = [b.fp32_precision for b in switches]
    try:
        for b in switches:
            b.fp32_precision = "tf32" if b is not torch.backends.mkldnn else "bf16"
        outside = tuple(b.fp32_precision for b in switches)
        x, y = quickstart_batch(8)
        model = _RecordsPrecision(quickstart_model())
        res = sharded_pgd_accuracy(model, x, y, 0.03, steps=1, batch_size=4, progress=False)
        s = EvalSettings.from_preset("quick", 0.03, attacks=("clean", "pgd"), pgd_steps=1, curve=False,
                                     checks=False, batch_size=4)
        rep = evaluate(model, Examples(x.mul(255).round().byte(), y, "quickstart", "test", 10), s, progress=False)
        assert model.seen == {("ieee",) * len(switches)}
        assert tuple(b.fp32_precision for b in switches) == outside  # restored
        assert res["tf32"] is False and rep["tf32"] is False and rep["precision"] == res["precision"] == "fp32"
    finally:
        for b, value in zip(switches, saved, strict=True):
            b.fp32_precision = value


# ------------------------------------------------------------------------------------------ fp16 refused
def test_fp16_is_refused_in_one_line_naming_the_accepted_precisions(tmp_path: Path, monkeypatch, capsys):
    """Even where a GPU would be used (the device check is patched to say CUDA): fp16 would weaken every attack
    silently (unscaled input gradients, loss-scaled free/DEAT replays), so it is not a choice of
    train.mixed_precision: refused like any value outside a key's choices, before anything starts."""
    from robustify.cli import main as cli
    from robustify.train import trainer

    monkeypatch.setattr(trainer, "target_device_type", lambda: "cuda")
    run = tmp_path / "run"
    assert cli(["finetune", "--output-dir", str(run), "--set", "train.mixed_precision=fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["robustify: error: train.mixed_precision='fp16' is not accepted; choose one of: auto, no, bf16, "
                   "pure-bf16"], err
    assert not run.exists() or not any(run.iterdir())


# ------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_deterministic_resize_is_the_same_resize_without_interpolate_backward(mode: str, monkeypatch):
    """Under train.deterministic the in-model resize is two matrix products: the same values and input gradients
    as interpolate's, and no upsample backward (which torch refuses in deterministic mode on CUDA)."""
    import torch

    from robustify.models import Resize

    x = torch.rand(2, 3, 32, 30, dtype=torch.float64, requires_grad=True)
    resize = Resize((48, 20), mode)
    ref = resize(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    calls = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda t, **kw: calls.append(t.requires_grad)
                        or interpolate(t, **kw))
    torch.use_deterministic_algorithms(True)
    try:
        out = resize(x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(g, g_ref, atol=1e-10)
    assert calls and not any(calls)  # interpolate only builds the weight matrices (from constants, no gradient)


def test_train_deterministic_sets_every_switch():
    import torch

    from robustify.config import build_config
    from robustify.train.hardware import apply_determinism

    assert build_config("quickstart", []).train.deterministic is False  # off by default: it costs speed
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        assert apply_determinism(True) == {"deterministic": True}
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_deterministic_cuda_steps_repeat_bit_for_bit():
    """Two identical training steps of a resized conv net on CUDA give bit-identical weights with the flag."""
    import torch

    from robustify.models import Resize
    from robustify.train.hardware import apply_determinism

    def once() -> torch.Tensor:
        torch.manual_seed(0)
        net = torch.nn.Sequential(Resize((64, 64)), torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
                                  torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(16, 10)).cuda()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x, y = torch.rand(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
        for _ in range(3):
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    apply_determinism(True)
    try:
        assert torch.equal(once(), once())
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------------------------------ the GPU self-check
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU machine the script runs for real")
def test_gpu_check_refuses_in_one_line_without_a_gpu(tmp_path: Path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--output",
                          str(tmp_path / "g.json")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "no CUDA GPU" in res.stderr
    assert not (tmp_path / "g.json").exists()


# ------------------------------------------------------------------------------------------ large global batches
@pytest.mark.parametrize("name,added", [("slow-start-fast-decay", False), ("cyclic", False), ("constant", True),
                                        ("piecewise", True), ("cosine", True)])
def test_a_scaled_peak_lr_gets_a_long_enough_warmup(name: str, added: bool):
    """x8 (8 GPUs x 128 on a recipe stated for 128): the slow start and the triangle already rise from below the
    stated lr over more than min(5 epochs, 25%) of the run; the others get a linear warm-up from the stated lr."""
    from robustify.config import ScheduleConfig
    from robustify.train.schedules import build_schedule, rise_fraction_of, warmup_for_scaled_lr

    base = build_schedule(ScheduleConfig(name=name))
    schedule, note = warmup_for_scaled_lr(base, 8.0, epochs=10)
    assert (schedule is not base) == added and note.startswith("warm-up added" if added else "warm-up: the schedule")
    assert schedule(0.0) <= 1 / 8 + 1e-9 and rise_fraction_of(schedule) >= 0.25 - 1e-3
    assert warmup_for_scaled_lr(base, 1.0, epochs=10) == (base, "")  # not scaled: nothing to do


def test_the_runs_first_line_says_how_a_scaled_lr_warms_up(tmp_path: Path, capsys):
    from robustify.config import build_config
    from robustify.models import load_backbone
    from robustify.train.checkpoint import BestWeights, TrainState
    from robustify.train.trainer import setup, start

    cfg = build_config("quickstart", [f"output_dir={tmp_path / 'run'}", "schedule.name=constant",
                                      "schedule.lr_scale_rule=linear", "train.global_batch=8", "data.batch_size=64",
                                      "eval.n_examples=8", "train.probe_size=8", "data.num_workers=0"])
    acc, run_dir, cfg = start(cfg, False)
    run = setup(cfg, acc, run_dir, load_backbone(cfg.model.name).backbone, TrainState(), BestWeights())
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert "peak lr 0.4 (scaled linear" in first and "warm-up added: the x8 lr rises linearly" in first
    assert run.stepper.schedule(0.0) == pytest.approx(1 / 8)


# ------------------------------------------------------------------------------------- nodes without a shared disk
def test_nodes_without_a_common_checkpoint_are_refused_in_one_line(tmp_path: Path):
    """Two single-process "nodes" (torchrun --nnodes 2), each with its own run folder behind the same relative path
    (no shared disk), holding different checkpoints and none in common (a node lost its folder's older ones).
    Resuming must refuse on every node in one line, not load mismatched states. (A node killed between the others'
    rename and its own still shares the previous checkpoint: test_two_nodes_killed_with_sigkill_resume_exactly.)"""
    from tests.helpers import fake_checkpoint

    for node, progress in ((0, 20), (1, 10)):
        fake_checkpoint(tmp_path / f"node{node}" / "run", progress)
    port = free_port()
    args = ["-m", "robustify", "finetune", "--output-dir", "run", "--resume", "--set", "train.save_on_each_node=true"]
    procs = [subprocess.Popen(torchrun_cmd(args, nproc=1, port=port, nnodes=2, node_rank=node),
                              cwd=tmp_path / f"node{node}", env=launch_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    errs = [p.communicate(timeout=400)[1] for p in procs]
    for err in errs:
        line = next(ln for ln in err.splitlines() if ln.startswith("robustify: error:"))
        assert "no checkpoint in common in run (process 0: ckpt_000000020, process 1: ckpt_000000010)" in line, err


NODES = ["data.max_train_examples=384", "train.epochs=3", "eval.n_examples=32", "eval.pgd_steps=1",
         "train.probe_size=32", "train.probe_steps=1", "data.batch_size=32", "train.checkpoint_every=1",
         "data.num_workers=0"]


def _two_nodes(root: Path, *args: str) -> list[subprocess.Popen]:
    """One robustify finetune on two single-process "nodes" (torchrun --nnodes 2): each runs in its own folder
    ``root/node<k>`` with ``--output-dir run``, so each node's run folder is a different folder behind the same
    path, as on nodes with node-local disks."""
    port = free_port()
    procs = []
    for node in (0, 1):
        (root / f"node{node}").mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(
            torchrun_cmd(["-m", "robustify", "finetune", "--output-dir", "run", *args], nproc=1, port=port, nnodes=2,
                         node_rank=node), cwd=root / f"node{node}", env=launch_env(TQDM_DISABLE="1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: each process's parent)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def _finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=500)
        assert p.returncode == 0, err[-3000:]


def test_two_nodes_killed_with_sigkill_resume_exactly(tmp_path: Path):
    """Issue 17 item 1 end to end: two "nodes" without a shared disk (train.save_on_each_node: each keeps its own
    checkpoints and recipe), both killed with SIGKILL mid-run, then resumed on both: node 0's exported weights are
    bit-identical to the uninterrupted two-node run's. The uninterrupted run is made without save_on_each_node, where
    node 1 never renames a checkpoint: it must not keep temporary checkpoint folders either."""
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    sets = [a for kv in NODES for a in ("--set", kv)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_two_nodes(straight, *sets))
    assert not list((straight / "node1" / "run").rglob(".tmp_*")), list((straight / "node1" / "run").rglob("*"))

    each = ["--set", "train.save_on_each_node=true"]
    procs = _two_nodes(killed, *sets, *each)
    deadline = time.monotonic() + 400
    ckpts = [killed / f"node{k}" / "run" / "checkpoints" for k in (0, 1)]
    while not all(len(list(c.glob("ckpt_*"))) >= 1 and any(int(p.name[5:]) >= 4 for p in c.glob("ckpt_*"))
                  for c in ckpts):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint came"
        time.sleep(0.05)
    for p in procs:  # torchrun and its worker (torchrun starts workers in sessions of their own), mid-run
        for pid in [*_descendants(p.pid), p.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.communicate(timeout=60)
    assert not (killed / "node0" / "run" / "model.safetensors").exists()  # killed before the end
    assert (killed / "node1" / "run" / "recipe.yaml").is_file()  # node 1 resumes with the run's own recipe
    _finish(_two_nodes(killed, "--resume", *each))
    a = load_file(str(straight / "node0" / "run" / "model.safetensors"))
    b = load_file(str(killed / "node0" / "run" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for node in (0, 1):
        assert not list((killed / f"node{node}" / "run").rglob(".tmp_*"))
