"""Options compose (issue 26): every pair of training options either trains or is refused up front, before any
weights or data are loaded, in one line naming both; a natural stage (LP-FT's linear probe) runs without the run's
adversarial options instead of refusing them; ``--limit-train`` shrinks what depends on it instead of refusing.

Trade-off, for the suite's budget (< 90 s for this file on one core): every refused pair is checked, cheaply,
through the config and preflight path (no training); of the pairs that run, the suite trains every option alone
and a pair set that covers each option at least twice (:data:`PAIRS`), each on 64 quickstart images for one epoch of 2
minibatches, in-process. The whole matrix (every pair, ~140 tiny runs, several minutes) runs with
``ROBUSTIFY_ALL_PAIRS=1``: ``ROBUSTIFY_ALL_PAIRS=1 python -m pytest -n 0 tests/test_compose.py -k every_pair``. The
time-sliced resume of each option (stop after one epoch, resume, bit-identical weights) is tested with each option
(tests/test_awp.py, test_eps_warmup.py, test_fosc.py, test_local_sgd.py, test_sign_compression.py,
test_precision.py, test_new_methods.py) and for the ones without one, and for LP-FT with each option, in
tests/test_resume.py.
"""

from __future__ import annotations

import itertools
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robustify.config import build_config, expand_stages, load_recipe
from robustify.data import QUICKSTART_DIR
from robustify.errors import UserError
from robustify.train.preflight import preflight

# a few optimizer steps: 80 images, 16 held out for the probe, 2 minibatches of 32, 1 epoch (LP-FT: 1 per stage)
TINY = ["data.max_train_examples=80", "train.probe_size=16", "data.batch_size=32", "train.epochs=1",
        "train.probe_steps=1", "eval.n_examples=16", "eval.pgd_steps=1", "train.log_every=100", "method.steps=2"]
UNLABELED = "{unlabeled}"  # replaced by the path of a small npz of quickstart images (the fixture below)
# each option as a user turns it on (docs/configuration.md, docs/methods-frontier.md, docs/seed-methods.md)
OPTIONS: dict[str, list[str]] = {
    "awp": ["train.awp=true"],
    "ema": ["train.ema=true"],
    "eps-warmup": ["threat.eps_warmup_fraction=0.5"],
    "local-sgd": ["train.local_sgd_steps=2"],
    "sign": ["train.grad_compression=sign"],
    "powersgd": ["train.grad_compression=powersgd"],
    "unlabeled": [f"data.unlabeled=npz:{UNLABELED}"],
    "lp-ft": [],  # the two-stage recipe recipes/quickstart-lp-ft.yaml (linear probe, then adversarial fine-tuning)
    "freeze": ["model.freeze=stem"],
    "pure-bf16": ["train.mixed_precision=pure-bf16"],
    # 2 epochs: the threshold is fosc_start in the first and 0 in the last (one epoch would never stop an example)
    "fosc": ["method.name=pgd", "method.fosc=true", "method.fosc_start=5", "train.epochs=2"],
    "trades": ["method.loss=trades"],
    "L2": ["threat.norm=L2", "threat.eps=0.5"],
    "L1": ["method.name=pgd", "threat.norm=L1", "threat.eps=12"],
    "deterministic": ["train.deterministic=true"],
    "few-shot": ["data.per_class=4"],
    "grad-accum": ["train.grad_accum=2"],
    # timm's augmentation and losses (issue 30): mixup + CutMix with smoothed soft targets, label smoothing, RandAugment
    "mixup": ["train.mixup_alpha=0.8", "train.cutmix_alpha=1.0", "train.label_smoothing=0.1"],
    "label-smoothing": ["train.label_smoothing=0.1"],
    "randaugment": ["data.augment=timm", "data.auto_augment=rand-m9-mstd0.5-inc1", "data.num_workers=0"],
    "extra": [f"data.extra=npz:{UNLABELED}", "data.extra_kind=real"],  # the npz as extra labelled data (labels 0)
}
# the key each option's refusals name
KEYS = {"awp": "train.awp", "ema": "train.ema", "eps-warmup": "threat.eps_warmup_fraction",
        "local-sgd": "train.local_sgd_steps", "sign": "train.grad_compression", "powersgd": "train.grad_compression",
        "unlabeled": "data.unlabeled", "lp-ft": "stages", "freeze": "model.freeze",
        "pure-bf16": "train.mixed_precision", "fosc": "method.fosc", "trades": "method.loss",
        "L2": "threat.norm", "L1": "threat.norm", "deterministic": "train.deterministic", "few-shot": "data.per_class",
        "grad-accum": "train.grad_accum", "mixup": "train.mixup_alpha", "label-smoothing": "train.label_smoothing",
        "randaugment": "data.auto_augment",
        "extra": "data.extra"}
# pairs refused up front, each for a stated reason (the line names both keys)
REFUSED = {
    frozenset({"ema", "local-sgd"}): "a per-process weight average would drift between the model averages",
    frozenset({"local-sgd", "sign"}): "local SGD sends no gradients",
    frozenset({"local-sgd", "powersgd"}): "local SGD sends no gradients",
    frozenset({"local-sgd", "grad-accum"}): "local SGD counts optimizer steps",
    frozenset({"pure-bf16", "ema"}): "a 0.1% average update vanishes in bf16 weights",
    frozenset({"pure-bf16", "awp"}): "AWP's restore is not exact in bf16",
    frozenset({"pure-bf16", "local-sgd"}): "not supported together yet",
    frozenset({"pure-bf16", "sign"}): "the gradients already travel in bf16",
    frozenset({"pure-bf16", "powersgd"}): "the gradients already travel in bf16",
    frozenset({"fosc", "trades"}): "FOSC is defined on the cross-entropy attack",
}
NOT_A_PAIR = {frozenset({"sign", "powersgd"})}  # one key given twice: the last value wins, as for any --set
# the pairs the suite trains: each option in at least two of them (the rest: ROBUSTIFY_ALL_PAIRS=1)
PAIRS = [("awp", "trades"), ("awp", "lp-ft"), ("ema", "lp-ft"), ("ema", "eps-warmup"), ("eps-warmup", "L2"),
         ("local-sgd", "freeze"), ("local-sgd", "L1"), ("sign", "fosc"), ("sign", "unlabeled"), ("powersgd", "L2"),
         ("powersgd", "few-shot"), ("unlabeled", "lp-ft"), ("freeze", "pure-bf16"), ("pure-bf16", "trades"),
         ("fosc", "L2"), ("trades", "lp-ft"), ("L1", "deterministic"), ("deterministic", "grad-accum"),
         ("few-shot", "grad-accum"), ("mixup", "trades"), ("mixup", "unlabeled"), ("randaugment", "mixup"),
         ("label-smoothing", "awp"), ("label-smoothing", "lp-ft"), ("randaugment", "few-shot")]
PAIRS += [("extra", "lp-ft"), ("extra", "trades")]


def compose(names: tuple[str, ...], unlabeled: Path, out: Path) -> tuple[str, list[str]]:
    """(recipe, overrides) of a tiny run with these options on."""
    sets = [s.replace(UNLABELED, str(unlabeled)) for n in names for s in OPTIONS[n]]
    if "lp-ft" not in names:
        return "quickstart", [*TINY, *sets, f"output_dir={out}"]
    stages = load_recipe("quickstart-lp-ft")["stages"]
    for stage in stages:
        stage["train"] = {**stage.get("train", {}), "epochs": 1}
    return "quickstart-lp-ft", [*TINY, *sets, f"output_dir={out}",
                                "stages=" + yaml.safe_dump(stages, default_flow_style=True).strip()]


def up_front(names: tuple[str, ...], unlabeled: Path, out: Path) -> str | None:
    """The one-line refusal of the config and preflight checks (nothing loaded), or None when they pass."""
    recipe, sets = compose(names, unlabeled, out)
    try:
        preflight(build_config(recipe, sets))
    except UserError as e:
        return str(e)
    return None


def outcome(names: tuple[str, ...], unlabeled: Path, out: Path) -> tuple[str, str]:
    """("refused", line) up front, ("ran", "") after a tiny run, ("refused late", line) for a refusal after loading,
    or ("broke", the traceback's last line)."""
    from robustify.train.trainer import finetune

    line = up_front(names, unlabeled, out)
    if line is not None:
        return "refused", line
    recipe, sets = compose(names, unlabeled, out)
    try:
        metrics = finetune(build_config(recipe, sets))
    except UserError as e:
        return "refused late", str(e)
    except Exception as e:  # noqa: BLE001 - the matrix records what broke
        return "broke", traceback.format_exception_only(e)[-1].strip()
    stages = expand_stages(build_config(recipe, sets))
    epochs = sum(s.train.epochs for _, s in stages)
    if len(metrics["history"]) != epochs or not (out / "model.safetensors").is_file():
        return "broke", f"history {len(metrics['history'])} epochs of {epochs}, or no model.safetensors"
    return "ran", ""


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 quickstart test images as an unlabeled npz (their labels are never read)."""
    with np.load(QUICKSTART_DIR / "digits.npz") as a:
        x = a["x_test"][-48:]
    path = tmp_path_factory.mktemp("unlabeled") / "digits.npz"
    np.savez(path, x_train=x, y_train=np.zeros(len(x), dtype=np.int64), x_test=x[:1], y_test=np.zeros(1, np.int64))
    return path


@pytest.fixture(autouse=True)
def _deterministic_off():
    """train.deterministic switches torch's process-wide deterministic mode on; put it back for the next test."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


ALL_PAIRS = [tuple(p) for p in itertools.combinations(OPTIONS, 2)]


def test_the_pair_set_covers_each_option_twice():
    counts = {n: sum(n in p for p in PAIRS) for n in OPTIONS}
    assert min(counts.values()) >= 2, counts
    assert not {frozenset(p) for p in PAIRS} & (set(REFUSED) | NOT_A_PAIR)


@pytest.mark.parametrize("pair", sorted(REFUSED, key=sorted), ids=lambda p: "+".join(sorted(p)))
def test_a_refused_pair_is_one_line_naming_both_before_anything_loads(pair, unlabeled: Path, tmp_path: Path):
    a, b = sorted(pair)
    line = up_front((a, b), unlabeled, tmp_path / "run")
    assert line is not None and "\n" not in line, line
    assert KEYS[a] in line and KEYS[b] in line, line
    assert not (tmp_path / "run").exists()  # nothing written


def test_every_other_pair_passes_the_checks_up_front(unlabeled: Path, tmp_path: Path):
    """The config and preflight accept every pair not listed in REFUSED (no training: a few ms each)."""
    refused = {p: up_front(p, unlabeled, tmp_path) for p in ALL_PAIRS if frozenset(p) not in set(REFUSED) | NOT_A_PAIR}
    assert {p: line for p, line in refused.items() if line is not None} == {}


@pytest.mark.parametrize("names", [(n,) for n in OPTIONS] + PAIRS, ids=lambda n: "+".join(n))
def test_an_option_or_a_pair_trains(names: tuple[str, ...], unlabeled: Path, tmp_path: Path):
    assert outcome(names, unlabeled, tmp_path / "run") == ("ran", "")


@pytest.mark.skipif(not os.environ.get("ROBUSTIFY_ALL_PAIRS"), reason="the whole matrix: set ROBUSTIFY_ALL_PAIRS=1")
@pytest.mark.parametrize("names", [p for p in ALL_PAIRS if frozenset(p) not in set(REFUSED) | NOT_A_PAIR],
                         ids=lambda n: "+".join(n))
def test_every_pair_trains(names: tuple[str, ...], unlabeled: Path, tmp_path: Path):
    assert outcome(names, unlabeled, tmp_path / "run") == ("ran", "")


def test_fosc_with_one_example_left_running_under_train_mode_batchnorm():
    """The traceback of `--method pgd --set method.fosc=true --set threat.norm=L2`: when FOSC's running set shrank
    to one example, the attack forwarded that one alone and BatchNorm in train mode refused a batch of one. The
    whole batch is forwarded now, the stopped examples masked: a stopped example keeps its perturbation."""
    from robustify import attacks
    from robustify.train.options.fosc import pgd_fosc
    from tests.helpers import quickstart_batch, quickstart_model

    model = quickstart_model().train()
    x, y = quickstart_batch(8)
    torch.manual_seed(0)
    _, first, _ = pgd_fosc(model, x, y, 0.5, 0.25, 1, "L2", threshold=0.0)  # each example's first FOSC
    top = first.sort(descending=True).values
    threshold = float(top[0] + top[1]) / 2  # exactly one example keeps running after the first step
    torch.manual_seed(0)
    start = attacks.random_init(x, 0.5, "L2")
    torch.manual_seed(0)
    delta, value, grads = pgd_fosc(model, x, y, 0.5, 0.25, 3, "L2", threshold=threshold)
    stopped = first < threshold
    assert int(stopped.sum()) == 7
    assert torch.equal(delta[stopped], start[stopped])  # stopped at the first evaluation: still the random start
    assert not torch.equal(delta[~stopped], start[~stopped])
    assert 8 + 1 <= int(grads) <= 8 + 2 and torch.equal(value[stopped], first[stopped])


def test_a_run_level_adversarial_option_applies_to_the_adversarial_stages_and_says_so(capsys):
    """`--set train.awp=true` (or method.loss=trades, method.fosc=true) with LP-FT: the linear probe is natural, so
    it trains without them and the fine-tuning stage with them, in one line of the run's (and dry run's) first lines;
    a stage that asks for one with natural training itself is still refused in one line."""
    from robustify.cli import main as cli

    cfg = build_config("quickstart-lp-ft", ["train.awp=true", "method.loss=trades"])
    (_, probe), (_, tune) = expand_stages(cfg)
    assert (probe.train.awp, probe.method.loss, tune.train.awp, tune.method.loss) == (False, "ce", True, "trades")
    assert cli(["finetune", "--recipe", "quickstart-lp-ft", "--set", "train.awp=true", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("note: train.awp=true applies to the adversarial stage(s) finetune only; the natural stage(s) "
            "linear-probe train without it (no adversary)") in out
    stage = "stages=[{name: probe, method: {name: natural}, train: {awp: true}}, {name: tune}]"
    assert cli(["finetune", "--set", stage, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stages[0] (probe): train.awp=true with method.name='natural'" in err[0], err


def test_limit_train_is_a_quick_trial_that_shrinks_the_probe_and_the_batch(tmp_path: Path, capsys):
    """`robustify finetune --limit-train 128` was refused (the default 256-example probe cannot be held out of 128);
    it now shrinks the probe (and the batch, when too few examples are left) and says so first. A value given on the
    command line is the user's: it is kept, and refused in one line if it cannot fit."""
    from robustify.cli import main as cli

    assert cli(["finetune", "--limit-train", "128", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("robustify: quick trial (--limit-train 128): train.probe_size 256 -> 32"), out[:300]
    assert cli(["finetune", "--limit-train", "128", "--set", "train.probe_size=200", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.probe_size=200 cannot be held out of 128" in err[0], err
    run = tmp_path / "run"
    assert cli(["finetune", "--limit-train", "48", "--limit-eval", "8", "--epochs", "1", "--output-dir", str(run),
                "--set", "eval.pgd_steps=1", "--set", "train.probe_steps=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["robustify: quick trial (--limit-train 48): train.probe_size 256 -> 12, held out of the 48 "
                         "training examples (--set train.probe_size=N to choose)",
                         "robustify: quick trial (--limit-train 48): data.batch_size 64 -> 36, the 36 examples left "
                         "after the probe (--set data.batch_size=N to choose)"], lines[:3]
    saved = build_config(str(run / "recipe.yaml"))
    assert (saved.train.probe_size, saved.data.batch_size, saved.data.max_train_examples) == (12, 36, 48)
