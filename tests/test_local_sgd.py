"""``train.local_sgd_steps: K`` (Accelerate's LocalSGD with one coalesced average of parameters and optimizer state)
on 2 gloo processes: parameters differ between synchronisations and are bit-identical at each, the all-reduce calls
per epoch fall by about K against DDP's per-step gradient all-reduce (both counted by intercepting
``dist.all_reduce``), a short quickstart run stays in sync and records K, and the config's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustify.config import build_config
from robustify.errors import ConfigError
from tests.helpers import torchrun

SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
from accelerate import Accelerator
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from robustify.train.options.local_sgd import AveragingLocalSGD

acc = Accelerator(cpu=True)
rank = acc.process_index
calls = []
real = dist.all_reduce
def counting(t, *a, **k):
    calls.append(t.numel())
    return real(t, *a, **k)
dist.all_reduce = counting

def setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return acc.prepare(model, opt)

def batch(step):
    torch.manual_seed(1000 * step + rank)  # each process its own data
    return torch.randn(8, 16), torch.randint(0, 4, (8,))

def fingerprint(model):
    v = torch.cat([p.detach().flatten() for p in model.parameters()])
    out = [torch.zeros_like(v) for _ in range(2)]
    dist.all_gather(out, v)
    return bool(torch.equal(out[0], out[1]))

K, STEPS = 4, 12
# DDP: one gradient all-reduce per step, through PyTorch's Python fp32 hook so the counter sees it
model, opt = setup()
model.register_comm_hook(None, default_hooks.allreduce_hook)
calls.clear()
for step in range(STEPS):
    x, y = batch(step)
    torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step(); opt.zero_grad()
ddp_calls = len(calls)

model, opt = setup()
same = []
calls.clear()
with AveragingLocalSGD(acc, model, opt, K) as local:
    for step in range(STEPS):
        x, y = batch(step)
        torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step(); opt.zero_grad()
        local.step()
        same.append(fingerprint(model))  # an all_gather: not counted
    local_calls_in_loop = len(calls)
if rank == 0:
    json.dump({"ddp_calls": ddp_calls, "local_calls": local_calls_in_loop, "same": same, "syncs": local.syncs},
              open(sys.argv[1], "w"))
acc.wait_for_everyone()  # every process past its last collective (as trainer._end), then the group destroyed: a
acc.end_training()  # group left alive, or torn down while a peer still works, can abort ("terminate called ...")
"""


def test_params_differ_between_syncs_and_match_at_each_with_k_times_fewer_all_reduces(tmp_path: Path):
    script = tmp_path / "local.py"
    script.write_text(SCRIPT)
    res = torchrun([str(script), str(tmp_path / "out.json")], tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "out.json").read_text())
    # identical right after each of the 3 averages (steps 4, 8, 12), different in between (own data per process)
    assert r["same"] == [False, False, False, True] * 3
    assert r["syncs"] == 3 + 1  # and once more when the context closes
    assert r["ddp_calls"] >= 12 and r["local_calls"] == 3  # one coalesced all-reduce per average
    assert r["ddp_calls"] / r["local_calls"] >= 4 - 1e-9  # falls by about K (DDP: one per bucket and step)


def test_local_sgd_config_rules():
    assert build_config("quickstart", ["train.local_sgd_steps=8"]).train.local_sgd_steps == 8
    for sets, message in [(["train.local_sgd_steps=0"], "train.local_sgd_steps=0 is not accepted; use a whole"),
                          (["train.local_sgd_steps=4", "train.grad_accum=2"], "with train.grad_accum=2 is not"),
                          (["train.local_sgd_steps=4", "train.grad_compression=sign"], "train.grad_compression"),
                          (["train.local_sgd_steps=4", "train.checkpoint_every=10"], "set train.checkpoint_every=null"),
                          (["train.local_sgd_steps=4", "train.ema=true"], "with train.ema=true is not accepted")]:
        with pytest.raises(ConfigError, match=message):
            build_config("quickstart", sets)


def test_local_sgd_resumes_exactly_at_an_epoch_end(tmp_path: Path):
    """Two processes, K = 3: the uninterrupted run stays in sync; stopped after one epoch and resumed, it ends with
    bit-identical weights."""
    from safetensors.torch import load_file

    sets = ["--set", "train.local_sgd_steps=3", "--set", "data.max_train_examples=256", "--set", "eval.n_examples=16",
            "--set", "eval.pgd_steps=1", "--set", "train.probe_size=16", "--set", "train.probe_steps=1",
            "--set", "data.batch_size=32", "--set", "train.probe_split=train", "--set", "train.select=last"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    for args in (["--output-dir", str(whole)], ["--output-dir", str(split), "--set", "train.stop_after=1"],
                 ["--output-dir", str(split), "--resume", "--set", "train.stop_after=null"]):
        res = torchrun(["-m", "robustify", "finetune", "--epochs", "2", *args, *sets], tmp_path, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    # the uninterrupted quickstart run on two processes ends in sync, records K and made its optimizer steps
    m = json.loads((whole / "metrics.json").read_text())
    assert m["cost"]["ranks_in_sync"] is True and m["cost"]["local_sgd_steps"] == 3
    assert m["history"][-1]["opt_steps"] == 2 * 4  # 256 / 32 / 2 processes = 4 steps per epoch
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # bit-identical weights
