"""``robustify zoo add RUN --repo-id ORG/NAME``: the zoo entry of a pushed run, written only if what is published
matches the run.

The entry is rendered from the run's record (:func:`robustify.publish.zoo.entry_from_record`), never typed by hand.
Before writing it, each check in :data:`CHECKS` compares the run folder with what the Hub repo holds at its current
commit (the card's ``robustbench`` block, config.json's ``robustness`` block, the weights file being there); a
mismatch (a stale push, another run pushed to the same repo) is one line and nothing is written. A check is a
function ``(run, published) -> None | str`` (the mismatch), so further checks (e.g. a sha256 of the weights once
the run record carries one) are one more entry in the list. This module must not push or change the repo.

Must not: write an entry whose published card, config or weights differ from the run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runfolder import CARD, CONFIG, WEIGHTS
from .hub import FinishedRun, read_run_folder


@dataclass
class Published:
    """What the Hub repo holds at ``commit``."""

    repo_id: str
    commit: str
    files: list[str]
    card_block: dict[str, Any] | None  # the card's front-matter robustbench block
    config: dict[str, Any] | None
    paths: dict[str, Path] = field(default_factory=dict)  # downloaded files, by name
    weights_sha256: str | None = None  # of the published model.safetensors (the Hub's LFS record of it)


def fetch_published(repo_id: str, revision: str | None = None) -> Published:
    from huggingface_hub import HfApi, ModelCard, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from .hub import HubTransferError, check_repo_id, one_line, resolve_token

    repo_id = check_repo_id(repo_id)
    token = resolve_token(required=False)
    api = HfApi(token=token)
    try:
        info = api.model_info(repo_id, revision=revision)
        files = api.list_repo_files(repo_id, revision=info.sha)
    except RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise UserError(f"model repo {repo_id} not found: push the run first ('robustify push RUN --repo-id "
                        f"{repo_id}')") from None
    except Exception as e:  # noqa: BLE001
        raise HubTransferError(f"zoo add: reading {repo_id} failed ({one_line(e, token)})") from None
    paths: dict[str, Path] = {}
    block = config = weights_sha256 = None
    try:
        for name in (CARD, CONFIG):
            if name in files:
                paths[name] = Path(hf_hub_download(repo_id, name, revision=info.sha, token=token))
        if WEIGHTS in files:  # its sha256 from the Hub's LFS pointer: the weights are not downloaded
            entry = api.get_paths_info(repo_id, [WEIGHTS], revision=info.sha)[0]
            lfs = getattr(entry, "lfs", None)
            if lfs is not None:
                weights_sha256 = lfs.sha256
            else:  # stored without LFS (a tiny model): hash the file itself
                from ..fileio import file_sha256

                weights_sha256 = file_sha256(Path(hf_hub_download(repo_id, WEIGHTS, revision=info.sha,
                                                                  token=token)))
    except Exception as e:  # noqa: BLE001
        raise HubTransferError(f"zoo add: downloading from {repo_id} failed ({one_line(e, token)})") from None
    if CARD in paths:
        try:
            block = ModelCard.load(paths[CARD]).data.to_dict().get("robustbench")
        except Exception:  # noqa: BLE001 - an unparsable card is reported by the check below
            block = None
    if CONFIG in paths:
        try:
            config = json.loads(paths[CONFIG].read_text(encoding="utf-8"))
        except ValueError:
            config = None
    return Published(repo_id, str(info.sha), files, block if isinstance(block, dict) else None, config, paths,
                     weights_sha256)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_weights_present(run: FinishedRun, pub: Published) -> str | None:
    if WEIGHTS not in pub.files:
        return "the repo has no model.safetensors"
    return None


def check_weights_hash(run: FinishedRun, pub: Published) -> str | None:
    """The published weights are the run's own: the sha256 its record names (verified against the local file when
    the run folder was read)."""
    want = run.record.training.weights_sha256
    if want is None:
        return "the run's record names no weights hash; re-export it with robustify finetune --resume"
    if pub.weights_sha256 != want:
        got = (pub.weights_sha256 or "unknown")[:12]
        return f"the published model.safetensors has sha256 {got}..., the run's record names {want[:12]}..."
    return None


def check_card(run: FinishedRun, pub: Published) -> str | None:
    from .card import robustbench_block

    if pub.card_block is None:
        return "the published card (README.md) has no robustbench block; push the run with 'robustify push'"
    mine = robustbench_block(run.record)
    for key, value in mine.items():
        if not _same(value, pub.card_block.get(key)):
            return f"the published card says {key}={pub.card_block.get(key)!r}, the run says {value!r}"
    return None


def check_config(run: FinishedRun, pub: Published) -> str | None:
    robustness = (pub.config or {}).get("robustness")
    if not isinstance(robustness, dict):
        return "the published config.json has no robustness block"
    mine = run.record.robustness()
    for key in ("threat_model", "method", "dataset", "base_model", "results"):
        if key in mine and not _same(mine[key], robustness.get(key)):
            return f"the published config.json's robustness.{key} differs from the run's"
    return None


# Each check compares the run with the published repo; append one to check more (it returns the mismatch or None).
CHECKS: list[Callable[[FinishedRun, Published], str | None]] = [check_weights_present, check_card, check_config,
                                                              check_weights_hash]


def default_name(repo_id: str) -> str:
    return re.sub(r"[^a-z0-9_.\-]+", "-", repo_id.split("/", 1)[-1].lower()).strip("-.") or "model"


def add_entry(run_dir: str | Path, repo_id: str, name: str | None = None, recipe: str | None = None,
              revision: str | None = None, zoo_dir: str | Path | None = None,
              force: bool = False) -> tuple[Path, list[str]]:
    """Check the published repo against the run, then write ``zoo/NAME.yaml``; returns (path, notes)."""
    import yaml

    from ..fileio import atomic_write_text
    from .zoo import NAME, ZOO_DIRS, entry_from_record

    run = read_run_folder(run_dir)
    name = name or default_name(repo_id)
    if not NAME.fullmatch(name):
        raise UserError(f"--name {name!r} is not accepted; use lower-case letters, digits, '-', '_' and '.'")
    folder = Path(zoo_dir).expanduser() if zoo_dir else ZOO_DIRS[0]
    path = folder / f"{name}.yaml"
    if path.exists() and not force:
        raise UserError(f"zoo entry {path} already exists; pass --force to replace it, or choose another --name")
    pub = fetch_published(repo_id, revision)
    for check in CHECKS:
        problem = check(run, pub)
        if problem:
            raise UserError(f"zoo add: {pub.repo_id} at {pub.commit[:8]} does not match run {run.path.name!r}: "
                            f"{problem}; push the run again ('robustify push {run.path} --repo-id {pub.repo_id}'); "
                            "nothing was written")
    recipe = recipe or f"https://huggingface.co/{pub.repo_id}/blob/{pub.commit}/recipe.yaml"
    extra: dict[str, Any] = {"license": run.license} if run.license else {}
    data = entry_from_record(run.record, name, pub.repo_id, recipe, **extra)
    header = (f"# Written by 'robustify zoo add' from run {run.record.training.name} and checked against "
              f"{pub.repo_id} at commit {pub.commit}.\n")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path, [f"checked {pub.repo_id} at {pub.commit[:8]}: " + ", ".join(c.__name__.removeprefix("check_")
                                                                           for c in CHECKS)]
