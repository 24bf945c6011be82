"""The robustbench converter checked against robustbench 1.1.1's own code (the ``originals`` test extra).

Each architecture is built by robustbench's model zoo (``model_zoo/imagenet.py``: the entry's own constructor,
normalizer included), given random weights and non-trivial BatchNorm statistics, and its state dict is saved as a
``.pt`` where ``robustbench.utils.load_model`` looks for it (``MODEL_DIR/imagenet/THREAT/NAME.pt``), so load_model
reads it without downloading. ``robustify import`` (the command) converts the same file into a timm folder; the
model robustbench's load_model returns and the timm folder (normalization from its pretrained_cfg) must give the same
logits on [0,1] inputs (fp32, 1e-4). One full-size model per architecture is built (shared by the test's cases);
inputs are 64x64 so the forward passes stay cheap.

Skipped, with the reason, where robustbench 1.1.1 is not installed (``make test`` installs it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from robustify.cli import main
from robustify.publish import converters
from robustify.publish.converters import robustbench as rbconv

try:
    from tests import originals
    from tests.hub_server import LocalHub
    from tests.zoo_runs import cli
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    import originals
    from hub_server import LocalHub
    from zoo_runs import cli

TOL = 1e-4
# one full-size model per architecture; each case saves it in one of the wrappers load_model accepts
CASES = [  # (threat model, entry, how the file wraps the state dict)
    ("Linf", "Salman2020Do_R18", "bare"),
    ("corruptions", "Hendrycks2020AugMix", "state_dict+module."),
    ("Linf", "Salman2020Do_50_2", "sequential"),  # the whole Sequential's state dict, normalizer buffers included
    ("Linf", "Chen2024Data_WRN_50_2", "model."),  # no normalizer in robustbench's model: mean 0, std 1
]


@pytest.fixture(scope="module")
def rb():
    return originals.robustbench()


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (the constructor's init) plus BatchNorm statistics and affine terms far from 0/1, so a
    dropped or misplaced buffer shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def built(rb) -> dict[str, nn.Module]:
    """entry name -> the model robustbench's zoo builds for it, randomized; entries of one architecture share the
    weights of the first one built (one full-size model per architecture)."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    out: dict[str, nn.Module] = {}
    by_arch: dict[str, nn.Module] = {}
    for threat, name, _ in CASES:
        model = model_dicts[BenchmarkDataset.imagenet][ThreatModel(threat)][name]["model"]()
        arch = rbconv.ENTRIES[("imagenet", threat, name)]["arch"]
        net = model.model if isinstance(model, nn.Sequential) else model
        if arch in by_arch:
            net.load_state_dict(by_arch[arch].state_dict())
        else:
            by_arch[arch] = _randomize(net, seed=len(by_arch))
        out[name] = model.eval()
    return out


def _save(model: nn.Module, how: str, path: Path) -> None:
    net = model.model if isinstance(model, nn.Sequential) else model
    state = net.state_dict()
    if how == "state_dict+module.":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}
    elif how == "model.":
        obj = {f"model.{k}": v for k, v in state.items()}
    elif how == "sequential":
        obj = model.state_dict()
        assert "normalize.mean" in obj
    else:
        obj = state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)


def _timm_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        return model((x - mean) / std)


@pytest.mark.parametrize(("threat", "name", "how"), CASES, ids=[c[1] for c in CASES])
def test_robustbench_file_imports_to_the_same_logits(rb, built, threat, name, how, tmp_path, capsys) -> None:
    from robustbench.utils import load_model

    path = tmp_path / "models" / "imagenet" / threat / f"{name}.pt"
    _save(built[name], how, path)
    original = load_model(name, model_dir=tmp_path / "models", dataset="imagenet", threat_model=threat).eval()
    out = tmp_path / "timm"
    # the command, format and architecture picked from the file's place (NAME.pt under imagenet/THREAT)
    assert main(["import", str(path), "--trust-pickle", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "robustbench converter" in printed
    row = rbconv.ENTRIES[("imagenet", threat, name)]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == row["arch"]
    assert tuple(cfg["pretrained_cfg"]["mean"]) == pytest.approx(row["mean"])
    assert tuple(cfg["pretrained_cfg"]["std"]) == pytest.approx(row["std"])
    assert cfg["import"]["converter_checked_against"] == "robustbench 1.1.1"
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = original(x)
    diff = float((ref - _timm_logits(out, x)).abs().max())
    print(f"robustbench {name} ({row['arch']}): max logit difference {diff:.3g}")
    assert diff <= TOL, diff
    assert ref.abs().max() > 1.0  # the weights are not degenerate: a wrong normalization would show


def test_table_matches_robustbench_zoo(rb, monkeypatch) -> None:
    """Every row of the converter's table is the entry robustbench 1.1.1 builds: the architecture (same tensor names
    and shapes as timm's), whether a normalizer wraps it and with which mean/std. Built on the meta device (no
    memory, no time); the normalizer's mean/std are recorded as robustbench's model code passes them."""
    import robustbench.model_zoo.imagenet as rb_imagenet
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    seen: list[tuple] = []
    real = rb_imagenet.normalize_model

    def recording(model, mean, std):
        seen.append((tuple(mean), tuple(std)))
        return real(model, mean, std)

    monkeypatch.setattr(rb_imagenet, "normalize_model", recording)
    for (dataset, threat, name), row in rbconv.ENTRIES.items():
        entry = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]
        assert bool(entry["gdrive_id"]) == row["file"], name
        assert entry.get("preprocessing") == row["preprocessing"], name
        if not row["file"]:  # Standard_R50: torchvision's pretrained weights, downloaded by torchvision
            continue
        seen.clear()
        with torch.device("meta"):
            model = entry["model"]()
            ref = timm.create_model(row["arch"], pretrained=False)
        net = model.model if row["wrapped"] else model
        assert isinstance(model, nn.Sequential) == row["wrapped"], name
        assert seen == ([(row["mean"], row["std"])] if row["wrapped"] else []), name
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize(("spec", "message"), [
    ("cifar10/Linf/Standard", "robustbench entry 'cifar10/Linf/Standard' is not one robustify converts"),
    ("imagenet/corruptions/AlexNet", "is not one robustify converts"),
])
def test_entries_timm_lacks_are_refused_in_one_line(spec, message, tmp_path, capsys) -> None:
    """A robustbench file of an entry whose architecture timm lacks (WideResNet-28-10, AlexNet): one line, exit 2,
    nothing written."""
    path = tmp_path / f"{spec}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    out = tmp_path / "out"
    assert main(["import", str(path), "--format", "robustbench", "--arch", "resnet50", "--trust-pickle",
                 "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Salman2020Do_R50" in err
    assert not out.exists()


def test_converter_is_marked_checked() -> None:
    assert converters.get("robustbench").checked_against == "robustbench 1.1.1"
    assert converters.get("madrylab").checked_against == "robustness 1.2.1"


# ------------------------------------------------------------------------------------------------ pull robustbench:NAME
def _offline(monkeypatch, tmp_path: Path) -> Path:
    """No way out: every HTTP(S) request goes to a closed local port (as on a machine without network, whatever
    this one has), and robustify's caches in tmp_path."""
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ROBUSTIFY_ROBUSTBENCH_DIR", str(tmp_path / "rb"))
    monkeypatch.setenv("ROBUSTIFY_ZOO_DIR", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


def test_pull_offline_fails_in_one_line(rb, tmp_path, monkeypatch, capsys) -> None:
    zoo_dir = _offline(monkeypatch, tmp_path)
    assert main(["pull", "robustbench:Salman2020Do_R50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "https://drive.google.com is unreachable" in err and "Salman2020Do_R50" in err
    assert not zoo_dir.exists() and not (tmp_path / "rb" / "imagenet" / "Linf" / "Salman2020Do_R50.pt").exists()


def test_pull_without_the_package_says_how_to_install_it(tmp_path, monkeypatch, capsys) -> None:
    _offline(monkeypatch, tmp_path)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # what importlib sees when it is not installed
    assert main(["pull", "robustbench:Salman2020Do_R50"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the robustbench package" in err
    assert "pip install -e '.[robustbench]'" in err and "robustbench==1.1.1" in err


def test_pull_converts_through_robustbench_and_cites_its_numbers(rb, built, tmp_path, monkeypatch, capsys) -> None:
    """The file robustbench's load_model reads (already in its model_dir: nothing to download) becomes the zoo
    entry's timm folder; its card cites RobustBench's numbers as imported, with authors, paper, license and the
    leaderboard entry; its logits are robustbench's."""
    zoo_dir = _offline(monkeypatch, tmp_path)
    _save(built["Salman2020Do_R18"], "bare", tmp_path / "rb" / "imagenet" / "Linf" / "Salman2020Do_R18.pt")
    assert main(["pull", "robustbench:Salman2020Do_R18"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    folder = zoo_dir / "robustbench-salman2020do-r18"
    assert "checked against robustbench 1.1.1" in out and "max difference" in out and str(folder) in out
    card = (folder / "README.md").read_text()
    for words in ("52.92%", "25.32%", "Hadi Salman", "Do Adversarially Robust ImageNet Models Transfer Better?",
                  "https://arxiv.org/abs/2007.08489", "License: mit", "not measured here",
                  "model_info/imagenet/Linf/Salman2020Do_R18.json", "robustbench:imagenet/Linf/Salman2020Do_R18",
                  "checked against robustbench 1.1.1"):
        assert words in card, words
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float((built["Salman2020Do_R18"](x) - _timm_logits(folder, x)).abs().max()) <= TOL
    assert main(["pull", "robustbench:Salman2020Do_R18"]) == 0  # there already: checked, not converted again
    assert "already downloaded" in capsys.readouterr().out

    # robustify push publishes the folder as it is: the card on the Hub cites RobustBench's numbers as imported
    dropped = ("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    with LocalHub(tmp_path / "hub_root") as hub:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost")
        (push,) = cli(env, ["push", str(folder), "--repo-id", "someone/rb-salman2020do-r18"])
        assert push[0] == 0, push[2]
        files = hub.repo_files("someone/rb-salman2020do-r18")
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    assert files["README.md"].decode() == card
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
