"""Small models and data for fast unit tests (no training, no downloads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from robustify.models import load_backbone


def quickstart_model() -> torch.nn.Module:
    """The bundled, naturally trained (non-robust) quickstart backbone with normalization inside, in eval mode."""
    return load_backbone("quickstart").eval()


def quickstart_batch(n: int = 64, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    from robustify.data import QUICKSTART_DIR

    with np.load(QUICKSTART_DIR / "digits.npz") as a:
        x = torch.from_numpy(a[f"x_{split}"][:n]).permute(0, 3, 1, 2).float().div(255)
        y = torch.from_numpy(a[f"y_{split}"][:n])
    return x, y


def fake_checkpoint(run_dir, progress: int = 1):
    """A folder that counts as a complete checkpoint (``checkpoint.checkpoint_dirs``), for run-folder tests."""
    from robustify.train.checkpoint import CHECKPOINTS, STATE_FILE

    folder = run_dir / CHECKPOINTS / f"ckpt_{progress:09d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text("{}")
    return folder


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a torchrun rendezvous (torchrun's --master_port 0 never rendezvouses here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = Path(__file__).resolve().parent.parent


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test launches: one thread per process (the suite's workers already use both
    cores), offline, and this checkout first on the path (so a launched ``-m robustify`` runs the code under test
    and a script can import ``tests``)."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def hub_client_env(hub: Any, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that talks to the suite's local Hub server ``hub`` as a user's would: no HF_* or
    proxy variable of the machine (a proxy would hijack 127.0.0.1), the server as HF_ENDPOINT with its token, its own
    HF_HOME, Xet and telemetry off, no progress bars, this checkout first on the path."""
    import os

    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(home), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1",
               NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(ROOT), **extra)
    return env


def torchrun_cmd(args: list[str], nproc: int = 2, port: int | None = None, nnodes: int = 1,
                 node_rank: int = 0) -> list[str]:
    """``torchrun --nproc_per_node N ... args`` on 127.0.0.1 (the one spelling of the launcher in the suite): with
    ``nnodes > 1`` each node's command must be given the same ``port``."""
    nodes = ["--nnodes", str(nnodes), "--node_rank", str(node_rank)] if nnodes > 1 else []
    return [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()), *args]


def torchrun(args: list[str], cwd: Path | None = None, nproc: int = 2, timeout: float = 300,
             extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N args`` on CPU (gloo), waited for; a hang fails the test at ``timeout`` instead
    of waiting forever. ``args`` is a script path or ``-m module ...`` with its arguments."""
    env = launch_env(**(extra_env or {}))
    return subprocess.run(torchrun_cmd(args, nproc), capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


class Recorder(torch.nn.Module):
    """A tiny linear classifier that records every input batch it is called with (method unit tests): ``features``
    inputs (a flattened C x H x W batch), ``classes`` logits; ``zero``: constant logits, so the input gradient is
    exactly zero and sign(grad) = 0."""

    def __init__(self, features: int = 3 * 8 * 8, classes: int = 4, zero: bool = False) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(features, classes)
        if zero:
            torch.nn.init.zeros_(self.fc.weight)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.fc(x.flatten(1))


def step_context(model: torch.nn.Module, steps: list[int], lr: float = 0.1):
    """A StepContext around plain SGD, recording one entry in ``steps`` per optimizer step (method unit tests)."""
    import contextlib

    from robustify.train.methods import StepContext

    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def optimize(loss: torch.Tensor) -> None:
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append(1)

    return StepContext(model=model, attack_model=model, optimize=optimize, autocast=contextlib.nullcontext)
