"""Two processes on CPU (gloo) through torchrun: gradients synchronised, one run folder, world size recorded."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from tests.helpers import torchrun


def test_two_process_run_keeps_ranks_in_sync(tmp_path: Path):
    run = tmp_path / "run"
    res = torchrun(["-m", "robustify", "finetune", "--epochs", "2", "--output-dir", str(run),
                    "--set", "data.max_train_examples=512", "--set", "eval.n_examples=64", "--set", "eval.pgd_steps=3",
                    "--set", "train.probe_size=64", "--set", "data.batch_size=64", "--set", "train.probe_split=train"],
                   tmp_path)
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


SHARDED_EVAL = """
import json, sys
import torch
from accelerate import Accelerator
from robustify.evaluate.kernel import shard_range, sharded_pgd_accuracy
from tests.helpers import quickstart_batch, quickstart_model

acc = Accelerator(cpu=True)
x, y = quickstart_batch(200)
res = sharded_pgd_accuracy(quickstart_model(), x, y, 0.1, steps=3, restarts=2, loss="ce+cw", batch_size=32,
                           accelerator=acc, progress=False)
# what the trainer does: each process holds (decodes) only its own block of the 200
start, end = shard_range(200, 32, acc.process_index, acc.num_processes)
own = sharded_pgd_accuracy(quickstart_model(), x[start:end], y[start:end], 0.1, steps=3, restarts=2, loss="ce+cw",
                           batch_size=32, accelerator=acc, progress=False, total=200)
if acc.is_main_process:
    open(sys.argv[1], "w").write(json.dumps(dict(res, own_block=own)))
acc.wait_for_everyone()  # every process past its last collective (as trainer._end), then the group destroyed: a
acc.end_training()  # group left alive, or torn down while a peer still works, can abort ("terminate called ...")
"""


def test_sharded_evaluation_equals_single_process(tmp_path: Path):
    """Two processes each attack half of the examples and report exactly the single-process counts, whether each
    holds all examples or (as the trainer's evaluation: decoded alone) only its own block."""
    from robustify.evaluate.kernel import sharded_pgd_accuracy
    from tests.helpers import quickstart_batch, quickstart_model

    script = tmp_path / "shard.py"
    script.write_text(SHARDED_EVAL)
    res = torchrun([str(script), str(tmp_path / "out.json")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "out.json").read_text())
    x, y = quickstart_batch(200)
    one = sharded_pgd_accuracy(quickstart_model(), x, y, 0.1, steps=3, restarts=2, loss="ce+cw", batch_size=32,
                               progress=False)
    assert two["processes"] == 2 and one["processes"] == 1
    assert (two["clean_acc"], two["pgd_acc"], two["n_examples"]) == (one["clean_acc"], one["pgd_acc"], 200)
    own = two["own_block"]  # each process given only its block (total=200): the same numbers
    assert (own["clean_acc"], own["pgd_acc"], own["n_examples"]) == (one["clean_acc"], one["pgd_acc"], 200)
    assert two["precision"] == "fp32"
    # the attack's cost is split: each process made about half of the input-gradient evaluations
    assert sum(two["attack_work"]) == one["attack_work"][0]
    assert min(two["attack_work"]) >= 0.3 * one["attack_work"][0]


def test_robustify_eval_under_torchrun_equals_one_process(tmp_path: Path, quickstart_run: Path):
    from robustify.cli import main as cli

    args = ["eval", str(quickstart_run), "--attack", "clean,fgsm,pgd", "--preset", "quick", "--n-examples", "40",
            "--batch-size", "32", "--no-curve", "--no-checks", "--no-update"]
    # three processes, two batches: one process has an empty share and must still reach every collective
    res = torchrun(["-m", "robustify", *args, "--output", str(tmp_path / "two.json")], tmp_path, nproc=3)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("examples (first 40") == 1  # one process prints the report
    assert cli([*args, "--output", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["processes"] == 3 and one["processes"] == 1
    for key in ("clean_acc", "fgsm_acc", "pgd_acc", "robust_acc"):
        assert one[key] == two[key], key
    assert one["pgd"]["last_iterate_acc_by_step"] == two["pgd"]["last_iterate_acc_by_step"]
    # each process decoded only the block of whole batches it attacked (2 batches of 32 and 8 over 3 processes:
    # none, the first, the second), and the subset's hash, taken over every process's examples, is the single one's
    assert two["data_loading"] == {"streamed": False, "decoded_per_process": [0, 32, 8]}
    assert one["data_loading"]["decoded_per_process"] == [40] and one["subset"] == two["subset"]


def test_rollback_and_best_model_come_from_memory_on_every_process(tmp_path: Path):
    """Two processes, a collapse forced by a second stage (see test_guard.py): both roll back to the best epoch from
    their own in-memory copy (no file another node wrote is read) and end with identical weights."""
    from tests.test_guard import STAGES

    run = tmp_path / "run"
    res = torchrun(["-m", "robustify", "finetune", "--output-dir", str(run), "--set", "eval.n_examples=64",
                    "--set", "eval.pgd_steps=3", "--set", "train.probe_size=128", "--set", "data.batch_size=32",
                    "--set", "train.save_on_each_node=true", "--set", STAGES], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert (m["stopped"] or "").startswith("catastrophic overfitting"), m["history"]
    assert m["cost"]["ranks_in_sync"] is True
    best = max(m["history"], key=lambda h: h["probe_robust_acc"])
    assert m["history"][m["selected_epoch"] - 1]["probe_robust_acc"] == best["probe_robust_acc"]
    assert m["after"]["pgd_acc"] > m["history"][-1]["probe_robust_acc"]  # the export is the best epoch, not the last
