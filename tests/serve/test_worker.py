"""`medsam3d serve`: the real worker process driven over stdin/stdout (and a socket) like the Slicer module does.

Checks: a two-object click session gives the masks `medsam3d segment` gives for the same click sequences; inline
masks round-trip; undo/reset; 1000 mixed requests (a third malformed) all answered with the worker alive and its
memory bounded; the socket mode's token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import EXAMPLE_CT as SCAN, click_sequences
from medsam3d.serve.protocol import unpack_box

REPO = Path(__file__).resolve().parents[2]
class Worker:
    """The real `medsam3d serve --stdio` process."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        self.process = subprocess.Popen([sys.executable, "-m", "medsam3d", "serve", "--stdio", "--threads", "2",
                                         *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env)
        self.next_id = 0

    def send_raw(self, line: bytes) -> dict:
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        assert reply, "worker closed stdout: " + self.process.stderr.read().decode()[-2000:]
        return json.loads(reply)

    def __call__(self, cmd: str, **fields) -> dict:
        self.next_id += 1
        reply = self.send_raw(json.dumps({"id": self.next_id, "cmd": cmd, **fields}).encode())
        assert reply["id"] == self.next_id
        return reply

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    if w.process.poll() is None:
        assert w.close() == 0  # exits by itself when stdin closes


def read_mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_hello_names_protocol_model_and_licence(worker):
    reply = worker("hello")
    assert reply["ok"] and reply["protocol"] == 1 and reply["model"] == "medsam3d-tiny"
    assert reply["threads"] == 2 and reply["device"] == "cpu" and "Apache-2.0" in reply["licence"]


def test_two_object_session_equals_segment_replay(worker, tmp_path):
    """50 clicks alternating between two objects (the worker's default, incremental refinement); each object's mask
    equals `segment` replaying its clicks (the same default)."""
    assert worker("hello")["incremental"] is True
    session_equals_segment_replay(worker, tmp_path, 50, [])


def test_every_window_session_equals_segment_replay(tmp_path):
    """The other refinement, `serve --every-window`, replays the same with `segment --every-window`."""
    other = Worker("--every-window")
    try:
        assert other("hello")["incremental"] is False
        session_equals_segment_replay(other, tmp_path, 16, ["--every-window"])
    finally:
        assert other.close() == 0


def test_objects_close_together_replay_the_same(worker, tmp_path):
    """Two objects whose first clicks are 6 mm apart, clicked in turn, b first: each object's answer depends on its
    own clicks only (not on the window the other one encoded first), so a replay, a then b, gives the session's
    masks."""
    clicks = {"a": [([91, 52, 18], True), ([85, 48, 18], True), ([99, 58, 17], False)],
              "b": [([93, 53, 18], True), ([96, 46, 20], True), ([80, 55, 19], False)]}
    session = worker("load", path=str(SCAN))["session"]
    for n in range(3):
        for name in ("b", "a"):  # the replay segments a first
            point, positive = clicks[name][n]
            assert worker("add_point", session=session, object=name, point=point, positive=positive)["ok"]
    prompts = tmp_path / "clicks.json"
    prompts.write_text(json.dumps([{"label": n + 1, "clicks": [{"point": p, "positive": s} for p, s in clicks[name]]}
                                   for n, name in enumerate(clicks)]))
    out = tmp_path / "replay.nii.gz"
    subprocess.run([sys.executable, "-m", "medsam3d", "segment", str(SCAN), "--prompts", str(prompts), "-o", str(out),
                    "--threads", "2", "-q"], check=True)
    replay = read_mask(out)  # (K, J, I) label map: b over a where they overlap
    for n, name in enumerate(clicks):
        path = tmp_path / f"{name}.nii.gz"
        assert worker("get_mask", session=session, object=name, path=str(path))["ok"]
        served = read_mask(path).astype(bool)
        assert served.sum() > 100
        if name == "a":  # where b overlaps it the label map says b
            np.testing.assert_array_equal(served & (replay != 2), replay == 1)
        else:
            np.testing.assert_array_equal(served, replay == 2)
    worker("close", session=session)


def session_equals_segment_replay(worker, tmp_path, clicks: int, segment_args: list[str]) -> None:
    sequences = click_sequences(clicks)
    session = worker("load", path=str(SCAN))["session"]
    order = [(name, click) for n in range(clicks // 2) for name, click in
             (("liver", sequences["liver"][n]), ("spleen", sequences["spleen"][n]))]
    copies = {name: np.zeros(read_mask(SCAN).shape[::-1], np.uint8) for name in sequences}  # (I, J, K)
    for name, (point, positive) in order:
        reply = worker("add_point", session=session, object=name, point=point, positive=positive)
        assert reply["ok"], reply
        inline = worker("get_mask", session=session, object=name, inline=True)
        unpacked = unpack_box(inline)
        if unpacked is not None:
            (lo, hi), part = unpacked
            copies[name][lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = part
        assert int(copies[name].sum()) == inline["voxels"]
    prompts = tmp_path / "clicks.json"
    prompts.write_text(json.dumps([{"label": n + 1, "clicks": [{"point": p, "positive": s} for p, s in sequences[name]]}
                                   for n, name in enumerate(sequences)]))
    out = tmp_path / "replay.nii.gz"
    subprocess.run([sys.executable, "-m", "medsam3d", "segment", str(SCAN), "--prompts", str(prompts), "-o", str(out),
                    "--threads", "2", "-q", *segment_args], check=True)
    replay = read_mask(out)  # (K, J, I) label map
    for n, name in enumerate(sequences):
        path = tmp_path / f"{name}.nii.gz"
        reply = worker("get_mask", session=session, object=name, path=str(path))
        served = read_mask(path)
        assert reply["ok"] and reply["voxels"] == int(served.sum()) > 100
        np.testing.assert_array_equal(served, copies[name].transpose(2, 1, 0))  # inline copy == file
        np.testing.assert_array_equal(served.astype(bool), replay == n + 1)
    written = sitk.ReadImage(str(tmp_path / "liver.nii.gz"))
    scan = sitk.ReadImage(str(SCAN))
    assert written.GetSpacing() == scan.GetSpacing() and written.GetOrigin() == scan.GetOrigin()
    assert written.GetDirection() == scan.GetDirection()
    assert worker("close", session=session)["ok"]


def test_undo_and_reset(worker):
    session = worker("load", path=str(SCAN))["session"]
    first = worker("add_point", session=session, object="liver", point=[91, 52, 18])
    second = worker("add_point", session=session, object="liver", point=[60, 40, 18], positive=False)
    assert first["voxels"] > 1000 and second["voxels"] != first["voxels"]
    assert worker("undo", session=session, object="liver")["voxels"] == first["voxels"]
    assert worker("reset", session=session, object="liver")["voxels"] == 0
    assert worker("undo", session=session, object="liver")["voxels"] == first["voxels"]  # reset is undoable
    reply = worker("undo", session=session, object="nothing")
    assert not reply["ok"] and "unknown object" in reply["error"]
    worker("close", session=session)


def malformed_requests(session: str) -> list[bytes]:
    return [
        b"{not json",
        b"[1, 2, 3]",
        json.dumps({"id": 1, "cmd": "explode"}).encode(),
        json.dumps({"id": 2}).encode(),
        json.dumps({"id": 3, "cmd": "add_point", "session": session, "object": "a"}).encode(),  # no point
        json.dumps({"id": 4, "cmd": "add_point", "session": "s999", "object": "a", "point": [1, 2, 3]}).encode(),
        json.dumps({"id": 5, "cmd": "load", "path": "/no/such/scan.nii.gz"}).encode(),
        json.dumps({"id": 6, "cmd": "add_point", "session": session, "object": "a",
                    "point": [5000, -40, 1e9]}).encode(),
        json.dumps({"id": 7, "cmd": "add_point", "session": session, "object": "a", "point": ["x", 1, 2]}).encode(),
        json.dumps({"id": 8, "cmd": "hello", "pad": "x" * 100_000}).encode(),  # a 100 kB line
        json.dumps({"id": 9, "cmd": "get_mask", "session": session, "object": "a", "path": "/no/dir/m.nii.gz"}).encode(),
        json.dumps({"id": 10, "cmd": "load", "path": str(REPO / "README.md")}).encode(),  # not a scan
    ]


def test_thousand_mixed_requests_all_answered(worker):
    session = worker("load", path=str(SCAN))["session"]
    worker("add_point", session=session, object="a", point=[91, 52, 18])
    bad = malformed_requests(session)
    rng = np.random.default_rng(0)
    # warm-up: the first refining clicks grow torch's and the allocator's pools once (about 300 MB here), and
    # undo keeps its last steps; the baseline is the warmed worker, so the growth measured is a leak's
    for n in range(12):
        point = [float(v) for v in rng.uniform([70, 35, 10], [105, 65, 28])]
        worker("add_point", session=session, object="a", point=point, positive=bool(n % 3))
    baseline = worker.rss_mb()
    errors = 0
    for n in range(1000):
        if n % 3 == 0:
            reply = worker.send_raw(bad[n // 3 % len(bad)])
            assert reply["ok"] is False and reply["error"], reply
            errors += 1
        elif n % 50 == 1:
            point = [float(v) for v in rng.uniform([70, 35, 10], [105, 65, 28])]
            assert worker("add_point", session=session, object="a", point=point, positive=bool(n % 2))["ok"]
        elif n % 50 == 2:
            assert worker("undo", session=session, object="a")["ok"]
        else:
            assert worker("get_mask" if n % 2 else "hello", session=session, object="a", inline=True)["ok"]
    assert errors == 334
    assert worker.process.poll() is None
    growth = worker.rss_mb() - baseline
    assert growth <= 50, f"RSS grew {growth:.1f} MB over 1000 requests"
    worker("close", session=session)


def test_refuses_to_overwrite_the_scan(worker, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(SCAN.read_bytes())
    session = worker("load", path=str(scan))["session"]
    worker("add_point", session=session, object="a", point=[91, 52, 18])
    reply = worker("get_mask", session=session, object="a", path=str(scan))
    assert not reply["ok"] and "never overwrites" in reply["error"]
    assert scan.read_bytes() == SCAN.read_bytes()
    worker("close", session=session)


def test_exits_when_stdin_closes():
    w = Worker()
    assert w("hello")["ok"]
    assert w.close() == 0


def test_socket_mode_needs_the_token():
    port_file_worker = subprocess.Popen(
        [sys.executable, "-m", "medsam3d", "serve", "--socket", "127.0.0.1:0", "--token", "s3cret", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = port_file_worker.stdout.readline()  # "listening on 127.0.0.1:PORT"
        assert "listening on 127.0.0.1:" in line, line + port_file_worker.stderr.read()
        port = int(line.strip().rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn, conn.makefile("rwb") as stream:
            def ask(request: dict) -> dict:
                stream.write((json.dumps(request) + "\n").encode())
                stream.flush()
                return json.loads(stream.readline())

            assert ask({"id": 1, "cmd": "hello"}) == {"id": 1, "ok": False, "error": "missing or wrong token; refused"}
            assert not ask({"id": 2, "cmd": "hello", "token": "guess"})["ok"]
            reply = ask({"id": 3, "cmd": "hello", "token": "s3cret"})
            assert reply["ok"] and reply["protocol"] == 1
            assert ask({"id": 4, "cmd": "shutdown", "token": "s3cret"})["ok"]
        assert port_file_worker.wait(timeout=60) == 0
    finally:
        if port_file_worker.poll() is None:
            port_file_worker.kill()


def test_box_and_mask_prompts(worker, tmp_path):
    session = worker("load", path=str(SCAN))["session"]
    assert worker("add_point", session=session, object="liver", point=[91, 52, 18])["ok"]
    boxed = worker("add_box", session=session, object="liver", box=[60, 25, 0, 115, 85, 29])  # box + the click
    assert boxed["ok"] and boxed["voxels"] > 1000, boxed
    bad_box = worker("add_box", session=session, object="liver", box=[60, 25, 0, 60, 85, 29])
    assert not bad_box["ok"] and "zero size" in bad_box["error"]
    path = tmp_path / "liver.nii.gz"
    assert worker("get_mask", session=session, object="liver", path=str(path))["ok"]
    # the written mask goes back in as another object's answer, then a click refines it
    restored = worker("set_mask", session=session, object="copy", path=str(path))
    assert restored["voxels"] == boxed["voxels"]
    assert worker("add_point", session=session, object="copy", point=[91, 52, 18])["ok"]
    wrong = tmp_path / "wrong.nii.gz"
    image = sitk.ReadImage(str(path))
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(wrong))
    reply = worker("set_mask", session=session, object="copy", path=str(wrong))
    assert not reply["ok"] and "not on the scan's grid" in reply["error"]
    worker("close", session=session)
