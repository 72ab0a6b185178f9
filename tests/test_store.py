"""The model store: import and pull (against a local HTTP server on 127.0.0.1), resume, checksums, and use.
(`medsam3d models` and `segment --model NAME`: tests/integration/test_cli_models.py.)"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medsam3d import store
from medsam3d.segmenter import Segmenter

from conftest import SMALL_SAM


class Server:
    """Serves one file with Range support; can cut the first transfer half-way, or answer with HTML."""

    def __init__(self, payload: bytes, cut_first: bool = False, html: bool = False) -> None:
        self.payload, self.cut_first, self.html = payload, cut_first, html
        self.requests: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                if self.path != "/weights.pth":
                    self.send_error(404, "Not Found")
                    return
                if outer.html:
                    body = b"<html>please confirm</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                body = outer.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_first and len(outer.requests) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture()
def published(monkeypatch, checkpoint_bytes):
    """Point `pull sam-med3d-turbo` at a local server holding a small checkpoint with a known checksum."""
    servers = []

    def make(**kwargs) -> Server:
        server = Server(checkpoint_bytes, **kwargs)
        servers.append(server)
        monkeypatch.setitem(store.REMOTE, "sam-med3d-turbo", {
            "model": "sam-med3d", "config": SMALL_SAM, "url": server.url,
            "sha256": hashlib.sha256(checkpoint_bytes).hexdigest(), "about": "test copy",
        })
        return server

    yield make
    for server in servers:
        server.close()


def test_pull_resumes_an_interrupted_download_and_verifies(home, published, checkpoint_bytes):
    server = published(cut_first=True)
    seen = []
    entry = store.pull("sam-med3d-turbo", progress=lambda done, total: seen.append((done, total)))
    assert server.requests[0] is None and server.requests[1] == f"bytes={len(checkpoint_bytes) // 2}-"
    assert entry["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert (home / entry["file"]).read_bytes() == checkpoint_bytes
    assert seen[-1] == (len(checkpoint_bytes), len(checkpoint_bytes))
    assert not list((home / "models").glob("*.part"))
    resolved = store.resolve("sam-med3d-turbo")
    assert resolved.model == "sam-med3d" and resolved.sha256 == entry["sha256"]
    seg = Segmenter(model="sam-med3d-turbo")  # the stored name is enough
    assert seg.model.is_trained and seg.weights_sha256 == entry["sha256"]


def test_pull_rejects_a_wrong_checksum_and_keeps_nothing(home, published):
    published()
    with pytest.raises(ValueError, match="checksum mismatch"):
        store.pull("sam-med3d-turbo", sha256="0" * 64)
    assert store.load_manifest() == {}
    assert not list((home / "models").iterdir())


def test_pull_errors_are_one_sentence(home, published):
    server = published(html=True)
    with pytest.raises(ValueError, match="returned a web page"):
        store.pull("sam-med3d-turbo")
    with pytest.raises(ValueError, match="HTTP 404"):
        store.pull("sam-med3d-turbo", url=server.url.replace("weights", "missing"))
    with pytest.raises(ValueError, match="cannot download .*refused|cannot download"):
        store.pull("sam-med3d-turbo", url="http://127.0.0.1:9/weights.pth", timeout=2)
    with pytest.raises(ValueError, match="pull knows"):
        store.pull("nonsense")


def test_import_checks_the_architecture_and_detects_tampering(home, tmp_path, checkpoint_bytes):
    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(checkpoint_bytes)
    with pytest.raises(ValueError, match="does not fit sam-med3d"):
        store.import_checkpoint(ckpt, "wrong", "sam-med3d")  # full-size architecture: shapes differ
    assert store.load_manifest() == {}
    entry = store.import_checkpoint(ckpt, "mine", "sam-med3d", SMALL_SAM)
    assert entry["source"].startswith("import:") and store.resolve("mine").checkpoint.is_file()
    stored = home / entry["file"]
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="do not match their recorded sha256"):
        store.resolve("mine")
