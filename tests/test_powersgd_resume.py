"""``train.grad_compression: powersgd`` (train/options/powersgd_hook.py) resumes exactly. One gloo process (a DDP of
world size 1 still runs the hook) trains a small model straight through and again in two slices, the hook's state
between them going through the option's ``state_dict`` and the checkpoint's safetensors + JSON round trip into a
fresh DDP (whose buckets are laid out anew: its first step runs under DDP's initial layout, then the rebuilt one):
the weights end bit-identical, and differ from an old checkpoint's resume, where the hook starts afresh."""

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
    torch.manual_seed(0)  # four matrices the hook compresses, in several buckets
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
    option.state.start_iter = 2  # compress from the third step on (torch's least: DDP rebuilds its buckets at 1)
    return ddp, option

untouched = []  # the hook leaves the global generator alone (a backward draws nothing itself)

def train(ddp, steps):
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in steps:
        torch.manual_seed(step)
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        before = torch.get_rng_state()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        untouched.append(torch.equal(before, torch.get_rng_state()))
        opt.step()

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
train(resumed, range(SLICE, STEPS))
log = resumed._get_ddp_logging_data()  # bucket sizes in bytes: DDP's first layout, and after its rebuild
relaid = [log.get("bucket_sizes"), log.get("rebuilt_bucket_sizes")]

fresh, fresh_opt = wrapped(saved)
old_rest = fresh_opt.load_state_dict({"method.carried": torch.ones(2)})  # a checkpoint of an earlier robustify
train(fresh, range(SLICE, STEPS))

same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)
s, r = straight_opt.state, resumed_opt.state
json.dump({"hook": comm_hook_name(straight), "kinds": sorted({k.split(".")[1] for k in tensors if "powersgd" in k}),
           "resumed": same(weights(straight), weights(resumed)), "fresh": same(weights(straight), weights(fresh)),
           "rest": sorted(rest), "old_rest": sorted(old_rest), "fresh_iter": fresh_opt.state.iter,
           "iters": [s.iter, r.iter], "untouched": all(untouched), "relaid": relaid},
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
    initial, rebuilt = r["relaid"]
    assert initial and rebuilt and initial != rebuilt  # the resumed slice ran under two bucket layouts
    assert r["resumed"] and r["iters"] == [6, 6]  # bit-identical weights
    assert r["untouched"]  # no step reseeded the global generator (the first Q matrices have their own)
    assert r["rest"] == r["old_rest"] == ["method.carried"]  # the method's state is handed on, the hook's kept
    assert not r["fresh"] and r["fresh_iter"] == 3  # an old checkpoint resumes, the hook starting afresh
