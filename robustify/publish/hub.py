"""Publish a run folder to the Hugging Face Hub and pull robust models back.

``push`` sends the run folder's weights, config, a freshly rendered model card, metrics, recipe and plots in **one
commit** through ``huggingface_hub.HfApi.create_commit``, so a failure at any point (an LFS upload, the commit
itself) leaves the remote repo exactly as it was. Unlike timm's ``push_to_hf_hub``, which never rewrites an
existing README, every push replaces the card, so the card always describes the weights beside it.
Before anything leaves the machine the folder must hold evaluation results and its weights must load with timm.
What is uploaded is rendered from the run's record (:mod:`robustify.publish.runrecord`: public names only) rather
than copied:
config.json's ``robustness`` block, metrics.json, the card, eval.json (no local model path or data path) and the
recipe (local paths reduced to file names). Then every byte about to leave is scanned once more for local paths,
the user and host name and the token (:func:`robustify.publish.public.local_traces`); anything found refuses the push.

``pull`` downloads through ``snapshot_download`` (Hub cache or ``--local-dir``), refuses pickle weights unless the
user trusts them explicitly, checks that the model loads with timm, and prints how to use it.

The token comes from wherever ``huggingface_hub`` finds it (``HF_TOKEN``, ``hf auth login``); it is passed to the
client and never printed or written (error messages are scrubbed of it, in case a server echoes it).

Must not: publish weights that are not the ones the record names, or print or store a token.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import runfolder, runlock
from ..errors import UserError
from ..runfolder import CARD, CHECKPOINTS, CONFIG, EPS_CURVE_PLOT, EVAL, HISTORY, HISTORY_PLOT, METRICS, RECIPE, WEIGHTS
from . import public, runrecord
from .runrecord import RunRecord, eps_text, json_bytes

PUSH_FILES = (WEIGHTS, CONFIG, METRICS, RECIPE, HISTORY, EVAL)  # then the plots (runfolder.PLOTS)
PICKLE_PATTERNS = ("*.bin", "*.pth", "*.pt", "*.pkl", "*.pickle", "*.ckpt", "*.pth.tar")
TOKEN_HELP = "set HF_TOKEN or run 'hf auth login'"
TRUST_FLAG = "--trust-pickle"


class HubTransferError(UserError):
    """The Hub or the network failed (not the user's input): reported in one line, exit status 1."""

    exit_code = 1


@dataclass
class FinishedRun:
    """What ``push`` (and ``zoo add``) publishes, read and checked once."""

    path: Path
    record: RunRecord
    config: dict[str, Any]  # config.json as timm's save_for_hf wrote it
    license: str | None
    recipe_yaml: str  # as published (public.recipe)
    files: list[str] = field(default_factory=list)  # names relative to path, in upload order
    recipe_text: str = ""  # recipe.yaml as the run wrote it (the card shows it through public.recipe)


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit: str
    url: str
    files: list[str]
    created: bool
    changed: bool  # False when the remote already held exactly these files (no commit was made)


# --------------------------------------------------------------------------------------------- run folders
def _has_results(metrics: Any) -> bool:
    after = metrics.get("after") if isinstance(metrics, dict) else None
    if not isinstance(after, dict) or not isinstance(after.get("clean_acc"), (int, float)):
        return False
    robust = [k for k in after if k == "pgd_acc" or (k.startswith("autoattack_") and k.endswith("_acc"))]
    return any(isinstance(after[k], (int, float)) for k in robust)  # autoattack_acc or e.g. autoattack_quick_acc


def read_run_folder(run_dir: str | Path) -> FinishedRun:
    """Check that ``run_dir`` is a finished, evaluated run folder and read its record."""
    folder = runfolder.RunFolder(run_dir)
    path, what = folder.path, folder.what
    if not path.is_dir():
        raise UserError(f"{what} does not exist; give the --output-dir of a finished 'robustify finetune'")
    missing = folder.missing(runfolder.FINISHED_FILES)
    if missing:
        hint = " (an interrupted run? finish it with 'robustify finetune --output-dir RUN_DIR --resume')" if (
            folder / CHECKPOINTS).is_dir() else ""
        raise UserError(f"{what} is not a finished run: missing {', '.join(missing)}{hint}")
    metrics = folder.read_json(METRICS)
    if not _has_results(metrics):
        raise UserError(f"{what} has no evaluation results ({METRICS} needs after.clean_acc and after.pgd_acc or "
                        "after.autoattack_acc); refusing to publish a model whose robustness was not measured")
    config = folder.read_json(CONFIG)
    record = RunRecord.from_files(config, metrics, path.name, what, need=("threat_model", "method", "dataset"))
    if not record.evaluations:
        raise UserError(f"{what} has no evaluation results; refusing to publish a model whose robustness was not "
                        "measured")
    license_ = (config.get("pretrained_cfg") or {}).get("license")
    files = [n for n in PUSH_FILES if folder.has(n)] + folder.plots()
    if record.eval_sha256 is None:  # an eval.json the record does not name describes another record: not published
        files = [n for n in files if n not in (EVAL, EPS_CURVE_PLOT)]
    elif not folder.has(EVAL) or runrecord.file_sha256(folder / EVAL) != record.eval_sha256:
        raise UserError(f"{what}: {EVAL} is missing or not the one 'robustify eval' wrote with this record, so "
                        f"its details cannot be published with the card; run 'robustify eval {path}' again")
    try:
        text = folder.read_text(RECIPE)
    except UserError as e:
        raise UserError(f"{e}; restore the run's own {RECIPE}") from None
    return FinishedRun(path, record, config, license_, public.recipe(text, record.training.name), files, text)


def _public_eval(run: FinishedRun) -> dict[str, Any] | None:
    """eval.json as published (no local model or data path), or None when it is not a JSON object."""
    try:
        report = runfolder.RunFolder(run.path).read_json(EVAL)
    except UserError:
        return None
    if not isinstance(report, dict):
        return None
    return runrecord.public_report(report, f"this model ({run.record.training.name})")


def publish_contents(run: FinishedRun, repo_id: str) -> dict[str, bytes | Path]:
    """Every file ``push`` uploads, by name: rendered from the record where it describes the run, else the file."""
    import dataclasses

    from .card import run_card

    evaluation = _public_eval(run) if EVAL in run.files else None
    # the published eval.json and recipe are rendered (no local paths): the pushed record names those, and pull
    # checks the pair of record files as pushed
    published = dataclasses.replace(
        run.record, eval_sha256=hashlib.sha256(json_bytes(evaluation)).hexdigest() if evaluation is not None else
        run.record.eval_sha256, recipe_sha256=hashlib.sha256(run.recipe_yaml.encode("utf-8")).hexdigest())
    rendered: dict[str, bytes] = published.files(run.config) | {RECIPE: run.recipe_yaml.encode("utf-8")}
    if evaluation is not None:
        rendered[EVAL] = json_bytes(evaluation)
    if HISTORY in run.files:  # from the sealed record, never the loose file (paths in notes redacted)
        rendered[HISTORY] = json_bytes(public.redact_all(run.record.history))
    rendered |= _rendered_plots(run, evaluation)
    card = run_card(run.record, run.config, run.recipe_text, run.files, evaluation=evaluation, repo_id=repo_id)
    contents: dict[str, bytes | Path] = {CARD: card.encode("utf-8")}
    for name in run.files:
        contents[name] = rendered.get(name, run.path / name)
    import contextlib

    from .robustbench import NotComparable, model_info

    with contextlib.suppress(NotComparable):  # RobustBench's model_info, only from an evaluation on its protocol
        contents["robustbench.json"] = json_bytes(model_info(run.record, link=f"https://huggingface.co/{repo_id}"))
    return contents


def _rendered_plots(run: FinishedRun, evaluation: dict[str, Any] | None) -> dict[str, bytes]:
    """history.png and eps_curve.png drawn again from the record and the verified eval.json: a plot is numbers
    too, and a loose PNG in the folder may belong to another run."""
    import tempfile

    from ..report import plot_eps_curve, plot_history

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="robustify-plots-") as tmp:
        if HISTORY_PLOT in run.files and run.record.history:
            plot_history(run.record.history, Path(tmp) / HISTORY_PLOT)
            out[HISTORY_PLOT] = (Path(tmp) / HISTORY_PLOT).read_bytes()
        if EPS_CURVE_PLOT in run.files and evaluation is not None and "eps_curve" in evaluation:
            plot_eps_curve(evaluation, Path(tmp) / EPS_CURVE_PLOT)
            out[EPS_CURVE_PLOT] = (Path(tmp) / EPS_CURVE_PLOT).read_bytes()
    return out


def _scanned_bytes(name: str, content: bytes | Path) -> bytes:
    """What to scan: the whole file, or a safetensors file's header (its metadata; the rest is tensors)."""
    if isinstance(content, bytes):
        return content
    if name.endswith(".safetensors"):
        with open(content, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            return f.read(min(size, 100_000_000))
    return content.read_bytes()


def check_nothing_local(contents: dict[str, bytes | Path], token: str | None, run_dir: Path) -> None:
    """Refuse (one line, nothing uploaded) when a file about to be pushed still identifies this machine."""
    from huggingface_hub import constants

    extra = [str(run_dir.resolve()), str(Path.cwd()), str(constants.HF_HUB_CACHE), str(constants.HF_HOME)]
    for name, content in contents.items():
        found = public.local_traces(_scanned_bytes(name, content), token, extra)
        if found:
            raise UserError(f"refusing to push: {name} would publish {', '.join(found)}; nothing was uploaded "
                            "(remove it from the run folder's file, or report this as a robustify bug)")


def verify_loads(folder: Path, what: str) -> dict[str, Any]:
    """Load ``folder`` exactly as a timm user would (``local-dir:``) and run one forward pass.

    Returns a short description (architecture, classes, input size) for the messages.
    """
    import timm
    import torch

    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        cfg = model.pretrained_cfg
        input_size = tuple(cfg.get("input_size", (3, 224, 224)))
        mean = torch.tensor(cfg.get("mean", (0.0,) * input_size[0])).view(1, -1, 1, 1)
        std = torch.tensor(cfg.get("std", (1.0,) * input_size[0])).view(1, -1, 1, 1)
        with torch.no_grad():
            logits = model((torch.rand(2, *input_size) - mean) / std)
    except Exception as e:  # noqa: BLE001 - any failure to load means the weights cannot be used
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: the weights do not load with timm ({type(e).__name__}: {msg})") from None
    if logits.ndim != 2 or logits.shape[0] != 2 or not torch.isfinite(logits).all():
        raise UserError(f"{what}: the model loads but its output is not finite class logits (shape "
                        f"{tuple(logits.shape)})")
    return {"architecture": cfg.get("architecture", type(model).__name__), "num_classes": model.num_classes,
            "input_size": input_size}


# ------------------------------------------------------------------------------------------------ helpers
def resolve_token(required: bool) -> str | None:
    """The token ``huggingface_hub`` finds (``HF_TOKEN``, then ``hf auth login``'s file); never shown."""
    from huggingface_hub import get_token

    token = get_token()
    if required and not token:
        raise UserError(f"no Hugging Face token found; {TOKEN_HELP} (a token with write access to the repo)")
    return token


def one_line(e: BaseException, token: str | None) -> str:
    """A one-line description of a client error, with the token (if a server echoed it) masked."""
    text = re.sub(r"\s*For more information check: \S+", "", " ".join(str(e).split())) or type(e).__name__
    if token:
        text = text.replace(token, "***")
    return text[:400]


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = repo_id.removeprefix("hf-hub:")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"repo id {repo_id!r} is not accepted; use ORG/NAME") from None
    if repo_id.count("/") != 1:
        raise UserError(f"repo id {repo_id!r} is not accepted; use ORG/NAME")
    return repo_id


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _head(api: Any, repo_id: str, revision: str) -> str | None:
    """The commit a branch points at, or None when the repo or branch does not exist (yet)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return api.repo_info(repo_id, revision=revision).sha
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None


def load_spec(repo_id: str, revision: str | None = None) -> str:
    """What ``timm.create_model`` takes for this repo (``hf-hub:ORG/NAME`` or ``hf-hub:ORG/NAME@REV``)."""
    return f"hf-hub:{repo_id}" + (f"@{revision}" if revision and revision != "main" else "")


def usage_text(repo_id: str, revision: str | None = None, local: Path | None = None) -> str:
    spec = load_spec(repo_id, revision)
    lines = [
        "Use it with plain timm (no robustify needed):",
        f'  import timm; model = timm.create_model("{spec}", pretrained=True).eval()',
        "  # inputs: pixels in [0,1], normalized with model.pretrained_cfg['mean'] / ['std'] before the model",
        "With normalization inside ([0,1] inputs, for attacks):",
        f'  import robustify; model = robustify.load("{spec}")',
    ]
    if local is not None:
        lines += [f'Offline, from the downloaded files: timm.create_model("local-dir:{local}", pretrained=True)']
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- push
def push(run_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         commit_message: str | None = None) -> PushResult:
    """Publish ``run_dir`` to ``repo_id`` (created when missing) in one commit on ``revision`` (default main),
    holding the run folder's lock meanwhile."""
    repo_id = check_repo_id(repo_id)
    locked = _lock_for_push(Path(run_dir).expanduser())
    try:
        return _push(run_dir, repo_id, private, revision, commit_message)
    finally:
        if locked:
            runlock.release(locked)


def _lock_for_push(path: Path) -> Path | None:
    """Hold the run folder's lock while push reads, renders and uploads it (never half-rewritten by an eval or a
    resumed run); a folder on a read-only file system cannot be changed by anyone, so it is pushed unlocked."""
    if not path.is_dir():
        return None  # read_run_folder says what is wrong
    try:
        runlock.hold(path)
    except runlock.RunLocked:
        raise
    except UserError:  # the lock file cannot be created: a read-only folder
        return None
    return path


def _push(run_dir: str | Path, repo_id: str, private: bool, revision: str | None,
          commit_message: str | None) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    run = read_run_folder(run_dir)
    verify_loads(run.path, f"run folder {str(run.path)!r}")
    runrecord.verify_weights(run.path)  # the card's numbers must belong to the weights that are uploaded
    token = resolve_token(required=True)
    contents = publish_contents(run, repo_id)
    check_nothing_local(contents, token, run.path)
    branch = revision or "main"
    api = HfApi(token=token)

    try:
        before = _head(api, repo_id, "main")
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head = _head(api, repo_id, branch)
    except Exception as e:  # noqa: BLE001 - report any client/network failure in one line
        raise _push_error(e, repo_id, token, "preparing the repo", changed=None) from None
    created = before is None

    operations = [CommitOperationAdd(name, content if isinstance(content, bytes) else str(content))
                  for name, content in contents.items()]
    t, best = run.record.training, run.record.strongest()
    message = commit_message or f"robustify push: {t.name}"
    description = (f"{t.method.get('name')} on {t.base_model} / {t.dataset}, {t.norm} eps={eps_text(t.eps)}: "
                   f"{best.label}: clean {best.clean_acc:.4f}, PGD {best.pgd_acc}, "
                   f"{best.aa_text or 'AutoAttack not run'} {best.autoattack_acc if best.aa_text else ''}".rstrip())
    try:
        info = api.create_commit(repo_id, operations, commit_message=message, commit_description=description,
                                 revision=branch, parent_commit=head)
    except Exception as e:  # noqa: BLE001 - the commit is atomic: either every file landed or none did
        now = _safe_head(api, repo_id, branch)
        raise _push_error(e, repo_id, token, "uploading", changed=None if now is False else now != head,
                          head=head, branch=branch, created=created) from None
    return PushResult(repo_id, branch, info.oid, info.commit_url, list(contents), created,
                      changed=info.oid != head)


def _safe_head(api: Any, repo_id: str, branch: str) -> str | None | bool:
    """Like :func:`_head`, but False when even that request fails (then the remote state is unknown)."""
    try:
        return _head(api, repo_id, branch)
    except Exception:  # noqa: BLE001
        return False


def _push_error(e: BaseException, repo_id: str, token: str | None, stage: str, changed: bool | None,
                head: str | None = None, branch: str = "main", created: bool = False) -> UserError:
    status = _status(e)
    reason = one_line(e, token)
    if status == 401:
        return UserError(f"push to {repo_id} refused: the token was not accepted ({TOKEN_HELP} with a valid token)")
    if status == 403:
        return UserError(f"push to {repo_id} refused: the token may not write to this repo or namespace ({reason})")
    if status == 412:
        return HubTransferError(f"push to {repo_id} failed: {branch} moved while uploading (someone else pushed); "
                                "the remote was left unchanged; run the same command again")
    if changed is None:
        state = "the remote state is unknown (check the repo's commit history)" if stage == "uploading" else (
            "no files were uploaded")
    elif changed:
        state = f"{branch} has moved since the push began (check the repo's commit history)"
    elif head is None:
        state = f"no commit was made (the repo {'was created but ' if created else ''}holds none of these files)"
    else:
        state = f"the remote was left unchanged: {branch} is still at commit {head[:8]}"
    return HubTransferError(f"push to {repo_id} failed while {stage} ({reason}); {state}; nothing local was changed, "
                            "run the same command again")


# -------------------------------------------------------------------------------------------------- pull
def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(base, p) for p in patterns)


def pull(repo_id: str, revision: str | None = None, local_dir: str | Path | None = None,
         trust_pickle: bool = False) -> tuple[Path, dict[str, Any], list[str]]:
    """Download ``repo_id`` and check that it loads; returns (folder, model description, skipped pickle files)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from ..models import hub_reachable

    repo_id = check_repo_id(repo_id)
    if local_dir is not None:
        local_dir = check_local_dir(local_dir)
    token = resolve_token(required=False)
    if not hub_reachable():  # seconds, not a minute of retry warnings: use the cache or say so in one line
        return _pull_offline(repo_id, revision, local_dir, trust_pickle)
    api = HfApi(token=token)
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except GatedRepoError:
        raise UserError(f"{repo_id} is gated: accept its terms on the Hub, then {TOKEN_HELP}") from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision {revision!r}; give a branch, tag or commit id") from None
    except RepositoryNotFoundError:
        hint = "" if token else f" (if it is private, {TOKEN_HELP})"
        raise UserError(f"model repo {repo_id} not found{hint}") from None
    except Exception as e:  # noqa: BLE001
        raise HubTransferError(f"pull {repo_id} failed while listing files ({one_line(e, token)})") from None

    safe = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if _matches(f, PICKLE_PATTERNS)]
    if CONFIG not in files:
        raise UserError(f"{repo_id} is not a timm model repo (no {CONFIG}); robustify pulls timm hub-format models")
    if not safe and pickles and not trust_pickle:
        raise UserError(f"{repo_id} has only pickle weights ({', '.join(pickles)}), which can run code when loaded; "
                        f"refusing to download them. Pass {TRUST_FLAG} if you trust this repo")
    if not safe and not pickles:
        raise UserError(f"{repo_id} has no weights (no .safetensors file)")
    ignore = None if trust_pickle else list(PICKLE_PATTERNS)
    skipped = [] if trust_pickle else pickles
    try:
        folder = snapshot_download(repo_id, revision=revision, local_dir=local_dir, ignore_patterns=ignore,
                                   token=token)
    except Exception as e:  # noqa: BLE001
        raise HubTransferError(f"pull {repo_id} failed while downloading ({one_line(e, token)}); files already "
                               "downloaded stay in the cache, run the same command again") from None
    folder_path = Path(folder)
    info = verify_loads(folder_path, f"{repo_id} (downloaded to {folder_path})")
    verify_pulled(folder_path, repo_id)
    return folder_path, info, skipped


def check_local_dir(local_dir: str | Path) -> Path:
    """Refuse, before anything is downloaded, a ``--local-dir`` that cannot receive the files: a file, a path under
    a file, a read-only folder (probed by creating and removing a temporary file)."""
    import os
    import tempfile

    p = Path(local_dir).expanduser()
    if not str(local_dir).strip():
        raise UserError("--local-dir is empty; give a folder to download into, e.g. --local-dir models/robust")
    if p.exists() and not p.is_dir():
        raise UserError(f"--local-dir {str(local_dir)!r} is a file, not a folder; give a folder to download into "
                        f"(it is created if missing), e.g. {str(p.with_suffix(''))!r}-model")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--local-dir {str(local_dir)!r} cannot be created: {str(parent)!r} is a file, not a folder; "
                        "give another folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".robustify-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"--local-dir {str(local_dir)!r} cannot be written ({e.strerror or type(e).__name__}); give a "
                        "writable folder, or leave --local-dir out to use the Hugging Face cache") from None
    return p


def verify_pulled(folder: Path, repo_id: str) -> None:
    """A robustify model's record names the sha256 of its weights: the downloaded weights must be those (a repo
    whose files were pushed separately or edited on the Hub may pair a card with other weights)."""
    from .runrecord import HASH_KEY, file_sha256, recorded_weights_hash

    what = f"{repo_id} (downloaded to {folder})"
    pulled = runfolder.RunFolder(folder, what)
    config = pulled.read_json(CONFIG)
    robustness = config.get("robustness") if isinstance(config, dict) else None
    if not isinstance(robustness, dict) or not (folder / runrecord.WEIGHTS_FILE).is_file():
        return  # not a robustify model: timm's files only, nothing recorded to compare with
    fix = "its card's numbers do not belong to these weights; do not cite them, and ask the repo's owner to push " \
          "the run again (robustify push)"
    metrics = pulled.read_json(METRICS) if pulled.has(METRICS) else None
    try:
        expected = recorded_weights_hash(config, metrics if metrics is not None else {HASH_KEY: robustness.get(
            HASH_KEY), "schema": robustness.get("schema")}, what)
    except UserError as e:
        raise UserError(f"{str(e).split('; restore')[0]}; {fix}") from None
    if expected is None:
        return
    if metrics is not None:
        runrecord.check_seal(config, metrics, what, fix)
    actual = file_sha256(folder / runrecord.WEIGHTS_FILE)
    if actual != expected:
        raise UserError(f"{what}: {runrecord.WEIGHTS_FILE} is not the model its record describes (sha256 "
                        f"{actual[:12]}, the record's results belong to {expected[:12]}); {fix}")


def _pull_offline(repo_id: str, revision: str | None, local_dir: str | Path | None,
                  trust_pickle: bool) -> tuple[Path, dict[str, Any], list[str]]:
    """The Hub is out of reach: a copy already in the cache (or ``--local-dir``) still loads; anything else is one
    line naming the endpoint, exit status 2."""
    import os

    from huggingface_hub import constants, snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the Hugging Face Hub ({endpoint}) is unreachable"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_dir=local_dir, local_files_only=True,
                                        ignore_patterns=None if trust_pickle else list(PICKLE_PATTERNS)))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not cached
        raise UserError(f"pull {repo_id}: {why} and the repo is not in the local cache; connect to the network (or "
                        "unset HF_HUB_OFFLINE) and run the same command again") from None
    info = verify_loads(folder, f"{repo_id} (cached copy in {folder})")
    verify_pulled(folder, repo_id)
    return folder, info, []


def card_summary(folder: Path) -> str | None:
    """One line of results from the pulled card's robustbench block, if it has one."""
    readme = folder / CARD
    if not readme.is_file():
        return None
    try:
        from huggingface_hub import ModelCard

        block = ModelCard.load(readme).data.to_dict().get("robustbench")
    except Exception:  # noqa: BLE001 - a card we cannot parse is not a reason to fail the pull
        return None
    if not isinstance(block, dict):
        return None
    robust = (f"AutoAttack {block['autoattack_acc']}%" if block.get("autoattack_acc") is not None
              else f"PGD {block.get('pgd_acc')}%")
    return (f"{block.get('threat_model')} eps={block.get('eps')}: clean {block.get('clean_acc')}%, {robust} "
            f"({block.get('n_examples')} examples of {block.get('dataset')})")
