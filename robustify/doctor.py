"""``robustify doctor``: what a user needs to know about this machine before a long run, in one report.

Versions (torch, CUDA, cuDNN, NCCL and the libraries robustify runs on), the GPUs and whether they do bf16, how many
processes ``accelerate launch`` would start, free disk where the run and the caches write, whether the Hub answers
(through the proxy huggingface_hub would use) and whether a gated data set is open to the current token. It only
reads: it never downloads a model or data, never writes a file, and never prints or stores the token (only where
it comes from). Exit status 0 when nothing blocks a run, 1 when something does (a ``fail`` row). An unreachable Hub
is a ``warn``, not a ``fail``: the quickstart and local models and data run offline, and a run that needs the Hub
says so itself; so is the default gated data set (ImageNet) when closed to the token, unless it was asked for by
name (``--gated-dataset``).

Must not: change anything or print a token: it only reads the environment and reports.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
MIN_FREE_GB = 10.0  # below this at the output folder a long run's checkpoints will not fit (fail below 1 GB)
GATED_DEFAULT = "ILSVRC/imagenet-1k"  # the gated set the ImageNet recipes read


@dataclass
class Row:
    """One line of the report: what was checked, what was found, and whether it blocks a run."""

    check: str
    status: str  # ok | warn | fail | info
    value: str
    detail: dict[str, Any]


def _versions() -> list[Row]:
    import importlib.metadata as md
    import platform

    import torch

    from .version import __version__

    libs = {}
    for name in ("timm", "accelerate", "datasets", "huggingface_hub", "safetensors"):
        try:
            libs[name] = md.version(name)
        except md.PackageNotFoundError:
            libs[name] = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    rows = [Row("robustify", INFO, __version__, {"python": platform.python_version()}),
            Row("torch", INFO, torch.__version__, {"cuda": torch.version.cuda, "cudnn": cudnn}),
            Row("libraries", INFO, ", ".join(f"{k} {v}" for k, v in libs.items() if v), libs)]
    rows.append(Row("CUDA / cuDNN", INFO if torch.version.cuda else INFO,
                    f"CUDA {torch.version.cuda or 'none (CPU build)'}, cuDNN {cudnn or 'none'}",
                    {"cuda": torch.version.cuda, "cudnn": cudnn}))
    return rows


def _gpus() -> list[Row]:
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return [Row("GPUs", WARN, "none visible: runs use the CPU (fp32; fine for the quickstart, slow at scale)",
                    {"count": 0}),
                Row("NCCL", INFO, "not used on CPU (gloo)", {"available": dist.is_available()
                                                              and dist.is_nccl_available()})]
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                     "capability": f"{p.major}.{p.minor}"})
    bf16 = torch.cuda.is_bf16_supported()
    names = ", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in gpus)
    rows = [Row("GPUs", OK, f"{len(gpus)}: {names}", {"count": len(gpus), "devices": gpus}),
            Row("bf16", OK if bf16 else WARN, "supported (train.mixed_precision auto = bf16)" if bf16 else
                "not supported (pre-Ampere): training runs in fp32", {"supported": bf16})]
    nccl = dist.is_available() and dist.is_nccl_available()
    version = ".".join(map(str, torch.cuda.nccl.version())) if nccl else None
    rows.append(Row("NCCL", OK if nccl else (WARN if len(gpus) > 1 else INFO),
                    f"{version}" if nccl else "not available: several GPUs would fall back to gloo",
                    {"available": nccl, "version": version}))
    return rows


def _launch() -> Row:
    """The processes ``accelerate launch -m robustify ...`` would start: its config file's, else one per GPU."""
    import torch

    world = os.environ.get("WORLD_SIZE")
    if world:
        return Row("processes", INFO, f"{world} (this is a process of a running launch)", {"world_size": int(world)})
    try:
        from accelerate.commands.config.config_args import default_config_file, load_config_from_file

        path = os.environ.get("ACCELERATE_CONFIG_FILE") or default_config_file
        if Path(path).is_file():
            cfg = load_config_from_file(path)
            n, machines = int(cfg.num_processes or 1), int(getattr(cfg, "num_machines", 1) or 1)
            return Row("processes", INFO, f"{n} in all over {machines} machine(s) (accelerate config {path})",
                       {"num_processes": n, "num_machines": machines, "config": str(path)})
    except Exception as e:  # noqa: BLE001 - a broken accelerate config is reported, not raised
        return Row("processes", WARN, f"accelerate config unreadable: {str(e).splitlines()[0][:120]}", {})
    n = max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1
    return Row("processes", INFO, f"{n} (no accelerate config: one per visible GPU; 'accelerate config' to change)",
               {"num_processes": n, "num_machines": 1, "config": None})


def _disk(output_dir: Path) -> list[Row]:
    from huggingface_hub import constants

    try:
        import datasets

        data_cache = str(datasets.config.HF_DATASETS_CACHE)
    except Exception:  # noqa: BLE001 - datasets missing or misconfigured: report the Hub cache only
        data_cache = None
    places = {"output folder": output_dir, "Hub cache": Path(constants.HF_HUB_CACHE)}
    if data_cache:
        places["datasets cache"] = Path(data_cache)
    rows = []
    for what, path in places.items():
        probe = path.expanduser()
        while not probe.exists() and probe != probe.parent:  # the nearest existing parent: where it will live
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free / 2**30
        except OSError as e:
            rows.append(Row(f"disk: {what}", FAIL, f"{path}: {e.strerror or e}", {"path": str(path)}))
            continue
        status = FAIL if free < 1 else WARN if free < MIN_FREE_GB else OK
        rows.append(Row(f"disk: {what}", status, f"{free:.1f} GB free at {path}",
                        {"path": str(path), "free_gb": round(free, 2)}))
    return rows


def _redact(url: str) -> str:
    """A proxy URL without its user name and password."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    netloc = f"***@{host}" if parts.username or parts.password else host
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def _proxy_for(endpoint: str) -> str | None:
    """The proxy huggingface_hub's HTTP client would use for ``endpoint`` (the standard variables, NO_PROXY)."""
    from urllib.request import getproxies, proxy_bypass_environment

    host = urlsplit(endpoint).hostname or ""
    proxies = getproxies()
    if proxy_bypass_environment(host, proxies):
        return None
    return proxies.get(urlsplit(endpoint).scheme) or proxies.get("all")


def _hub(gated: str, gated_required: bool = False) -> list[Row]:
    from huggingface_hub import constants, get_token

    from .models import hub_reachable

    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    proxy = _proxy_for(endpoint)
    via = f" through proxy {_redact(proxy)}" if proxy else ""
    token = get_token()
    source = ("HF_TOKEN" if os.environ.get("HF_TOKEN") else "token file" if token else None)
    rows = [Row("Hub token", OK if token else WARN, f"present ({source}; never shown)" if token else
                "none: public models and data only ('hf auth login' or HF_TOKEN for gated ones)",
                {"present": bool(token), "source": source})]
    if constants.HF_HUB_OFFLINE:
        rows.insert(0, Row("Hub", WARN, f"offline mode (HF_HUB_OFFLINE): only cached files load; {endpoint}",
                           {"endpoint": endpoint, "offline": True}))
        return rows
    reachable = hub_reachable(timeout=5.0)
    rows.insert(0, Row("Hub", OK if reachable else WARN, f"{endpoint} {'answers' if reachable else 'unreachable'}"
                       f"{via}" + ("" if reachable else " (the quickstart and local models and data run offline; "
                                   "pretrained weights and Hub data sets need it: set HTTPS_PROXY, or "
                                   "HF_HUB_OFFLINE=1 with a pre-filled cache)"),
                       {"endpoint": endpoint, "reachable": reachable, "proxy": _redact(proxy) if proxy else None}))
    if reachable and gated:
        row = _gated(gated, endpoint, token)
        if row.status == FAIL and not gated_required:  # only the ImageNet recipes need it: a warning by default
            row.status = WARN
        rows.append(row)
    return rows


def _gated(repo_id: str, endpoint: str, token: str | None) -> Row:
    """Can the current token read ``repo_id`` (a data set)? huggingface_hub's ``auth_check``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    check = f"data set {repo_id}"
    try:
        HfApi(endpoint=endpoint).auth_check(repo_id, repo_type="dataset", token=token or False)
    except GatedRepoError:
        return Row(check, FAIL, f"gated and not open to this token: accept its terms at {endpoint}/datasets/"
                                f"{repo_id} (logged in as the token's user)", {"accessible": False, "gated": True})
    except RepositoryNotFoundError:
        return Row(check, FAIL, "not found, or private and not open to this token", {"accessible": False})
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = "the token is invalid or expired" if status == 401 else f"HTTP {status}"
        return Row(check, FAIL, f"not accessible: {why}", {"accessible": False, "status": status})
    return Row(check, OK, "accessible with the current token" if token else "accessible without a token",
               {"accessible": True})


def diagnose(output_dir: str | os.PathLike = ".", gated: str = GATED_DEFAULT, gated_required: bool = False
             ) -> list[Row]:
    """Every row of the report, in the order it prints; ``gated_required``: the gated data set was named by the
    user, so a closed one blocks (a ``fail``) instead of warning."""
    return [*_versions(), *_gpus(), _launch(), *_disk(Path(output_dir)), *_hub(gated, gated_required)]


def exit_code(rows: list[Row]) -> int:
    return 1 if any(r.status == FAIL for r in rows) else 0


def render(rows: list[Row]) -> str:
    """A plain table, readable in a pipe and in a log file."""
    width = max(len(r.check) for r in rows)
    lines = [f"{r.check:<{width}}  {r.status:<4}  {r.value}" for r in rows]
    verdict = "something blocks a run (fail rows)" if exit_code(rows) else "nothing blocks a run"
    return "\n".join([*lines, f"robustify doctor: {verdict}"])


def as_json(rows: list[Row]) -> dict[str, Any]:
    return {"ok": exit_code(rows) == 0, "checks": [asdict(r) for r in rows]}
