"""Every shipped recipe: listed, dry-run (nothing written), and trained for a few steps on stand-ins with the real
schema of its data set (a tiny timm model overriding the backbone); a run's recipe.yaml reruns it exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from robustify.cli import main
from robustify.recipes import plan, recipe_names
from tests import standins

RECIPES = recipe_names()
TINY = ["model.name=test_resnet", "model.pretrained=false", "model.channels_last=false", "data.batch_size=8",
        "data.eval_batch_size=8", "data.num_workers=0", "train.epochs=1", "train.probe_size=8", "train.probe_steps=1",
        "eval.pgd_steps=1", "train.mixed_precision=no", "train.log_every=1"]


@pytest.fixture(autouse=True)
def _no_thread_shutdown_sleep(monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.0, raising=False)


@pytest.fixture(scope="module")
def standin_data(tmp_path_factory) -> dict[str, list[str]]:
    """data overrides per data set: CIFAR stand-ins saved with save_to_disk, ImageNet's as Hub-layout parquet."""
    root = tmp_path_factory.mktemp("standins")
    standins.cifar10(32, 16).save_to_disk(str(root / "cifar10"))
    standins.cifar100(32, 16).save_to_disk(str(root / "cifar100"))
    standins.to_parquet(standins.imagenet(32, 16, 4), root / "imagenet")
    x = standins.cifar10(32, 16)["train"]
    np.savez(root / "extra.npz", image=np.stack([np.asarray(im) for im in x["img"]]), label=np.asarray(x["label"]))
    return {
        "extra": [f"data.extra=npz:{root / 'extra.npz'}"],  # a recipe's extra set (a Hub file of GBs) stands in
        "cifar10": [f"data.name=disk:{root / 'cifar10'}", "data.image_column=img", "data.label_column=label",
                    "data.image_size=48"],
        "cifar100": [f"data.name=disk:{root / 'cifar100'}", "data.image_column=img",
                     "data.label_column=fine_label", "data.image_size=48"],
        "imagenet-1k": [f"data.name=parquet:{root / 'imagenet'}", "data.image_size=32"],
        "quickstart": ["data.image_size=32"],  # the bundled data (quickstart-lp-ft), at its own 32 px
    }


def _sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def test_recipes_table_lists_every_recipe(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert len(RECIPES) >= 30 and "H100" in out
    for name in RECIPES:
        assert f" {name} " in out


def test_recipe_families_are_complete():
    names = set(RECIPES)
    for data in ("cifar10", "cifar100"):
        for model in ("resnet50", "convnext_tiny"):
            assert {f"{data}-{model}-{m}" for m in ("fgsm-rs", "free4", "free8", "pgd10")} <= names
        assert f"{data}-resnet18-scratch-pgd10" in names
    for eps in (2, 4):
        for model in ("resnet50", "convnext_tiny", "vit_base"):
            assert {f"imagenet-{model}-linf{eps}-{m}" for m in ("fgsm-rs", "free4")} <= names
    p = plan("cifar10-resnet50-free8")
    assert [s.name for s in p.stages] == ["natural", "adversarial"] and p.stages[1].passes_per_batch == 8
    assert p.stages[1].data_passes == 3 and p.cfg.data.attack_size == 32 and p.hours and p.hours > 0
    assert plan("imagenet-vit_base-linf4-free4").cfg.optim.name == "adamw"
    assert plan("imagenet-resnet50-linf2-fgsm-rs").cfg.data.eval_split == "validation"


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_writes_nothing(name: str, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the limit leaves room for the recipe's held-out probe (256 or 512 examples), as the real run needs
    assert main(["finetune", "--recipe", name, "--dry-run", "--limit-train", "1000", "--limit-eval", "50"]) == 0
    out = capsys.readouterr().out
    assert "resolved config:" in out and "plan:" in out and "cost:" in out and "check: model" in out
    assert "max_train_examples: 1000" in out and "n_examples: 50" in out
    assert list(tmp_path.iterdir()) == []


# every recipe but the CIFAR-100 twins of CIFAR-10 recipes, which scripts/make_recipes.py writes from the same table
# with only the data set changed: one CIFAR-100 recipe per backbone keeps the 100-class head and data covered
TRAINED = [n for n in RECIPES if n != "quickstart" and not (n.startswith("cifar100-") and not n.endswith("fgsm-rs"))]


@pytest.fixture(scope="module")
def trained(standin_data: dict, tmp_path_factory) -> dict[str, Path]:
    """Each recipe trained a few steps on its stand-in, on first use (a test that reruns one shares its run)."""

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            run = tmp_path_factory.mktemp("recipe") / "first"
            args = ["finetune", "--recipe", name, "--output-dir", str(run), "--limit-train", "16", "--limit-eval", "8"]
            extra = standin_data["extra"] if plan(name).cfg.data.extra else []
            assert main(args + _sets(*TINY, *standin_data[plan(name).cfg.data.name], *extra)) == 0
            self[name] = run
            return run

    return Lazy()


@pytest.mark.parametrize("name", TRAINED)
def test_every_recipe_trains_a_few_steps(name: str, trained: dict, capsys):
    cfg = plan(name).cfg
    try:
        run = trained[name]
    except AssertionError:
        raise AssertionError(capsys.readouterr().err) from None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["history"] and all(math.isfinite(h["loss"]) for h in metrics["history"])
    config = json.loads((run / "config.json").read_text())
    assert config["robustness"]["method"]["name"] == cfg.method.name
    assert config["robustness"]["threat_model"]["eps"] == pytest.approx(cfg.threat.eps)
    attack = cfg.data.attack_size or 32
    assert config["preprocessing"]["attack_input_size"][1:] == [attack, attack]
    card = (run / "README.md").read_text()
    assert "library_name: timm" in card and cfg.method.name in card
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["stages"] == yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["stages"]


def test_a_runs_recipe_reruns_it_beside_the_run(trained: dict, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = trained["cifar10-resnet50-fgsm-rs"]  # the run test_every_recipe_trains_a_few_steps checks
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    capsys.readouterr()
    assert main(["finetune", "--recipe", str(run / "recipe.yaml")]) == 0
    assert "this new run goes to" in capsys.readouterr().out
    (rerun,) = [p for p in run.parent.iterdir() if p.name.startswith("first-rerun-")]
    assert (rerun / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    # the original is untouched (it would have refused to overwrite)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_stages_expand_and_validate():
    from robustify.config import ConfigError, build_config, expand_stages

    cfg = build_config("cifar10-resnet50-pgd10")
    (n1, s1), (n2, s2) = expand_stages(cfg)
    assert (n1, s1.method.name, s1.train.epochs, s1.schedule.name) == ("natural", "natural", 2, "cosine")
    assert (n2, s2.method.name, s2.method.steps, s2.train.epochs) == ("adversarial", "pgd", 10, 10)
    assert s1.schedule.lr == s2.schedule.lr and not s1.stages and s1.data.attack_size == 32
    assert [n for n, _ in expand_stages(build_config("quickstart"))] == ["main"]
    for stages, message in (
        ([{"name": "a", "model": {"name": "resnet18"}}], "'model' cannot change between stages"),
        ([{"name": "a", "data": {"name": "cifar100"}}], "'data.name' cannot change between stages"),
        ([{"name": "a"}, {"name": "a"}], "the name 'a' is used twice"),
        ([{"name": "a", "method": {"name": "fgsm"}}], r"stages\[0\] \(a\): method.name='fgsm' is not accepted"),
        (["natural"], "must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config("quickstart", [f"stages={json.dumps(stages)}"])


@pytest.mark.parametrize("args,message", [
    (["--data", "cifar100", "--set", "data.label_column=nope"], "data.label_column='nope' is not a column of "
                                                                "uoft-cs/cifar100; its columns: img, fine_label"),
    (["--data", "imagenet-1k", "--set", "data.eval_split=test"], "has no labels .all -1.; use 'validation'"),
    (["--model", "resnet50.a1_in1kk"], "timm has no pretrained tag 'a1_in1kk' for resnet50"),
    (["--limit-train", "0"], "--limit-train 0 is not accepted"),
])
def test_dry_run_checks(args: list[str], message: str, capsys):
    assert main(["finetune", "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustify: error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


@pytest.mark.parametrize("setting", ["train.mixed_precision=fp16", "model.freeze=stages:99"])
def test_dry_run_refuses_what_the_run_refuses(setting: str, tmp_path: Path, monkeypatch, capsys):
    """One code path (robustify.train.preflight): the dry run and the run refuse the same settings with the same
    line, and the run refuses before it writes anything."""
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--dry-run", "--set", setting]) == 2
    dry = capsys.readouterr().err.strip()
    assert main(["finetune", "--output-dir", str(tmp_path / "run"), "--set", setting]) == 2
    run = capsys.readouterr().err.strip()
    assert dry == run and len(run.splitlines()) == 1 and setting.split("=")[0] in run
    assert list(tmp_path.iterdir()) == []
