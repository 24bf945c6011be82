"""model.freeze (none | backbone | stem | stages:N through timm's group_matcher and timm.utils.freeze) and
data.per_class (few-shot subsets): frozen parameters are bit-identical after training and get no optimizer state; a
two-stage LP-FT recipe trains the head first, then everything; the few-shot subset is seeded, balanced, disjoint from
the held-out probe and recorded; a robust backbone transferred by linear probing keeps robustness that a natural one
does not have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robustify.cli import main as cli
from robustify.config import build_config
from robustify.data import QUICKSTART_DIR
from robustify.data.few_shot import per_class_indices
from robustify.errors import UserError
from robustify.models import load_backbone
from robustify.train.optim import build_optimizer
from robustify.train.options import freeze

TINY = ["data.max_train_examples=256", "data.batch_size=32", "eval.n_examples=64", "eval.pgd_steps=3",
        "train.probe_size=32", "train.probe_steps=1", "train.log_every=1"]
BACKBONE = QUICKSTART_DIR / "backbone" / "model.safetensors"


def test_specs_name_timms_groups():
    net = load_backbone("quickstart").backbone  # test_resnet: stem conv1.*, stages layer1..layer4, head fc
    every = [n for n, _ in net.named_parameters()]
    assert freeze.frozen_names(net, "none") == []
    assert freeze.frozen_names(net, "backbone") == [n for n in every if not n.startswith("fc.")]
    assert {n.split(".")[0] for n in freeze.frozen_names(net, "stem")} == {"conv1", "bn1"}
    assert {n.split(".")[0] for n in freeze.frozen_names(net, "stages:2")} == {"conv1", "bn1", "layer1", "layer2"}
    with pytest.raises(UserError, match="has 4 stages"):
        freeze.frozen_names(net, "stages:5")


def test_frozen_parameters_get_no_optimizer_state_and_stay_put():
    net = load_backbone("quickstart")
    counts = freeze.apply(net.backbone, "stages:1")
    assert counts is not None and counts["frozen"] > 0 and counts["trainable"] > 0
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    frozen_bn = {n: b.clone() for n, b in net.named_buffers() if n.startswith("backbone.conv1")}
    cfg = build_config("quickstart", ["optim.weight_decay=0.1"])
    opt = build_optimizer(net, cfg)
    net.train()
    for _ in range(2):
        net(torch.rand(8, 3, 32, 32)).logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad()
    trained = {id(p) for p in opt.state}
    assert all(id(p) not in trained for p in net.parameters() if not p.requires_grad)
    assert all(torch.equal(dict(net.named_parameters())[n], v) for n, v in frozen.items())
    assert all(torch.equal(dict(net.named_buffers())[n], v) for n, v in frozen_bn.items())  # BatchNorm stats too
    assert freeze.apply(net.backbone, "none") is None  # the next stage: everything trainable again
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("value", ["stages:0", "head", "stages:x", "all"])
def test_bad_freeze_is_one_line(value, capsys):
    assert cli(["finetune", "--dry-run", "--set", f"model.freeze={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.freeze" in err and "stages:N" in err


def test_per_class_is_seeded_and_balanced():
    labels = [i % 3 for i in range(30)]
    a = per_class_indices(labels, 4, 0, 3)
    assert a == per_class_indices(labels, 4, 0, 3) != per_class_indices(labels, 4, 1, 3)
    assert sorted(np.bincount([labels[i] for i in a]).tolist()) == [4, 4, 4]
    with pytest.raises(UserError, match="class 0 has only 10"):
        per_class_indices(labels, 11, 0, 3)


def test_lp_ft_recipe_freezes_then_trains_everything(tmp_path: Path):
    from robustify.train.trainer import finetune

    run = tmp_path / "run"
    cfg = build_config("quickstart-lp-ft", TINY + ["data.per_class=8", f"output_dir={run}"])
    cfg.stages[0]["train"]["epochs"] = cfg.stages[1]["train"]["epochs"] = 1  # one epoch each (validated again)
    metrics = finetune(cfg)
    assert [h.get("freeze") for h in metrics["history"]] == ["backbone", None]
    few = metrics["probe"]["few_shot"]
    assert few["per_class"] == 8 and few["examples"] == 80 and few["classes"] == 10
    assert metrics["cost"]["optimizer_steps"] == 2 * (80 // 32)
    # the second stage trained the backbone, so its weights moved; the first stage alone is checked above
    base, out = load_file(str(BACKBONE)), load_file(str(run / "model.safetensors"))
    assert not torch.equal(base["conv1.0.weight"], out["conv1.0.weight"])
    assert json.loads((run / "config.json").read_text())["robustness"]["options"]["per_class"] == 8


def _relabelled(tmp_path: Path) -> Path:
    """A new task from the quickstart digits: only digits 0-5, relabelled as three pairs {0,1} {2,3} {4,5}."""
    with np.load(QUICKSTART_DIR / "digits.npz") as a:
        data = {k: a[k] for k in a.files}
    out = {}
    for split in ("train", "test"):
        keep = data[f"y_{split}"] < 6
        out[f"x_{split}"], out[f"y_{split}"] = data[f"x_{split}"][keep], data[f"y_{split}"][keep] // 2
    path = tmp_path / "pairs.npz"
    np.savez(path, **out)
    return path


def test_robust_backbone_transfers_its_robustness(tmp_path: Path):
    """Linear probes (model.freeze=backbone, natural training) on a relabelled task: from a robust quickstart
    backbone (a short fgsm-rs run) the probe keeps PGD accuracy far above a probe on the natural backbone."""
    from robustify.train.trainer import finetune

    robust = tmp_path / "robust"
    finetune(build_config("quickstart", ["data.max_train_examples=448", "train.epochs=3", "eval.n_examples=32",
                                         "eval.pgd_steps=2", "train.probe_size=64", "train.probe_steps=2",
                                         f"output_dir={robust}"]))
    task = _relabelled(tmp_path)
    results = {}
    for name, model in (("robust", str(robust)), ("natural", "quickstart")):
        m = finetune(build_config("quickstart", ["model.freeze=backbone", "method.name=natural", f"model.name={model}",
                                                 f"data.name=npz:{task}", "train.epochs=2", "eval.n_examples=200",
                                                 "eval.pgd_steps=10", "train.probe_size=32", "train.probe_steps=1",
                                                 "data.max_train_examples=320", "data.batch_size=32",
                                                 f"output_dir={tmp_path / ('probe-' + name)}"]))
        results[name] = m["after"]
        frozen = load_file(str(tmp_path / f"probe-{name}" / "model.safetensors"))
        source = load_file(str(robust / "model.safetensors")) if name == "robust" else load_file(str(BACKBONE))
        assert all(torch.equal(frozen[k], source[k]) for k in frozen if not k.startswith("fc."))  # bit-identical
    print(f"transfer to pairs, linear probe: robust {results['robust']}, natural {results['natural']}")
    assert results["robust"]["pgd_acc"] >= results["natural"]["pgd_acc"] + 0.1  # measured: 13.0% vs 0.0%
