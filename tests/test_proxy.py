"""Behind an HTTP proxy (most clusters): the Hub check goes the way huggingface_hub's downloads go.

A small forward proxy (stdlib) stands in front of the local Hub server; the endpoint's host name resolves nowhere
(``.invalid``), so only a client that honours ``HTTP_PROXY`` reaches it, as on a cluster whose proxy alone can
resolve and reach the Hub. Each check runs in a fresh interpreter: huggingface_hub reads ``HF_ENDPOINT`` at import
and its HTTP client reads the proxy variables when it is created.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

try:
    from tests.hub_server import LocalHub
except ImportError:  # tests/ is not a package: pytest puts tests/ on sys.path
    from hub_server import LocalHub

ROOT = Path(__file__).resolve().parent.parent
HOST = "hub.robustify-test.invalid"  # RFC 2606: never resolves


class ForwardProxy:
    """An HTTP forward proxy that sends every absolute-URI request to one upstream (host, port): the only way to
    reach ``HOST``. Counts the requests it forwarded."""

    def __init__(self, upstream_port: int) -> None:
        proxy = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.hits += 1
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy-")}
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body or None, headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hub_behind_proxy(tmp_path: Path):
    hub = LocalHub(tmp_path / "hub")
    hub.start()
    proxy = ForwardProxy(int(hub.url.rsplit(":", 1)[1]))
    try:
        yield hub, proxy
    finally:
        proxy.stop()
        hub.stop()


CHECK = """
import json
from huggingface_hub import constants
from robustify.hub_access import hub_reachable  # what robustify.models uses, without importing torch
print(json.dumps({"reachable": hub_reachable(timeout=5), "offline": constants.HF_HUB_OFFLINE}))
"""


def _check(hub: LocalHub, tmp_path: Path, **proxy_env: str) -> dict:
    import json

    port = hub.url.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://{HOST}:{port}", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT), **proxy_env)
    res = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_hub_reachable_through_the_proxy_huggingface_hub_would_use(hub_behind_proxy, tmp_path: Path):
    hub, proxy = hub_behind_proxy
    assert _check(hub, tmp_path, HTTP_PROXY=proxy.url) == {"reachable": True, "offline": False}
    assert proxy.hits >= 1  # the check went through the proxy, as the download would
    assert _check(hub, tmp_path, http_proxy=proxy.url, HTTPS_PROXY=proxy.url)["reachable"] is True


def test_hub_unreachable_when_the_client_would_not_get_through(hub_behind_proxy, tmp_path: Path):
    hub, proxy = hub_behind_proxy
    assert _check(hub, tmp_path)["reachable"] is False  # no proxy: the host resolves nowhere
    hits = proxy.hits
    assert _check(hub, tmp_path, HTTP_PROXY=proxy.url, NO_PROXY=HOST)["reachable"] is False  # bypassed
    assert proxy.hits == hits
