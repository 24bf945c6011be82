"""A local, offline, Hugging Face Hub-compatible HTTP server for the test suite (stdlib only).

It speaks the subset of the Hub protocol that the installed ``huggingface_hub`` client uses with Xet disabled
(``HF_HUB_DISABLE_XET=1``): repo creation/info, tree listing (paginated), refs, branches, commits, the preupload
endpoint, the git-LFS batch API with presigned-style upload URLs, the NDJSON commit endpoint and ``/resolve``
downloads, honouring ``Range`` requests (as ``HfFileSystem`` and streamed ``datasets`` use them) and counting the bytes
served per file (``LocalHub.bytes_served``; ``GET /_test/bytes-served`` for a client in another process). Point a
client at it with ``HF_ENDPOINT=<LocalHub.start()>`` (read by the client at import time).

Storage: blobs are content-addressed on disk (``<root>/blobs/<sha256>``); commits and refs live in memory. Like the
real Hub, a new repo starts with an "initial commit" holding a ``.gitattributes``; its ``filter=lfs`` patterns (plus
size >= 10 MiB or a binary sample) decide which files the preupload endpoint sends through LFS.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

__all__ = ["Commit", "LocalHub"]

_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME_RE = re.compile(r"[A-Za-z0-9][\w.\-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_LFS_PATTERNS = (  # the default .gitattributes of a new Hub repo
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx "
    "*.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar *.tflite *.tgz "
    "*.wasm *.xz *.zip *.zst *tfevents*"
)
_DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS.split())
_KINDS = "create-repo whoami validate-yaml repo-info tree paths-info refs commits create-branch preupload lfs-batch"
#: Endpoint kinds accepted by :meth:`LocalHub.fail_next` (every routed request has exactly one kind).
FAIL_KINDS = frozenset(f"{_KINDS} lfs-upload lfs-verify commit resolve".split())


def _now() -> str:
    """Current UTC time in the Hub's ``%Y-%m-%dT%H:%M:%S.%fZ`` format (milliseconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_sha1(data: bytes) -> str:
    """Git blob id of ``data`` (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that stands in the git tree for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An HTTP error answered to the client, with the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class Commit:
    """One commit: a full snapshot ``{path: {"sha256", "size", "lfs", "oid"}}`` (``oid`` = git blob id)."""

    id: str
    parent: str | None
    title: str
    description: str
    files: dict[str, dict[str, Any]]
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)  # creation order
    refs: dict[str, str] = field(default_factory=dict)  # branch name or "refs/pr/N" -> commit id
    lfs_objects: dict[str, int] = field(default_factory=dict)  # sha256 -> size, uploaded to this repo

    def resolve(self, revision: str) -> Commit:
        """Commit for a branch / PR ref / full or >=7-char abbreviated commit id, else 404 RevisionNotFound."""
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [c for cid, c in self.commits.items() if cid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


@dataclass
class _Request:
    method: str
    raw_path: str
    segs: list[str]
    query: dict[str, list[str]]
    headers: Any
    body: bytes

    def flag(self, name: str) -> bool:
        return (self.query.get(name) or [""])[-1].lower() in ("1", "true", "yes")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from None


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # stream this file instead of ``body``
    span: tuple[int, int] | None = None  # serve only bytes [start, end) of ``file`` (a Range request)
    counted: str | None = None  # "<repo_type>/<repo_id>/<path>": add the bytes sent to ``LocalHub.bytes_served``


def _json(obj: Any, status: int = 200, content_type: str = "application/json", **headers: str) -> _Response:
    return _Response(status, json.dumps(obj).encode(), content_type, dict(headers))


class _Handler(BaseHTTPRequestHandler):
    """Thin adapter from ``http.server`` to :meth:`LocalHub._handle` (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are dropped after this
    disable_nagle_algorithm = True  # headers and body go out as separate writes: without this each answer waits ~40 ms
    hub: LocalHub

    def log_message(self, fmt: str, *args: Any) -> None:
        """Silence the stderr access log."""

    def do_GET(self) -> None:
        self.hub._handle(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET


class LocalHub:
    """In-process fake of the Hugging Face Hub serving ``root`` on ``127.0.0.1``.

    Attributes:
        url: base URL once started (use as ``HF_ENDPOINT``).
        requests_log: ``(method, raw path incl. query, headers)`` for every request; an ``Authorization`` header is
            kept but its value replaced by ``"<redacted>"``.
        page_size: entries per page of the tree endpoint (1000 like the Hub; 50 when ``expand=true``).
        bytes_served: ``{"<repo_type>/<repo_id>/<path>": bytes}`` of file content sent by ``/resolve`` GETs (whole
            files and ``Range`` parts alike), so tests can check how much of a data set a client really read.
    """

    def __init__(self, root: Path, token: str = "hf_test_token", username: str = "test-user") -> None:
        self.root = Path(root)
        self.token = token
        self.username = username
        self.url = ""
        self.page_size = 1000
        self.requests_log: list[tuple[str, str, dict[str, str]]] = []
        self.bytes_served: dict[str, int] = {}
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._failures: list[list[Any]] = []  # [kind, status, remaining]
        self._tickets: dict[str, tuple[tuple[str, str], str, int]] = {}  # upload ticket -> (repo key, oid, size)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Bind a free port on 127.0.0.1, serve from a daemon thread and return the base URL."""
        if self._server is not None:
            return self.url
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHub", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LocalHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ test helpers
    def fail_next(self, endpoint_kind: str, status: int = 500, count: int = 1) -> None:
        """Answer the next ``count`` requests of ``endpoint_kind`` (see ``FAIL_KINDS``) with HTTP ``status``.

        Note the client retries 408/429/5xx with backoff (1 s, 2 s, ...) on preupload, LFS batch/upload/verify and tree
        pages, but not on commit or create-repo.
        """
        if endpoint_kind not in FAIL_KINDS:
            raise ValueError(f"Unknown endpoint kind {endpoint_kind!r}; expected one of {sorted(FAIL_KINDS)}")
        with self._lock:
            self._failures.append([endpoint_kind, status, count])

    def seed_repo(self, repo_id: str, folder: Path, repo_type: str = "model", title: str = "seeded") -> Commit:
        """Create ``repo_id`` holding every file under ``folder`` (parquet and other LFS patterns as LFS objects), in
        one commit, without going through the upload protocol: a fixture for tests that only read from the Hub."""
        files = {".gitattributes": self._regular_entry(_DEFAULT_GITATTRIBUTES.encode())}
        self._store_blob(_DEFAULT_GITATTRIBUTES.encode())
        lfs: dict[str, int] = {}
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            rel, data = path.relative_to(folder).as_posix(), path.read_bytes()
            sha = self._store_blob(data)
            if any(fnmatch.fnmatchcase(path.name, pat) for pat in _LFS_PATTERNS.split()):
                files[rel], lfs[sha] = self._lfs_entry(sha, len(data)), len(data)
            else:
                files[rel] = self._regular_entry(data)
        with self._lock:
            repo = _Repo(repo_type, repo_id, False, _now(), lfs_objects=lfs)
            commit = self._new_commit(repo, None, title, "", files)
            repo.refs["main"] = commit.id
            self._repos[(repo_type, repo_id)] = repo
        return commit

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` of the repo at ``revision`` (includes the initial ``.gitattributes``)."""
        with self._lock:
            commit = self._repo(repo_type, repo_id).resolve(revision)
        return {path: self._blob_path(e["sha256"]).read_bytes() for path, e in sorted(commit.files.items())}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """History reachable from ``revision``, oldest first (the first one is the initial commit)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            history = [repo.resolve(revision)]
            while history[-1].parent is not None:
                history.append(repo.commits[history[-1].parent])
        return history[::-1]

    def branches(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """``{ref name: commit id}`` for branches and PR refs."""
        with self._lock:
            return dict(self._repo(repo_type, repo_id).refs)

    # ------------------------------------------------------------------------------------------------ storage
    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _store_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha)
        if not path.exists():
            tmp = path.with_name(f"{sha}.{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    @staticmethod
    def _regular_entry(data: bytes) -> dict[str, Any]:
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "lfs": False, "oid": _git_sha1(data)}

    @staticmethod
    def _lfs_entry(sha256: str, size: int) -> dict[str, Any]:
        return {"sha256": sha256, "size": size, "lfs": True, "oid": _git_sha1(_lfs_pointer(sha256, size))}

    def _new_commit(self, repo: _Repo, parent: str | None, title: str, description: str, files: dict) -> Commit:
        date = _now()
        seed = json.dumps([parent, title, description, sorted(files.items()), date, secrets.token_hex(8)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, description, files, date)
        repo.commits[commit.id] = commit
        return commit

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"

    # --------------------------------------------------------------------------------------------- transport
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Read the whole request, route it, and always answer with a Content-Length (keep-alive safe)."""
        method = handler.command
        body = self._read_body(handler)
        split = urlsplit(handler.path)
        logged = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in handler.headers.items()}
        with self._lock:
            self.requests_log.append((method, handler.path, logged))
        segs = [unquote(s) for s in split.path.split("/")[1:]]
        req = _Request(method, handler.path, segs, parse_qs(split.query), handler.headers, body)
        try:
            kind, action = self._route(req)
            self._maybe_fail(kind)
            resp = action()
        except HubError as err:
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
            if err.code:
                headers["X-Error-Code"] = err.code
            headers.update({k: str(v) for k, v in err.extra.pop("headers", {}).items()})
            resp = _json({"error": err.message, **err.extra}, err.status, **headers)
        except Exception as err:  # report server bugs to the client instead of dropping the socket
            resp = _json({"error": f"Internal error: {type(err).__name__}: {err}"}, 500)
        sent = self._send(handler, resp, head=method == "HEAD")
        if resp.counted is not None and sent:
            with self._lock:
                self.bytes_served[resp.counted] = self.bytes_served.get(resp.counted, 0) + sent

    def served(self, prefix: str = "") -> int:
        """Bytes of file content served so far for the files whose key starts with ``prefix``."""
        with self._lock:
            return sum(n for k, n in self.bytes_served.items() if k.startswith(prefix))

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while (size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, resp: _Response, head: bool) -> int:
        """Write the answer; returns the bytes of body sent (0 for HEAD)."""
        if resp.file is not None:
            start, end = resp.span if resp.span is not None else (0, resp.file.stat().st_size)
            length = end - start
        else:
            start, end, length = 0, 0, len(resp.body)
        try:
            handler.send_response(resp.status)
            for key, value in resp.headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Type", resp.content_type)
            handler.send_header("Content-Length", str(length))
            handler.end_headers()
            if head:
                return 0
            if resp.file is None:
                handler.wfile.write(resp.body)
                return length
            with resp.file.open("rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    handler.wfile.write(chunk)
                    left -= len(chunk)
            return length - left
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
            return 0

    def _maybe_fail(self, kind: str) -> None:
        with self._lock:
            for failure in self._failures:
                if failure[0] == kind and failure[2] > 0:
                    failure[2] -= 1
                    self._failures = [f for f in self._failures if f[2] > 0]
                    raise HubError(failure[1], f"Injected failure ({kind})")

    def _route(self, req: _Request) -> tuple[str, Any]:
        """Map a request to ``(endpoint kind, zero-argument handler)``; 404 when nothing matches."""
        s, m = req.segs, req.method
        if s == ["api", "repos", "create"] and m == "POST":
            return "create-repo", lambda: self._create_repo(req)
        if s == ["api", "whoami-v2"] and m == "GET":
            return "whoami", lambda: self._whoami(req)
        if s == ["_test", "bytes-served"] and m == "GET":  # for tests in other processes (not a Hub endpoint)
            return "stats", lambda: _json(dict(self.bytes_served))
        if s == ["api", "validate-yaml"] and m == "POST":
            return "validate-yaml", lambda: _json({"errors": [], "warnings": []})
        if len(s) >= 4 and s[0] == "api" and s[1] in _API_TYPES:
            rtype, rid, action, rest = _API_TYPES[s[1]], f"{s[2]}/{s[3]}", (s[4:5] or [""])[0], s[5:]
            routes: dict[tuple[str, str], tuple[str, Any]] = {
                ("GET", ""): ("repo-info", lambda: self._info(req, rtype, rid, "main")),
                ("GET", "revision"): ("repo-info", lambda: self._info(req, rtype, rid, "/".join(rest))),
                ("GET", "tree"): ("tree", lambda: self._tree(req, rtype, rid, rest[0], "/".join(rest[1:]))),
                ("POST", "paths-info"): ("paths-info", lambda: self._paths_info(req, rtype, rid, rest[0])),
                ("GET", "refs"): ("refs", lambda: self._refs(req, rtype, rid)),
                ("GET", "auth-check"): ("auth-check", lambda: (self._access(req, rtype, rid), _json({}))[1]),
                ("GET", "commits"): ("commits", lambda: self._list_commits(req, rtype, rid, rest[0])),
                ("POST", "branch"): ("create-branch", lambda: self._create_branch(req, rtype, rid, "/".join(rest))),
                ("POST", "preupload"): ("preupload", lambda: self._preupload(req, rtype, rid, rest[0])),
                ("POST", "commit"): ("commit", lambda: self._commit(req, rtype, rid, rest[0])),
            }
            needs_rest = action not in ("", "refs", "auth-check")
            if (m, action) in routes and (rest or not needs_rest):
                return routes[(m, action)]
        if len(s) == 3 and s[:2] == ["_lfs", "upload"] and m == "PUT":
            return "lfs-upload", lambda: self._lfs_upload(req, s[2])
        rtype, t = (_API_TYPES[s[0]], s[1:]) if s and s[0] in ("datasets", "spaces") else ("model", s)
        if len(t) == 6 and t[1].endswith(".git") and t[2:5] == ["info", "lfs", "objects"] and m == "POST":
            rid = f"{t[0]}/{t[1][:-4]}"
            if t[5] == "batch":
                return "lfs-batch", lambda: self._lfs_batch(req, rtype, rid)
            if t[5] == "verify":
                return "lfs-verify", lambda: self._lfs_verify(req, rtype, rid)
        if len(t) >= 5 and t[2] == "resolve" and m in ("GET", "HEAD"):
            return "resolve", lambda: self._resolve(req, rtype, f"{t[0]}/{t[1]}", t[3], "/".join(t[4:]))
        raise HubError(404, f"Not found: {m} {req.raw_path}")

    # ---------------------------------------------------------------------------------------------- auth
    def _authed(self, req: _Request) -> bool:
        """False without credentials, True with the right token, 401 for any other Authorization header."""
        value = req.headers.get("Authorization")
        if value is None:
            return False
        if not secrets.compare_digest(value.encode(), f"Bearer {self.token}".encode()):
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _access(self, req: _Request, repo_type: str, repo_id: str, write: bool = False) -> _Repo:
        authed = self._authed(req)
        if write and not authed:
            raise HubError(401, "You must be authenticated to write to this repository")
        repo = self._repo(repo_type, repo_id)
        if repo.private and not authed:  # the Hub hides private repos from anonymous users
            raise HubError(401, "Invalid username or password.", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------------------------------ endpoints
    def _whoami(self, req: _Request) -> _Response:
        if not self._authed(req):
            raise HubError(401, "You must be authenticated")
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return _json({"type": "user", "name": self.username, "fullname": self.username, "orgs": [], "auth": auth})

    def _create_repo(self, req: _Request) -> _Response:
        if not self._authed(req):
            raise HubError(401, "You must be authenticated to create a repository")
        payload = req.json()
        name, namespace = payload.get("name") or "", payload.get("organization") or self.username
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX or not (_NAME_RE.fullmatch(name) and _NAME_RE.fullmatch(namespace)):
            raise HubError(400, f"Invalid repo name or type: {namespace}/{name} ({repo_type})")
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
            repo = _Repo(repo_type, repo_id, private, _now())
            self._store_blob(_DEFAULT_GITATTRIBUTES.encode())
            files = {".gitattributes": self._regular_entry(_DEFAULT_GITATTRIBUTES.encode())}
            repo.refs["main"] = self._new_commit(repo, None, "initial commit", "", files).id
            self._repos[(repo_type, repo_id)] = repo
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        with self._lock:
            repo = self._access(req, repo_type, repo_id)
            commit = repo.resolve(revision)
        siblings = []
        for path, e in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if req.flag("blobs"):
                sibling.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    pointer_size = len(_lfs_pointer(e["sha256"], e["size"]))
                    sibling["lfs"] = {"sha256": e["sha256"], "size": e["size"], "pointerSize": pointer_size}
            siblings.append(sibling)
        info = {
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in commit.files.values()),
        }
        return _json(info)

    def _path_info(self, path: str, entry: dict[str, Any] | None, files: dict[str, dict[str, Any]]) -> dict:
        """Tree / paths-info JSON for a file (``entry``) or a directory (``entry is None``)."""
        if entry is None:
            inner = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
            return {"type": "directory", "oid": hashlib.sha1(json.dumps(inner).encode()).hexdigest(), "path": path}
        out: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
        return out

    def _tree(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        with self._lock:
            files = self._access(req, repo_type, repo_id).resolve(revision).files
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        dirs: set[str] = set()
        listed: list[str] = []
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            if req.flag("recursive"):
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                listed.append(p)
            elif len(parts) > 1:
                dirs.add(prefix + parts[0])
            else:
                listed.append(p)
        if prefix and not listed and not dirs:
            raise HubError(404, f"Path not found: {path}", "EntryNotFound")
        entries = [self._path_info(d, None, files) for d in sorted(dirs)]
        entries += [self._path_info(p, files[p], files) for p in listed]
        size = min(self.page_size, 50) if req.flag("expand") else self.page_size
        cursor = int((req.query.get("cursor") or ["0"])[0])
        headers = {}
        if cursor + size < len(entries):
            query = {k: v[-1] for k, v in req.query.items()} | {"cursor": str(cursor + size)}
            headers["Link"] = f'<{self.url}{urlsplit(req.raw_path).path}?{urlencode(query)}>; rel="next"'
        return _json(entries[cursor : cursor + size], **headers)

    def _paths_info(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        """Form-encoded ``paths``: info for those that exist (used by the client for ``CommitOperationCopy``)."""
        with self._lock:
            files = self._access(req, repo_type, repo_id).resolve(revision).files
        out = []
        for path in (p.strip("/") for p in parse_qs(req.body.decode()).get("paths", [])):
            if path in files or any(p.startswith(path + "/") for p in files):
                out.append(self._path_info(path, files.get(path), files))
        return _json(out)

    def _refs(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        with self._lock:
            refs = dict(self._access(req, repo_type, repo_id).refs)
        heads = {n: c for n, c in refs.items() if not n.startswith("refs/")}
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in heads.items()]
        prs = [{"name": n, "ref": n, "targetCommit": c} for n, c in refs.items() if n.startswith("refs/pr/")]
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _list_commits(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        with self._lock:
            self._access(req, repo_type, repo_id)
            history = self.commits(repo_id, revision, repo_type)[::-1]
        authors = [{"user": self.username, "avatar": ""}]
        rows = [{"id": c.id, "title": c.title, "message": c.description, "date": c.date} for c in history]
        return _json([{**row, "authors": authors} for row in rows])

    def _create_branch(self, req: _Request, repo_type: str, repo_id: str, branch: str) -> _Response:
        payload = req.json()
        with self._lock:
            repo = self._access(req, repo_type, repo_id, write=True)
            if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)*", branch) or branch.startswith("refs/"):
                raise HubError(400, f"Invalid branch name: {branch}")
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = repo.resolve(payload.get("startingPoint") or "main").id
        return _json({})

    def _preupload(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        """Decide regular vs LFS per file; ``oid`` of the current file lets the client skip unchanged ones."""
        payload = req.json()
        with self._lock:
            files = self._access(req, repo_type, repo_id, write=True).resolve(revision).files
        attributes = self._blob_path(files[".gitattributes"]["sha256"]).read_text() if ".gitattributes" in files else ""
        patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line.split()[1:]]
        out = []
        for item in payload.get("files") or []:
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int):
                raise HubError(400, "Each file needs a string 'path' and an integer 'size'")
            sample = base64.b64decode(item.get("sample") or "")
            name = path.rsplit("/", 1)[-1]
            lfs = (
                size >= _LFS_SIZE_THRESHOLD
                or b"\0" in sample
                or any(fnmatch.fnmatchcase(path if "/" in pat else name, pat) for pat in patterns)
            )
            info: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            current = files.get(path)
            if current is not None and current["lfs"] == lfs:
                info["oid"] = current["sha256"] if lfs else current["oid"]
            out.append(info)
        return _json({"files": out, "commitOid": None})

    def _lfs_batch(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        """git-LFS batch API (upload only): one single-part PUT URL + a verify URL per missing object."""
        payload = req.json()
        with self._lock:
            repo = self._access(req, repo_type, repo_id, write=True)
            if payload.get("operation") != "upload":
                raise HubError(422, "Only the 'upload' operation is supported by LocalHub")
            objects = []
            for obj in payload.get("objects") or []:
                oid, size = obj.get("oid"), obj.get("size")
                if not (isinstance(oid, str) and _SHA256_RE.fullmatch(oid) and isinstance(size, int) and size >= 0):
                    error = {"code": 422, "message": "Invalid oid or size"}
                    objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0, "error": error})
                    continue
                entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if repo.lfs_objects.get(oid) != size:  # no "actions" == already uploaded
                    ticket = secrets.token_urlsafe(24)
                    self._tickets[ticket] = ((repo_type, repo_id), oid, size)
                    verify = f"{self._repo_url(repo_type, repo_id)}.git/info/lfs/objects/verify"
                    entry["actions"] = {
                        "upload": {"href": f"{self.url}/_lfs/upload/{ticket}", "expires_in": 3600},
                        "verify": {"href": verify, "header": {}},
                    }
                objects.append(entry)
        batch = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _json(batch, content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, req: _Request, ticket: str) -> _Response:
        """PUT target of an upload action; the ticket in the URL plays the role of a presigned URL (no auth)."""
        with self._lock:
            target = self._tickets.get(ticket)
        if target is None:
            raise HubError(403, "Invalid or expired upload URL")
        key, oid, size = target
        if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
        self._store_blob(req.body)
        with self._lock:
            if key in self._repos:
                self._repos[key].lfs_objects[oid] = size
            self._tickets.pop(ticket, None)
        return _Response(200, headers={"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def _lfs_verify(self, req: _Request, repo_type: str, repo_id: str) -> _Response:
        payload = req.json()
        with self._lock:
            repo = self._access(req, repo_type, repo_id, write=True)
            if repo.lfs_objects.get(payload.get("oid")) != payload.get("size"):
                raise HubError(404, f"LFS object {payload.get('oid')} not found")
        return _json({"success": True})

    def _commit(self, req: _Request, repo_type: str, repo_id: str, revision: str) -> _Response:
        """NDJSON commit (header/file/lfsFile/deletedFile/deletedFolder lines), applied atomically."""
        try:
            lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid NDJSON payload: {err}") from None
        if not lines or lines[0].get("key") != "header" or not (lines[0].get("value") or {}).get("summary"):
            raise HubError(400, "The first line must be a header with a non-empty 'summary'")
        header = lines[0]["value"]
        ops: list[tuple[str, str, Any]] = []
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = value.get("path")
            if not isinstance(path, str) or not path.strip("/") or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"Invalid path in commit: {path!r}")
            if key == "file":
                content = value.get("content", "")
                try:
                    data = base64.b64decode(content, validate=True) if value.get("encoding") == "base64" else None
                except ValueError:
                    raise HubError(400, f"Invalid base64 content for {path}") from None
                ops.append(("file", path, data if data is not None else str(content).encode()))
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256" or not _SHA256_RE.fullmatch(str(value.get("oid"))):
                    raise HubError(400, f"Invalid LFS pointer for {path}")
                ops.append(("lfs", path, (value["oid"], value.get("size"))))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, path.rstrip("/"), None))
            else:
                raise HubError(400, f"Unknown commit operation key: {key!r}")
        with self._lock:
            repo = self._access(req, repo_type, repo_id, write=True)
            if revision not in repo.refs:
                raise HubError(404, f"Invalid rev id: {revision} (commits must target a branch)", "RevisionNotFound")
            head = repo.refs[revision]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files)
            for kind, path, arg in ops:  # validate + apply on a copy: any error leaves the repo untouched
                if kind == "file":
                    files[path] = self._regular_entry(arg)
                elif kind == "lfs":
                    oid, size = arg
                    if oid not in repo.lfs_objects or size not in (None, repo.lfs_objects[oid]):
                        raise HubError(422, f"LFS object {oid} for '{path}' was never uploaded to this repo")
                    files[path] = self._lfs_entry(oid, repo.lfs_objects[oid])
                elif kind == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    inside = [p for p in files if p.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in inside:
                        del files[p]
            for kind, _, arg in ops:
                if kind == "file":
                    self._store_blob(arg)
            target, extra = revision, {}
            if req.flag("create_pr"):
                number = 1 + sum(1 for ref in repo.refs if ref.startswith("refs/pr/"))
                target = f"refs/pr/{number}"
                extra["pullRequestUrl"] = f"{self._repo_url(repo_type, repo_id)}/discussions/{number}"
            commit = self._new_commit(repo, head, header["summary"], header.get("description") or "", files)
            repo.refs[target] = commit.id
        url = f"{self._repo_url(repo_type, repo_id)}/commit/{commit.id}"
        return _json({"success": True, "commitOid": commit.id, "commitUrl": url, "hookOutput": "", **extra})

    def _resolve(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str) -> _Response:
        """HEAD/GET a file: ETag = git blob id (regular) or sha256 (LFS, plus ``X-Linked-Etag``/``X-Linked-Size``).

        ``Range: bytes=a-b`` (also ``a-`` and ``-n``) is honoured as the Hub's CDN does: 206 with ``Content-Range``,
        416 when it starts past the end; the bytes sent are counted per file (:attr:`bytes_served`).
        """
        with self._lock:
            commit = self._access(req, repo_type, repo_id).resolve(revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.id})
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"',
                   "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        size, counted = entry["size"], f"{repo_type}/{repo_id}/{path}"
        blob = self._blob_path(entry["sha256"])
        span = _parse_range(req.headers.get("Range"), size)
        if span is None:
            return _Response(200, b"", "application/octet-stream", headers, file=blob, counted=counted)
        if span == (-1, -1):
            raise HubError(416, f"Range not satisfiable for {path} ({size} bytes)",
                           headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
        return _Response(206, b"", "application/octet-stream", headers, file=blob, span=span, counted=counted)


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A single-range ``Range`` header -> [start, end) within ``size``; None: no (or an unsupported) range, answer
    the whole file; (-1, -1): not satisfiable."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value or "")
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last n bytes
        n = int(m.group(2))
        return (max(0, size - n), size) if n > 0 and size > 0 else (-1, -1)
    start = int(m.group(1))
    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
    if start >= size or end <= start:
        return (-1, -1)
    return start, end
