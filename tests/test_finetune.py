"""The quickstart end to end, the run folder it writes, and plain timm loading it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

import robustify
from robustify.config import config_from_dict
from robustify.train.checkpoint import checkpoint_dirs
from tests.test_config import run_cli


def test_quickstart_makes_the_model_robust(quickstart_run: Path):
    m = json.loads((quickstart_run / "metrics.json").read_text())
    before, after = m["before"], m["after"]
    # the acceptance bar: PGD accuracy rises from under 20% to over 50%, clean stays above 90%
    assert before["pgd_acc"] < 0.2, before
    assert after["pgd_acc"] > 0.5, after
    assert after["clean_acc"] > 0.9, after
    assert after["pgd_acc"] > before["pgd_acc"] + 0.3
    for block in (before, after):
        assert set(block["pgd"]) >= {"norm", "eps", "steps", "restarts"}
        assert 0 <= block["clean_acc"] <= 1 and 0 <= block["pgd_acc"] <= block["clean_acc"]
        assert block["n_examples"] == 500 and block["pgd"]["eps"] == 0.1
    assert len(m["history"]) == 10
    assert {"loss", "train_acc", "probe_robust_acc", "lr", "seconds"} <= set(m["history"][0])
    cost = m["cost"]
    assert cost["epochs"] == 10 and cost["world_size"] == 1 and cost["wall_seconds"] > 0
    # epochs x batches x batch size x (attack + train) passes; 256 of the 1297 training images are the held-out probe
    assert cost["example_passes"] == 10 * ((1297 - 256) // 64) * 64 * 2


def test_run_folder_layout(quickstart_run: Path):
    for name in ("model.safetensors", "config.json", "README.md", "metrics.json", "recipe.yaml", "history.png"):
        assert (quickstart_run / name).is_file(), name
    assert checkpoint_dirs(quickstart_run)
    assert not list(quickstart_run.glob("*.bin")) and not list(quickstart_run.glob(".export-*"))
    cfg = json.loads((quickstart_run / "config.json").read_text())
    assert cfg["architecture"] == "test_resnet" and cfg["num_classes"] == 10
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    r = cfg["robustness"]
    assert r["threat_model"] == {"norm": "Linf", "eps": 0.1}
    assert r["method"]["name"] == "fgsm-rs" and abs(r["method"]["alpha"] - 0.125) < 1e-9
    assert r["schedule"]["name"] == "slow-start-fast-decay" and r["base_model"] == "quickstart"
    assert r["dataset"] == "quickstart" and r["results"]["pgd_acc"] > 0.5
    card = (quickstart_run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "timm" and "adversarial-robustness" in front["tags"]
    # the resolved recipe reproduces the run's config
    recipe = yaml.safe_load((quickstart_run / "recipe.yaml").read_text())
    assert config_from_dict(recipe).output_dir == str(quickstart_run)


def test_plain_timm_loads_the_run_folder_with_identical_logits(quickstart_run: Path, tmp_path: Path):
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = f"""
import sys, torch, timm
model = timm.create_model("local-dir:{quickstart_run}", pretrained=True).eval()
cfg = model.pretrained_cfg
x = torch.load("{tmp_path / 'x.pt'}", weights_only=True)
mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1); std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    torch.save(model((x - mean) / std), "{tmp_path / 'logits.pt'}")
assert "robustify" not in sys.modules
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    plain = torch.load(tmp_path / "logits.pt", weights_only=True)
    ours = robustify.load(str(quickstart_run))
    with torch.no_grad():
        assert torch.equal(ours(x), plain)


def test_finetune_refuses_to_overwrite_a_run(quickstart_run: Path):
    before = (quickstart_run / "metrics.json").read_bytes()
    res = run_cli("finetune", "--output-dir", str(quickstart_run))
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert (quickstart_run / "metrics.json").read_bytes() == before
