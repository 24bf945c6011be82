"""``robustify import``: a third-party robust checkpoint -> a folder plain timm loads, with its provenance.

The folder is what ``timm.models.save_for_hf`` writes (``model.safetensors`` + ``config.json``, mean/std in
``pretrained_cfg``) plus a model card (``README.md``) that says where the weights came from (repo, file, commit,
sha256 of the file, license), the threat model they were trained for, and the published numbers *as reported by
their source, not measured here*. config.json carries the same facts in an ``import`` block.

What it checks before anything is written: the source exists (a local file, or ``hf-hub:ORG/NAME/FILE`` resolved to
a commit), a pickle is opened only after ``--trust-pickle`` and only through the restricted unpickler
(:func:`robustify.publish.converters.read_file`), the converted keys and shapes are exactly the timm architecture's,
and the written folder, loaded back through ``timm.create_model("local-dir:...")``, gives the same logits as the
converted model on random inputs. Everything is written into a temporary folder beside the target and renamed into
place at the end, so a failure leaves nothing behind. It must not evaluate robustness (``robustify eval`` does).

Must not: write a folder whose logits differ from the source layout, or keep a pickle.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from ..fileio import file_sha256
from ..runfolder import CARD, CONFIG, EVAL, WEIGHTS, RunFolder
from . import converters

HUB_SOURCE = re.compile(r"hf-hub:([A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)/(.+)")
LOGITS_TOL = 1e-4
ARCH_CFG_KEYS = ("architecture", "input_size", "min_input_size", "fixed_input_size", "interpolation", "crop_pct",
                 "crop_mode", "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "label_offset")


@dataclass
class Reported:
    """A published number: what it measures, its value in percent, who reported it and how it was measured."""

    metric: str  # clean_acc | autoattack_acc | pgd_acc
    value: float
    by: str  # e.g. "RobustBench (imagenet Linf leaderboard, entry Salman2020Do_R50)"
    protocol: str = ""


@dataclass
class Provenance:
    """Where the weights come from and what was published about them (written to config.json and the card)."""

    source: str  # hf-hub:ORG/NAME/FILE or the local file's name
    filename: str
    sha256: str
    converter: str
    repo_id: str | None = None
    revision: str | None = None  # the commit the file was downloaded at
    license: str | None = None
    norm: str | None = None  # Linf | L2: the threat model it was trained for
    eps: str | None = None
    dataset: str | None = None
    training: str | None = None  # how it was trained, in words (PGD AT, ensemble adversarial training, ...)
    reported: list[Reported] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    zoo_name: str | None = None
    # the original project's package and version the converter is checked against (its own code builds, saves and
    # loads the format in tests/test_originals_*.py); None: not checked against an original project
    converter_checked_against: str | None = None
    authors: str | None = None  # the weights' authors (the paper's), for the card
    paper: str | None = None  # "TITLE (VENUE), URL"
    leaderboard: str | None = None  # the leaderboard entry the reported numbers come from (a URL)

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportResult:
    folder: Path
    architecture: str
    num_classes: int
    input_size: tuple[int, ...]
    max_logit_diff: float
    provenance: Provenance


# ------------------------------------------------------------------------------------------------ sources
def parse_source(source: str) -> tuple[str | None, str]:
    """``hf-hub:ORG/NAME/FILE`` -> (repo id, file in repo); a local path -> (None, path)."""
    m = HUB_SOURCE.fullmatch(source)
    if m:
        return m.group(1), m.group(2)
    if source.startswith("hf-hub:"):
        raise UserError(f"source {source!r} is not accepted; use hf-hub:ORG/NAME/FILE (the file inside the repo) or "
                        "a local file")
    return None, source


def fetch(repo_id: str, filename: str, revision: str | None, trust_pickle: bool) -> tuple[Path, str]:
    """Download ``filename`` of ``repo_id`` pinned to the commit ``revision`` resolves to; (local path, commit)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from ..models import hub_reachable
    from .hub import HubTransferError, one_line, resolve_token

    if converters.is_pickle(Path(filename)) and not trust_pickle:  # refuse before downloading anything
        raise UserError(f"hf-hub:{repo_id}/{filename} is a pickle, which can run code when loaded; refusing to "
                        f"download it. Pass {converters.TRUST_FLAG} if you trust {repo_id} (it is then read with "
                        "torch.load(weights_only=True) only)")
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise UserError(f"hf-hub:{repo_id}/{filename}: the Hugging Face Hub ({endpoint}) is unreachable; connect and "
                        "run the same command again, or give a local file")
    token = resolve_token(required=False)
    api = HfApi(token=token)
    try:
        info = api.model_info(repo_id, revision=revision)
        files = api.list_repo_files(repo_id, revision=info.sha)
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated: accept its terms on the Hub, then set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision {revision!r}; give a branch, tag or commit id") from None
    except RepositoryNotFoundError:
        raise UserError(f"model repo {repo_id} not found (if it is private, set HF_TOKEN)") from None
    except Exception as e:  # noqa: BLE001
        raise HubTransferError(f"import from {repo_id} failed while listing files ({one_line(e, token)})") from None
    if filename not in files:
        close = [f for f in files if f.rsplit("/", 1)[-1].split(".")[0] == Path(filename).stem.split(".")[0]] or \
            [f for f in files if not f.startswith(".")][:6]
        raise UserError(f"model repo {repo_id} has no file {filename!r} at {info.sha[:8]}; it has: "
                        f"{', '.join(close) or '(no files)'}")
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=info.sha, token=token))
    except Exception as e:  # noqa: BLE001 - a cut connection, a size mismatch: nothing usable was kept
        raise HubTransferError(f"import from {repo_id} failed while downloading {filename} ({one_line(e, token)}); "
                               "run the same command again") from None
    return path, str(info.sha)


# ------------------------------------------------------------------------------------------------ the model
def _auto_format(obj: Any, filename: str = "") -> str:
    """madrylab when the file has MadryLab's layout (['model'] with the attacker's or the normalizer's keys beside
    module.model.*), robustbench when it is named as a robustbench entry's file (NAME.pt: the entry fixes the
    normalization, which the file lacks), else state-dict."""
    from .converters.robustbench import is_entry_file

    if is_entry_file(filename):
        return "robustbench"
    if isinstance(obj, Mapping):
        inner = obj.get("model", obj.get("state_dict"))
        if isinstance(inner, Mapping) and any(str(k).removeprefix("module.").startswith(("normalizer.", "attacker."))
                                              for k in inner):
            return "madrylab"
    return "state-dict"


def build_model(arch: str, state: Mapping[str, Any], what: str):
    """The timm model ``arch`` with ``state`` loaded, its head sized from the file; a mismatch is one line naming
    the keys (another architecture, a missing key)."""
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:10]}*")[:5]
        raise UserError(f"--arch {arch!r} is not a timm architecture" + (f"; similar: {', '.join(close)}" if close
                                                                          else ""))
    import torch

    # built on the meta device: random initialization of a large network costs seconds (WRN-50-2: ~3 s) and every
    # tensor is replaced by the file's anyway; load_state_dict(assign=True) below puts the file's tensors in place
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
        head = model.pretrained_cfg.get("classifier")
        head_w = state.get(f"{head}.weight") if isinstance(head, str) else None
        if head_w is not None and head_w.ndim == 2 and head_w.shape[0] != model.num_classes:
            model.reset_classifier(int(head_w.shape[0]))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k} {shapes[k]} vs {expected[k]}" for k in sorted(set(shapes) & set(expected))
             if shapes[k] != expected[k]]
    if wrong or (missing and unexpected and len(missing) + len(unexpected) > 2):
        items = wrong or unexpected
        raise UserError(f"{what} does not fit timm {arch}: {len(wrong) or len(unexpected)} tensor(s) "
                        f"{'differ in shape (file vs model)' if wrong else 'not in the model'}: {'; '.join(items[:3])}"
                        f"{' ...' if len(items) > 3 else ''}; is it another architecture? give the right --arch")
    if missing:
        raise UserError(f"{what} is missing key(s) {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                        f"that timm {arch} needs ({len(missing)} in all)")
    if unexpected:
        raise UserError(f"{what} has key(s) timm {arch} does not have: {', '.join(unexpected[:3])}"
                        f"{' ...' if len(unexpected) > 3 else ''}; strip a prefix (--strip-prefix) or give the right "
                        "--arch")
    # fp32 as a model built on the CPU would hold them (a half-precision file's tensors are cast, as load_state_dict
    # into a CPU model casts them), each its own contiguous tensor (assign keeps the file's storage)
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in
                           state.items()}, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a non-persistent buffer (not in any file)
        num_classes = model.num_classes
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        model.load_state_dict(dict(state))
    return model.eval()


def _random_inputs(cfg: Mapping[str, Any], n: int = 2):
    import torch

    c, h, w = tuple(cfg.get("input_size", (3, 224, 224)))
    if not cfg.get("fixed_input_size"):  # the same check at a smaller size: seconds, not a minute, on a laptop CPU
        h, w = min(h, 96), min(w, 96)
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor(cfg.get("mean", (0.0,) * c)).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (1.0,) * c)).view(1, -1, 1, 1)
    return (torch.rand(n, c, h, w, generator=g) - mean) / std


def max_logit_diff(a, b, cfg: Mapping[str, Any]) -> float:
    """Largest absolute difference of two models' logits on the same random (normalized) inputs."""
    import torch

    x = _random_inputs(cfg)
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


# ------------------------------------------------------------------------------------------------ import
def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--output-dir {str(out_dir)!r} already exists and is not empty; give a new folder")


def import_checkpoint(source: str, out_dir: str | Path, arch: str | None = None, fmt: str = "auto",
                      trust_pickle: bool = False, revision: str | None = None,
                      options: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> ImportResult:
    """Convert ``source`` into ``out_dir`` (see the module docstring). ``options`` go to the converter (``key``,
    ``strip_prefix``, ``mean``, ``std``); ``meta`` fills the provenance (license, norm, eps, dataset, training,
    reported, zoo_name)."""
    import timm

    from .card_import import render_import_card

    out = Path(out_dir).expanduser()
    _check_target(out)
    repo_id, filename = parse_source(source)
    if repo_id is None:
        path = Path(filename).expanduser()
        if not path.is_file():
            raise UserError(f"source {source!r} does not exist; give a checkpoint file or hf-hub:ORG/NAME/FILE")
        commit = None
        what = f"checkpoint {path.name!r}"
    else:
        what = f"hf-hub:{repo_id}/{filename}"
        if fmt != "auto":
            converters.get(fmt)  # a typo in --format before any download
        path, commit = fetch(repo_id, filename, revision, trust_pickle)
    safe = tuple(g for name in converters.names() for g in converters.get(name).safe_globals) if fmt == "auto" \
        else converters.get(fmt).safe_globals
    obj = converters.read_file(path, what, trust_pickle, safe)
    conv = converters.get(_auto_format(obj, filename) if fmt == "auto" else fmt)
    if arch is None:
        arch = conv.guess_arch(filename) if conv.guess_arch is not None else None
        if arch is None:
            raise UserError(f"{what}: give --arch TIMM_ARCH (the timm architecture the weights are for)")
    arch = conv.arch_map.get(arch, arch)
    converted = conv.convert(obj, arch, dict(options or {}, what=what, filename=filename))
    model = build_model(arch, converted.state_dict, what)

    # the architecture's facts only: timm's default cfg also describes timm's own pretrained weights (license,
    # paper, test-time size), which these weights are not
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k in ARCH_CFG_KEYS}
    if converted.mean is not None:
        cfg["mean"], cfg["std"] = converted.mean, converted.std
    cfg.update(converted.cfg)
    meta = dict(meta or {})
    if meta.get("license"):
        cfg["license"] = meta["license"]
    model.pretrained_cfg = cfg

    prov = Provenance(
        source=meta.get("source") or (f"hf-hub:{repo_id}/{filename}" if repo_id else path.name),
        filename=Path(filename).name,
        sha256=file_sha256(path), converter=conv.name, repo_id=repo_id, revision=commit,
        license=meta.get("license"), norm=meta.get("norm"), eps=meta.get("eps"), dataset=meta.get("dataset"),
        training=meta.get("training"), reported=[r if isinstance(r, Reported) else Reported(**r)
                                                 for r in meta.get("reported", [])],
        dropped=converted.dropped, notes=converted.notes, zoo_name=meta.get("zoo_name"),
        converter_checked_against=conv.checked_against, authors=meta.get("authors"), paper=meta.get("paper"),
        leaderboard=meta.get("leaderboard"))

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.import-"))
    try:
        timm.models.save_for_hf(model, str(tmp), model_config={"import": prov.record()}, safe_serialization=True)
        loaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        diff = max_logit_diff(model, loaded, loaded.pretrained_cfg)
        if not diff <= LOGITS_TOL:
            raise UserError(f"{what}: the written folder does not reproduce the converted model (max logit "
                            f"difference {diff:.3g}); nothing was written")
        (tmp / CARD).write_text(str(render_import_card(prov, arch, model.num_classes, cfg)), encoding="utf-8")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportResult(out, arch, model.num_classes, tuple(cfg.get("input_size", (3, 224, 224))), diff, prov)


def read_provenance(folder: Path) -> dict[str, Any] | None:
    """config.json's ``import`` block of an imported folder (None for any other folder)."""
    try:
        block = RunFolder(folder).read_json(CONFIG).get("import")
    except (UserError, AttributeError):
        return None
    return block if isinstance(block, dict) else None


def refresh_card(folder: Path) -> Path:
    """Re-render an imported folder's card from its config.json, with ``eval.json`` (``robustify eval FOLDER
    --output FOLDER/eval.json``) shown beside the published numbers."""
    from ..fileio import atomic_write_text
    from .card_import import render_import_card

    folder = Path(folder).expanduser()
    block = read_provenance(folder)
    if block is None:
        raise UserError(f"--refresh-card {str(folder)!r}: not a folder written by 'robustify import' (config.json "
                        "has no 'import' block)")
    cfg = RunFolder(folder).read_json(CONFIG)
    known = {f for f in Provenance.__dataclass_fields__}
    prov = Provenance(**{k: v for k, v in block.items() if k in known})
    prov.reported = [Reported(**r) for r in block.get("reported", [])]
    measured = None
    if (folder / EVAL).is_file():  # the one reader: a file that cannot be read is one line naming it
        measured = RunFolder(folder).read_json(EVAL)
    card = render_import_card(prov, cfg.get("architecture", "?"), int(cfg.get("num_classes", 0)),
                              cfg.get("pretrained_cfg", {}), measured)
    atomic_write_text(folder / CARD, str(card))
    return folder / CARD


# ------------------------------------------------------------------------------------------------ robustbench:NAME
ROBUSTBENCH = "robustbench:"
GDRIVE = "https://drive.google.com"  # where robustbench 1.1.1's load_model downloads the model-zoo files (gdown)
TORCHVISION = "https://download.pytorch.org"  # Standard_R50: torchvision's own pretrained weights
INSTALL_ROBUSTBENCH = ("pip install -e '.[robustbench]' in robustify's clone, then pip install --no-deps "
                       "robustbench==1.1.1 (it pins timm==1.0.9)")
LEADERBOARD = "https://github.com/RobustBench/robustbench/blob/master/model_info/{}/{}/{}.json"


def parse_robustbench(spec: str) -> tuple[str | None, str | None, str]:
    """``robustbench:NAME`` or ``robustbench:DATASET/THREAT/NAME`` -> (dataset, threat, name)."""
    parts = spec.removeprefix(ROBUSTBENCH).split("/")
    if len(parts) == 1 and parts[0]:
        return None, None, parts[0]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise UserError(f"{spec!r} is not accepted; use robustbench:NAME (e.g. robustbench:Salman2020Do_R50) or "
                    "robustbench:DATASET/THREAT/NAME (e.g. robustbench:imagenet/corruptions/Hendrycks2020AugMix)")


def robustbench_dir() -> Path:
    """The ``model_dir`` handed to robustbench's load_model (``ROBUSTIFY_ROBUSTBENCH_DIR``, else
    ``~/.cache/robustify/robustbench``): a file already there (``DATASET/THREAT/NAME.pt``) is read, not downloaded."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"))
    return Path(os.environ.get("ROBUSTIFY_ROBUSTBENCH_DIR") or cache / "robustify" / "robustbench").expanduser()


def _robustbench_loader(spec: str):
    """robustbench's ``utils.load_model`` and the installed version, or one line saying how to install it.

    robustbench imports ``autoattack`` (its evaluation code, which pulling never runs); the registry ships that code
    as ``pyautoattack``, so when only that is installed it is registered under the name robustbench imports."""
    import importlib
    import importlib.util
    import sys
    import warnings
    from importlib.metadata import version

    if importlib.util.find_spec("robustbench") is None:
        raise UserError(f"robustify pull {spec} needs the robustbench package, which is not installed; install it "
                        f"with: {INSTALL_ROBUSTBENCH}")
    if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
        for sub in ("", ".state", ".autoattack"):
            sys.modules.setdefault("autoattack" + sub, importlib.import_module("pyautoattack" + sub))
    try:
        with warnings.catch_warnings():  # robustbench imports timm's deprecated module paths
            warnings.simplefilter("ignore")
            from robustbench.utils import load_model
    except ImportError as e:
        raise UserError(f"robustify pull {spec}: robustbench is installed but cannot be imported ({first_line(e)}); "
                        f"install what it needs with: {INSTALL_ROBUSTBENCH}") from None
    return load_model, version("robustbench")


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Does ``url`` answer (any HTTP status) through the proxies requests honours, as gdown's download would?"""
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return True


def robustbench_logit_diff(original: Any, folder: Path, input_size: tuple[int, ...], n: int = 2) -> float:
    """Largest logit difference between robustbench's model ([0,1] inputs) and the timm folder (normalized with its
    pretrained_cfg) on ``n`` random images at the entry's input size."""
    import timm
    import torch

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    x = torch.rand(n, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((original(x) - model((x - mean) / std)).abs().max())


def pull_robustbench(spec: str, out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> ImportResult:
    """``robustify pull robustbench:NAME``: RobustBench's own ``load_model`` downloads (or reads, when the file is
    already in :func:`robustbench_dir`) and builds the entry's model; the same file is converted with the robustbench
    converter into ``out_dir``, and the timm folder must give robustbench's model's logits on a few inputs, else
    nothing is kept. Entries robustify does not convert, a missing package and an unreachable download host are each
    one line, before anything is downloaded or written. ``meta`` (numbers, authors, paper, license) fills the card;
    the numbers stay RobustBench's, labelled as imported, not measured."""
    from .converters import robustbench as rbconv

    dataset, threat, name = parse_robustbench(spec)
    (dataset, threat, name), row = rbconv.find(name, dataset, threat)
    out = Path(out_dir).expanduser()
    _check_target(out)
    load_model, version = _robustbench_loader(spec)
    model_dir = robustbench_dir()
    path = model_dir / dataset / threat / f"{name}.pt"
    host = GDRIVE if row["file"] else TORCHVISION
    had_file = path.is_file()
    if not had_file and not _reachable(host):
        raise UserError(f"robustify pull {spec}: {host} is unreachable (robustbench's load_model downloads "
                        f"{name} from there); connect and run the same command again, or put the file at {path}")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat).eval()
    except Exception as e:  # noqa: BLE001 - gdown, torch.load, load_state_dict: one line, and no half file kept
        if not had_file and path.is_file():
            path.unlink()
        raise UserError(f"robustify pull {spec}: robustbench's load_model failed ({first_line(e)}); nothing was "
                        "written") from None
    source = f"{ROBUSTBENCH}{dataset}/{threat}/{name} (robustbench {version} load_model"
    tmp_src = None
    if row["file"]:
        source += f", the file it downloads to {dataset}/{threat}/{name}.pt)"
    else:  # torchvision's weights, which load_model builds without a file: convert the state dict it holds
        import torch

        tmp_src = Path(tempfile.mkdtemp(prefix="robustify-robustbench-"))
        path = tmp_src / dataset / threat / f"{name}.pt"
        path.parent.mkdir(parents=True)
        torch.save(original.state_dict(), path)
        source += ", torchvision's pretrained weights it loads)"
    info = dict(meta or {})
    info.setdefault("leaderboard", LEADERBOARD.format(dataset, threat, name))
    info["source"] = source
    try:
        res = import_checkpoint(str(path), out, arch=row["arch"], fmt="robustbench", trust_pickle=True,
                                options={"entry": name, "dataset": dataset, "threat": threat}, meta=info)
    finally:
        if tmp_src is not None:
            shutil.rmtree(tmp_src, ignore_errors=True)
    size = tuple(res.input_size)
    diff = robustbench_logit_diff(original, out, size)
    if not diff <= LOGITS_TOL:
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"robustify pull {spec}: the timm folder's logits differ from robustbench's model by "
                        f"{diff:.3g} (more than {LOGITS_TOL}); nothing was kept")
    res.max_logit_diff = max(res.max_logit_diff, diff)
    return res


# ------------------------------------------------------------------------------------------------ push
IMPORTED_FILES = (WEIGHTS, CONFIG, CARD)


def push_imported(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                  commit_message: str | None = None) -> tuple[str, str, list[str]]:
    """``robustify push FOLDER`` of a folder ``robustify import`` / ``pull robustbench:NAME`` wrote: its weights,
    config.json and card (which cites the source's numbers as imported, not measured) in one commit, after checking
    that the folder loads with timm. Returns (commit id, commit URL, files)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from .hub import HubTransferError, check_repo_id, one_line, resolve_token, verify_loads

    path = Path(folder).expanduser()
    if read_provenance(path) is None:
        raise UserError(f"{str(folder)!r} is not a folder written by 'robustify import' (config.json has no 'import' "
                        "block)")
    missing = [n for n in IMPORTED_FILES if not (path / n).is_file()]
    if missing:
        raise UserError(f"imported folder {str(folder)!r} is missing {', '.join(missing)}; import it again")
    repo_id = check_repo_id(repo_id)
    verify_loads(path, f"imported folder {str(folder)!r}")
    token = resolve_token(required=True)
    api = HfApi(token=token)
    block = read_provenance(path) or {}
    message = commit_message or f"robustify push: {block.get('zoo_name') or path.name} (imported from " \
                                f"{block.get('source')}, converter {block.get('converter')})"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, [CommitOperationAdd(n, str(path / n)) for n in IMPORTED_FILES],
                                 commit_message=message, revision=revision or "main")
    except Exception as e:  # noqa: BLE001 - one commit: every file landed or none did
        raise HubTransferError(f"push of {str(folder)!r} to {repo_id} failed ({one_line(e, token)}); the repo was "
                               "left as it was; run the same command again") from None
    return info.oid, info.commit_url, list(IMPORTED_FILES)
