"""What may leave the machine: public names for local models and data sets, and a last check for local traces.

A published card cannot be taken back, so a run folder never records a local path where it can be published. A
base model is recorded by its Hub id when it has one (an ``hf-hub:`` spec or timm's ``pretrained_cfg.hf_hub_id``),
else by its plain timm architecture name (a local folder, a local weights file); the bundled ``quickstart``
backbone keeps that name. A data set is recorded by its Hub id or robustify alias; a local one by a neutral name
with only the file or folder's own name: ``local npz data set (digits.npz)``, ``local imagefolder data set (pets)``.

:func:`local_traces` is the defensive check ``robustify push`` runs on every byte it is about to upload: absolute
paths, the home folder, the user name (as a path component), the host name and the token. It is a plain regex
scan written here because no library offers "find this machine's identity in a document".

Must not: let a local path, user or host name or token leave the machine.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# absolute paths as they appear on POSIX and Windows machines; the look-behind keeps URLs ("https://x/home/...")
# and relative paths ("runs/x") out
_POSIX_ROOTS = (r"(?<![\w:/.\-~])(?:/(?:home|Users|root|tmp|var|private|mnt|media|data|scratch|work|opt|srv|nfs|gpfs|"
                r"lustre|storage|net|Volumes)/[^\s\"'<>|,;:)\]}]+)|file://[^\s\"'<>]+")
_ABS_PATH = re.compile(_POSIX_ROOTS + r"|(?<![\w])[A-Za-z]:\\\\?[^\s\"'<>|,;)\]}]+|~/[^\s\"'<>|,;)\]}]+")
# in binary files (plots) only patterns long enough never to occur by chance in compressed bytes
_ABS_PATH_BINARY = re.compile(_POSIX_ROOTS)
LOCAL = "<local path>"


def redact(text: str) -> str:
    """``text`` with every absolute path replaced by ``<local path>`` (for free-form strings such as warnings)."""
    return _ABS_PATH.sub(LOCAL, text)


def redact_all(obj: Any) -> Any:
    """:func:`redact` on every string of a JSON-like object."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {k: redact_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_all(v) for v in obj]
    return obj


def _is_local(spec: str) -> bool:
    return spec.startswith(("local-dir:", "/", ".", "~", "file:")) or os.sep in spec or "\\" in spec \
        or bool(re.match(r"[A-Za-z]:", spec))


def model_name(spec: str, pretrained_cfg: Mapping[str, Any] | None = None, architecture: str | None = None,
               pretrained: bool = True, checkpoint: str | None = None) -> tuple[str, str | None]:
    """(public name, Hub id or None) of a base model spec.

    ``hf-hub:ORG/NAME@REV`` -> ``ORG/NAME``; a timm name -> itself, with the Hub id of its default weights; the
    ``quickstart`` alias -> itself; a local folder or weights file -> its Hub id when timm recorded one, else the
    architecture name. Without pretrained weights (a from-scratch run) only the architecture is meaningful.
    """
    from ..models import ALIASES

    cfg = dict(pretrained_cfg or {})
    arch = architecture or cfg.get("architecture") or spec.split(".", 1)[0]
    if not pretrained:
        return (arch if not _is_local(arch) else "unknown architecture"), None
    if checkpoint:
        return arch, None  # weights from a local file: only the architecture says something public
    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:"):].split("@", 1)[0]
        return repo, repo or None
    if spec in ALIASES:
        return spec, None
    if _is_local(spec):
        hub = cfg.get("hf_hub_id")
        return (hub or arch), hub or None
    try:
        import timm

        known = timm.models.get_pretrained_cfg(spec)
    except Exception:  # noqa: BLE001 - an unknown tag simply has no Hub id
        known = None
    hub = getattr(known, "hf_hub_id", None) or cfg.get("hf_hub_id")
    return spec, hub or None


def dataset_name(spec: str) -> tuple[str, str | None]:
    """(public name, Hub id or None) of a ``--data`` spec."""
    from ..data import ALIASES

    if spec in ALIASES:
        return spec, ALIASES[spec][0]
    if spec == "quickstart" or spec.startswith("local ") or spec == "local data set":
        return spec, None  # the bundled digits, or a name this function made already
    for prefix in ("npz", "imagefolder"):
        if spec.startswith(f"{prefix}:"):
            base = Path(spec[len(prefix) + 1:].rstrip("/\\")).name
            return f"local {prefix} data set ({base})" if base else f"local {prefix} data set", None
    if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*", spec):  # ORG/NAME: how get_dataset reads it too
        return spec, spec
    return "local data set", None


def recipe(recipe_yaml: str, name: str) -> str:
    """The recipe as published: ``output_dir`` becomes ``runs/NAME``, a local base model or weights file and a local
    data set keep only their own file/folder name (``local-dir:backbone``, ``npz:digits.npz``), and any other
    absolute path is redacted."""
    import yaml

    try:
        data = yaml.safe_load(recipe_yaml)
    except yaml.YAMLError:
        return redact(recipe_yaml)
    if not isinstance(data, dict):
        return redact(recipe_yaml)
    if "output_dir" in data:
        data["output_dir"] = f"runs/{name}"
    model = data.get("model")
    if isinstance(model, dict):
        spec = str(model.get("name", ""))
        if _is_local(spec):
            model["name"] = "local-dir:" + Path(spec.removeprefix("local-dir:").rstrip("/\\")).name
        if model.get("checkpoint"):
            model["checkpoint"] = Path(str(model["checkpoint"])).name
    section = data.get("data")
    if isinstance(section, dict):
        spec = str(section.get("name", ""))
        for prefix in ("npz:", "imagefolder:"):
            if spec.startswith(prefix):
                section["name"] = prefix + Path(spec[len(prefix):].rstrip("/\\")).name
    return yaml.safe_dump(redact_all(data), sort_keys=False)


# ------------------------------------------------------------------------------------------ the last check
def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name known: nothing to look for
        return None


def machine_needles(token: str | None = None, extra: Iterable[str] = (),
                    binary: bool = False) -> list[tuple[str, re.Pattern[str]]]:
    """(what, pattern) pairs that identify this machine or its owner (``binary``: only patterns too long to occur
    by chance in compressed bytes)."""
    needles: list[tuple[str, re.Pattern[str]]] = []
    if token:
        needles.append(("the Hugging Face token", re.compile(re.escape(token))))
    host = socket.gethostname()
    if host and len(host) >= 4 and host.lower() not in ("localhost", "ubuntu", "debian"):
        needles.append(("the host name", re.compile(rf"(?<![\w-]){re.escape(host)}(?![\w-])", re.IGNORECASE)))
    user = _user()
    if user and len(user) >= (4 if binary else 2):
        needles.append(("the user name", re.compile(rf"[/\\]{re.escape(user)}(?:[/\\]|\b)|\b{re.escape(user)}@")))
    for path in {str(Path.home()), *extra}:
        if path and len(path) >= 5 and path not in ("/root", "/home"):
            needles.append(("a local path", re.compile(re.escape(path))))
    needles.append(("a local path", _ABS_PATH_BINARY if binary else _ABS_PATH))
    return needles


def local_traces(data: bytes | str, token: str | None = None, extra: Iterable[str] = ()) -> list[str]:
    """What in ``data`` would identify this machine: a description per kind found (empty when clean). Bytes that
    are not UTF-8 (a PNG) are searched with the long patterns only; their text chunks are stored uncompressed."""
    binary = False
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text, binary = data.decode("latin-1"), True
    else:
        text = data
    found: list[str] = []
    for what, pattern in machine_needles(token, extra, binary):
        match = pattern.search(text)
        if match and what not in found:
            shown = "" if "token" in what else f" ({match.group(0)[:60]!r})"
            found.append(what + shown)
    return found
