"""The wire format: one JSON object per line each way.

Request: ``{"id": ANY, "cmd": NAME, ...fields}``. Reply: ``{"id": ANY, "ok": true, ...}`` or
``{"id": ANY, "ok": false, "error": "one line"}``; ``id`` is echoed (null when the request could not be read).
Coordinates are ``ijk`` (voxel indices), ``ras`` or ``lps`` (mm). An inline mask is the changed box's voxels as
uint8, C order over (i, j, k), zlib-compressed, base64-encoded.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any, Optional

import numpy as np

from ..errors import InputError

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024  # bytes: a request is a few hundred; a longer line is refused, not parsed

# cmd -> required fields with their types; optional fields are read where they are used
COMMANDS: dict[str, dict[str, type | tuple]] = {
    "hello": {},
    "load": {"path": str},
    "add_point": {"session": str, "object": str, "point": list},
    "add_box": {"session": str, "object": str, "box": list},
    "set_mask": {"session": str, "object": str, "path": str},
    "undo": {"session": str, "object": str},
    "reset": {"session": str, "object": str},
    "get_mask": {"session": str, "object": str},
    "close": {"session": str},
    "shutdown": {},
}


def parse(line: bytes) -> dict:
    """One request line -> its JSON object, checked for ``cmd`` and the command's required fields."""
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InputError("request must be a JSON object like {\"id\": 1, \"cmd\": \"hello\"}")
    cmd = request.get("cmd")
    if cmd not in COMMANDS:
        raise InputError(f"unknown cmd {cmd!r}; known: {', '.join(COMMANDS)}")
    for name, kind in COMMANDS[cmd].items():
        if name not in request:
            raise InputError(f"{cmd}: missing field {name!r}")
        if not isinstance(request[name], kind):
            raise InputError(f"{cmd}: field {name!r} must be a {_type_name(kind)}")
    return request


def numbers(request: dict, name: str, count: int) -> list[float]:
    values = request[name]
    if (len(values) != count or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            or not np.all(np.isfinite(values))):
        raise InputError(f"{request['cmd']}: {name} must be {count} finite numbers")
    return [float(v) for v in values]


def option(request: dict, name: str, kind: type, default: Any) -> Any:
    value = request.get(name, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InputError(f"{request['cmd']}: field {name!r} must be a {_type_name(kind)}")
    return value


def ok(request_id: Any, **fields) -> dict:
    return {"id": request_id, "ok": True, **fields}


def error(request_id: Any, message: str) -> dict:
    return {"id": request_id, "ok": False, "error": " ".join(str(message).split())}


def encode_line(reply: dict) -> bytes:
    return (json.dumps(reply, separators=(",", ":")) + "\n").encode()


def pack_box(mask: np.ndarray, box: Optional[tuple]) -> dict:
    """The voxels of ``mask`` (I, J, K) inside ``box`` -> the inline form (``box`` null: nothing changed)."""
    if box is None:
        return {"box": None, "encoding": "zlib+base64", "data": ""}
    lo, hi = box
    part = np.ascontiguousarray(mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1], dtype=np.uint8)
    return {"box": [list(lo), list(hi)], "encoding": "zlib+base64",
            "data": base64.b64encode(zlib.compress(part.tobytes(), 1)).decode("ascii")}


def unpack_box(reply: dict) -> Optional[tuple[tuple, np.ndarray]]:
    """The inverse of ``pack_box`` (for clients and tests): -> ((lo, hi), uint8 array) or None."""
    if reply.get("box") is None:
        return None
    lo, hi = reply["box"]
    shape = tuple(h - l + 1 for l, h in zip(lo, hi))
    data = np.frombuffer(zlib.decompress(base64.b64decode(reply["data"])), np.uint8).reshape(shape)
    return (tuple(lo), tuple(hi)), data


def _type_name(kind) -> str:
    return {str: "string", list: "list", bool: "boolean", int: "integer", dict: "object"}.get(kind, str(kind))
