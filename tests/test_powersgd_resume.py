"""``train.grad_compression: powersgd``: torch's PowerSGD hook, registered by the option with its state checkpointed,
resumes exactly. One gloo process (a DDP of world size 1 still runs the hook) trains a small model straight through
and again in two slices, the state between them going through the option's ``state_dict`` and the checkpoint's
safetensors + JSON round trip into a fresh DDP (whose buckets are laid out anew: its first step runs under DDP's
initial layout, then the rebuilt one): the weights end bit-identical, and differ without the restore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import launch_env

SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel as DDP
from robustify.config import build_config
from robustify.train.hardware import comm_hook_name
from robustify.train.options.grad_compression import GradCompression

folder = sys.argv[1]
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
cfg = build_config("quickstart", ["train.grad_compression=powersgd"])
STEPS, SLICE = 6, 3

def model():
    torch.manual_seed(0)  # two 16x16 matrices (one shape group in P/Q), a conv and a head in 2-3 buckets
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))

def wrapped(weights=None):
    net = model()
    if weights is not None:
        net.load_state_dict(weights)
    ddp = DDP(net, bucket_cap_mb=0.004)
    option = GradCompression(cfg)
    option.wrap(ddp)
    option.state.psgd.start_powerSGD_iter = 2  # compress from the third step on (torch's least)
    return ddp, option

def train(ddp, steps, option=None, layouts=None):
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in steps:
        torch.manual_seed(step)
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if layouts is not None:
            layouts.append(sorted(layout.names for layout in option.state.layouts.values()))

def weights(ddp):
    return {k: v.clone() for k, v in ddp.module.state_dict().items()}

straight, straight_opt = wrapped()
train(straight, range(STEPS))

first, first_opt = wrapped()
train(first, range(SLICE))
state = {**first_opt.state_dict(), "method.carried": torch.ones(2)}
tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
save_file(tensors, f"{folder}/method_rank0.safetensors",  # as train/checkpoint.py writes and reads it
          metadata={k: json.dumps(v) for k, v in state.items() if not isinstance(v, torch.Tensor)})
with safe_open(f"{folder}/method_rank0.safetensors", framework="pt", device="cpu") as f:
    loaded = {k: f.get_tensor(k) for k in f.keys()}
    loaded.update({k: json.loads(v) for k, v in f.metadata().items()})
saved = weights(first)

resumed, resumed_opt = wrapped(saved)
rest = resumed_opt.load_state_dict(loaded)
layouts = []
train(resumed, range(SLICE, STEPS), resumed_opt, layouts)

fresh, fresh_opt = wrapped(saved)
old_rest = fresh_opt.load_state_dict({"method.carried": torch.ones(2)})  # a checkpoint of an earlier robustify
train(fresh, range(SLICE, STEPS))

same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)
s, r = straight_opt.state.psgd, resumed_opt.state.psgd
json.dump({"hook": comm_hook_name(straight), "kinds": sorted({k.split(".")[1] for k in tensors}),
           "resumed": same(weights(straight), weights(resumed)), "fresh": same(weights(straight), weights(fresh)),
           "rest": sorted(rest), "old_rest": sorted(old_rest), "fresh_iter": fresh_opt.state.psgd.iter,
           "iters": [s.iter, r.iter], "rng": str(s.rng.get_state()) == str(r.rng.get_state()),
           "relaid": layouts[0] != layouts[-1], "buckets": len(s.q_memory_dict)},
          open(f"{folder}/out.json", "w"))
del straight, first, resumed, fresh  # DDP reducers before the group (as tests/test_sign_compression.py)
dist.destroy_process_group()
"""


def test_a_resumed_powersgd_run_is_bit_identical_to_the_uninterrupted_one(tmp_path: Path):
    script = tmp_path / "powersgd.py"
    script.write_text(SCRIPT)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                         env=launch_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["hook"] == "checkpointed_powerSGD_hook"
    assert r["kinds"] == ["error", "p", "q"]  # every memory is saved, per parameter
    assert r["relaid"] and r["buckets"] >= 2  # the resumed DDP moved the parameters between its buckets
    assert r["resumed"] and r["rng"] and r["iters"] == [6, 6]  # exact, and no fresh matrices drawn after the resume
    assert r["rest"] == r["old_rest"] == ["method.carried"]  # the method's state is handed on, the hook's kept
    assert not r["fresh"] and r["fresh_iter"] == 3  # an old checkpoint resumes, the hook starting afresh
