"""Run folders for the zoo/RobustBench tests, written from a hand-built :class:`RunRecord` (no training): the
record says which data set, threat model, resolution, examples and AutoAttack version the evaluation used, which
is all that RobustBench's format and leaderboard look at. The weights are a random ``test_resnet`` saved with timm's
``save_for_hf``, so ``robustify push`` (which loads them) accepts the folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import timm

from robustify.fileio import file_sha256
from robustify.publish.runrecord import Evaluation, RunRecord, Training


def make_record(dataset: str = "cifar10", norm: str = "Linf", eps: float = 8 / 255, n: int = 10_000,
                size: int = 32, aa: str | None = "standard", split: str = "test", arch: str = "resnet50",
                clean: float = 0.8512, aa_acc: float | None = 0.4321, pretrained: bool = True) -> RunRecord:
    training = Training(
        name="run-a", architecture=arch, base_model=f"{arch}.a1_in1k", base_model_hub_id=f"timm/{arch}.a1_in1k",
        pretrained=pretrained, dataset=dataset, dataset_hub_id=None, train_split="train", eval_split=split,
        norm=norm, eps=eps, input_size=[3, size, size], mean=[0.5] * 3, std=[0.5] * 3,
        method={"name": "fgsm-rs", "alpha": 1.25 * eps}, bn_mode="train", schedule={"name": "slow-start-fast-decay",
                                                                                    "lr": 0.1},
        optimizer="sgd", batch_size=128, epochs=5)
    ev = Evaluation(source="robustify eval", norm=norm, eps=eps, split=split, n_examples=n, input_size=[3, size, size],
                    precision="fp32", clean_acc=clean, preset="standard", data=dataset, pgd_acc=0.47,
                    pgd={"norm": norm, "eps": eps, "steps": 50, "restarts": 10, "loss": "ce,cw", "alpha": eps / 4},
                    autoattack_acc=aa_acc if aa else None, autoattack={"version": aa} if aa else None)
    return RunRecord(training, [ev], [], {"wall_seconds": 1.0})


def make_run(folder: Path, record: RunRecord | None = None, **kw) -> Path:
    record = record or make_record(**kw)
    folder.mkdir(parents=True)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    timm.models.save_for_hf(model, str(folder), model_config={"robustness": record.robustness()},
                            safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["license"] = "apache-2.0"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    record.training.weights_sha256 = file_sha256(folder / "model.safetensors")  # the record names its weights
    record.write(folder)
    (folder / "recipe.yaml").write_text("model:\n  name: resnet50.a1_in1k\n")
    return folder


RUNNER = """
import contextlib, io, json, sys
from robustify.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def cli(env: dict[str, str], *commands: list[str]) -> list[tuple[int, str, str]]:
    """Run each command with ``robustify.cli.main`` in one fresh interpreter (huggingface_hub reads HF_ENDPOINT at
    import time, so the Hub client must start in a process whose environment points at the local server)."""
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([list(c) for c in commands])], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
