"""``train.grad_compression: sign`` (signSGD majority vote + error feedback) on 2 gloo processes: the hook is
registered, every rank applies the same update, the bytes all-reduced per step are a quarter of fp32's (counted by
intercepting ``dist.all_reduce``, under the fp32 reference hook and under ours), the error memory round-trips for an
exact resume, and the quickstart still becomes robust with it."""

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
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP
from robustify.train.options import sign_hook
from robustify.train.hardware import comm_hook_name

dist.init_process_group("gloo")
rank = dist.get_rank()
sent = []
real = dist.all_reduce
def counting(t, *a, **k):
    sent.append(t.numel() * t.element_size())
    return real(t, *a, **k)
dist.all_reduce = counting

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 6 * 6, 10))

def grads_after(ddp, step):
    torch.manual_seed(100 * step + rank)  # each rank its own data
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    ddp.zero_grad()
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    return torch.cat([p.grad.flatten() for p in ddp.parameters()])

n_params = sum(p.numel() for p in model().parameters())
# the fp32 reference: PyTorch's own all-reduce hook, in Python so the counter sees it
ref = DDP(model(), bucket_cap_mb=0.001)
ref.register_comm_hook(None, default_hooks.allreduce_hook)
sent.clear(); grads_after(ref, 0); fp32_bytes = sum(sent)

ddp = DDP(model(), bucket_cap_mb=0.001)
state = sign_hook.register(ddp)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
for step in range(3):
    sent.clear(); g = grads_after(ddp, step); opt.step()
sign_bytes = sum(sent)  # the last step's
gathered = [torch.zeros_like(g) for _ in range(2)]
dist.all_gather(gathered, g)
same_update = bool(torch.equal(gathered[0], gathered[1]))
values = sorted(set(g.abs().unique().tolist()))  # scale * vote: one magnitude per tensor (and 0)

# exact resume: the same weights + the saved error memory give the same next gradient
saved = {k: v.clone() for k, v in state.state_dict().items()}
weights = {k: v.clone() for k, v in ddp.module.state_dict().items()}
next_grad = grads_after(ddp, 3)
again = DDP(model(), bucket_cap_mb=0.001)
again.module.load_state_dict(weights)
state2 = sign_hook.register(again)
state2.load_state_dict(saved)
resumed = bool(torch.equal(grads_after(again, 3), next_grad))
fresh = DDP(model(), bucket_cap_mb=0.001); fresh.module.load_state_dict(weights); sign_hook.register(fresh)
without_memory = bool(torch.equal(grads_after(fresh, 3), next_grad))
if rank == 0:
    json.dump({"hook": comm_hook_name(ddp), "fp32": fp32_bytes, "sign": sign_bytes, "n_params": n_params,
               "same_update": same_update, "resumed": resumed, "without_memory": without_memory,
               "errors": len(saved), "magnitudes": len(values), "per_step": state.bytes_per_step},
              open(sys.argv[1], "w"))
del ref, ddp, again, fresh  # DDP reducers before the group: else gloo's threads can abort the exit (torch 2.14)
dist.barrier()
dist.destroy_process_group()
"""


def test_sign_hook_votes_sends_a_quarter_of_fp32_and_resumes_exactly(tmp_path: Path):
    script = tmp_path / "sign.py"
    script.write_text(SCRIPT)
    res = torchrun([str(script), str(tmp_path / "out.json")], tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["hook"] == "sign_majority_vote_hook"
    assert r["fp32"] == 4 * r["n_params"]  # one fp32 all-reduce of every gradient element
    assert r["sign"] == r["n_params"] + 4 * 4, r  # per step: 1 byte per element + one fp32 scale per tensor (4)
    assert r["sign"] < r["fp32"] / 3.9 and r["per_step"] == r["sign"]
    assert r["same_update"] and r["magnitudes"] <= 4 + 1
    assert r["errors"] == 4 and r["resumed"] and not r["without_memory"]  # the memory matters, and is restored


def test_sign_compression_config():
    assert build_config("quickstart", ["train.grad_compression=sign"]).train.grad_compression == "sign"
    with pytest.raises(ConfigError, match="choose one of: none, fp16, bf16, powersgd, sign"):
        build_config("quickstart", ["train.grad_compression=1bit"])


def test_quickstart_with_sign_compression_on_two_processes_stays_in_sync_and_robust(tmp_path: Path):
    run = tmp_path / "run"
    res = torchrun(["-m", "robustify", "finetune", "--epochs", "3", "--output-dir", str(run),
                    "--set", "train.grad_compression=sign", "--set", "data.max_train_examples=768",
                    "--set", "eval.n_examples=64", "--set", "eval.pgd_steps=3", "--set", "train.probe_size=32",
                    "--set", "train.probe_steps=2", "--set", "data.batch_size=32",
                    "--set", "train.probe_split=train"], tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["cost"]["comm_hook"] == "sign_majority_vote_hook" and m["cost"]["ranks_in_sync"] is True
    n_params = 0.37e6
    assert m["cost"]["comm_bytes_per_step"] < 0.3 * 4 * n_params * 1.1  # about a quarter of fp32's 4 per element
    assert m["after"]["pgd_acc"] > m["before"]["pgd_acc"] + 0.2, (m["before"], m["after"])


def test_sign_compression_resumes_exactly_with_each_process_error_memory(tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    sets = ["--set", "train.grad_compression=sign", "--set", "data.max_train_examples=256", "--set",
            "eval.n_examples=16", "--set", "eval.pgd_steps=1", "--set", "train.probe_size=16", "--set",
            "train.probe_steps=1", "--set", "data.batch_size=32", "--set", "train.probe_split=train",
            "--set", "train.select=last"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    for args in (["--output-dir", str(whole)], ["--output-dir", str(split), "--set", "train.stop_after=1"],
                 ["--output-dir", str(split), "--resume", "--set", "train.stop_after=null"]):
        res = torchrun(["-m", "robustify", "finetune", "--epochs", "2", *args, *sets], tmp_path, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        if "--resume" not in args and split in [Path(a) for a in args if a.startswith("/")]:
            (ckpt,) = sorted((split / "checkpoints").glob("ckpt_*"))[-1:]
            memories = []
            for rank in (0, 1):  # each process saved its own error memory
                with safe_open(str(ckpt / f"method_rank{rank}.safetensors"), framework="pt") as f:
                    memories.append({k: f.get_tensor(k) for k in f.keys() if k.startswith("comm_error.")})  # noqa: SIM118
            assert memories[0] and memories[0].keys() == memories[1].keys()
            assert any(not memories[0][k].equal(memories[1][k]) for k in memories[0])
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # bit-identical weights
