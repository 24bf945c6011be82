"""Two processes on CPU (gloo) through torchrun: gradients synchronised, one run folder, world size recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import timm
import torch


def _free_port() -> int:
    """A free TCP port on 127.0.0.1 for the rendezvous (torchrun's --master_port 0 never rendezvouses here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_keeps_ranks_in_sync(tmp_path: Path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "robustify", "finetune", "--epochs", "2", "--output-dir", str(run),
           "--set", "data.max_train_examples=512", "--set", "eval.n_examples=64", "--set", "eval.pgd_steps=3",
           "--set", "train.probe_size=64", "--set", "data.batch_size=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["cost"]["world_size"] == 2
    assert m["cost"]["ranks_in_sync"] is True  # bit-identical weights on both ranks after training
    # each process saw its own half of the data: 512 / 64 / 2 = 4 batches per process and epoch
    assert m["history"][-1]["opt_steps"] == 2 * 4
    assert m["cost"]["example_passes"] == 2 * 4 * 64 * 2 * 2  # epochs x batches x batch x processes x passes
    assert res.stdout.count("run folder:") == 1  # one process wrote and reported it
    model = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
