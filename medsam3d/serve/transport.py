"""Carrying protocol lines: stdin/stdout (a worker started by its client) or a TCP socket with a token.

stdout carries replies only: anything else the process prints goes to stderr, which the client shows as the
worker's log. Lines longer than ``MAX_LINE`` are skipped to their end and answered with an error.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import sys
from contextlib import redirect_stdout
from typing import BinaryIO, Iterator

from .protocol import MAX_LINE, encode_line, error
from .worker import Worker


def read_lines(stream: BinaryIO, limit: int = MAX_LINE) -> Iterator[bytes | None]:
    """Lines of ``stream`` without their newline; None for a line longer than ``limit`` (skipped). Ends at EOF."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drop the rest of the oversized line
                line = stream.readline(limit + 1)
            yield None
            continue
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line


def answer(worker: Worker, line: bytes | None, limit: int = MAX_LINE) -> dict:
    if line is None:
        return error(None, f"request line longer than {limit} bytes; refused")
    return worker.handle_line(line)


def serve_stdio(worker: Worker, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """Answer requests from stdin until it closes or ``shutdown``."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    with redirect_stdout(sys.stderr):  # library output must never mix with replies
        for line in read_lines(stdin):
            stdout.write(encode_line(answer(worker, line)))
            stdout.flush()
            worker.release_memory()
            if worker.stopping:
                break
    return 0


def parse_address(text: str) -> tuple[str, int]:
    """'PORT' or 'HOST:PORT' -> (host, port); the host defaults to loopback."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536:  # 0: any free port (printed when listening)
        raise ValueError(f"--socket must be PORT or HOST:PORT, got {text!r}")
    return host or "127.0.0.1", number


def serve_socket(worker: Worker, host: str, port: int, token: str, ready=None) -> int:
    """Answer requests from one TCP connection at a time; every request must carry ``"token": TOKEN``.

    ``ready(port)`` is called once listening (port 0 picks a free one)."""
    with socket.create_server((host, port)) as server:
        if ready:
            ready(server.getsockname()[1])
        while not worker.stopping:
            connection, _ = server.accept()
            with connection, connection.makefile("rwb") as stream, redirect_stdout(sys.stderr):
                for line in read_lines(stream):
                    reply = _check_token(line, token)
                    if reply is None:
                        reply = answer(worker, line)
                    stream.write(encode_line(reply))
                    stream.flush()
                    worker.release_memory()
                    if worker.stopping:
                        break
    return 0


def _check_token(line: bytes | None, token: str) -> dict | None:
    """None when the request carries the right token; else the refusal."""
    if line is None:
        return error(None, "request line too long; refused")
    try:
        request = json.loads(line)
        given = request.get("token") if isinstance(request, dict) else None
        request_id = request.get("id") if isinstance(request, dict) else None
    except ValueError:
        return error(None, "request is not valid JSON")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
        return error(request_id, "missing or wrong token; refused")
    return None


def token_from_env_or(value: str | None) -> str | None:
    """``--token`` or, to keep it out of the process list, the MEDSAM3D_TOKEN environment variable."""
    return value or os.environ.get("MEDSAM3D_TOKEN")
