"""``Worker``: answers protocol requests from interactive ``Session`` objects; never raises, never exits on a
bad request.

The model is loaded once; each ``load`` opens a session (its own scan, objects and encoded windows) on it.
"""

from __future__ import annotations

import itertools
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from .. import __version__
from ..errors import InputError
from . import protocol
from .protocol import error, numbers, ok, option

MAX_SESSIONS = 8  # open scans per worker: each holds its volume and up to 16 encoded windows
HEAVY = {"load", "add_point", "add_box", "set_mask", "undo", "reset", "close"}  # commands that allocate volumes


class Worker:
    def __init__(self, make_segmenter: Callable[[], Any], describe: dict, log=None) -> None:
        """``make_segmenter()`` -> a Segmenter on the shared model (one per session); ``describe``: what
        ``hello`` reports about the model (name, licence, device, threads, weights_sha256)."""
        self.make_segmenter = make_segmenter
        self.describe = describe
        self.sessions: dict[str, Any] = {}
        self._ids = (f"s{n}" for n in itertools.count(1))
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.stopping = False
        self._allocated = False  # a heavy command ran since the last release_memory

    @classmethod
    def for_model(cls, model: str = "default", checkpoint: Optional[str] = None, device: str = "cpu",
                  threads: Optional[int] = None, backend: str = "torch", incremental: bool = True) -> "Worker":
        """Load the model once; every session's Segmenter shares it."""
        from ..backends import open_backend
        from ..segmenter import Segmenter

        threads = int(threads) if threads else None
        shared, sha = open_backend(backend, model, checkpoint, device, threads)

        def make_segmenter():
            return Segmenter(model=shared, device=device, threads=threads, incremental=incremental)

        describe = {"model": shared.name, "weights": str(model), "weights_sha256": sha,
                    "licence": model_licence(model), "device": str(device), "backend": shared.kind,
                    "threads": threads, "incremental": incremental}
        return cls(make_segmenter, describe)

    # ------------------------------------------------------------------ entry points
    def handle_line(self, line: bytes) -> dict:
        """One raw request line -> its reply."""
        request_id = None
        try:
            request = protocol.parse(line)
            request_id = request.get("id")
            return self.handle(request)
        except InputError as exc:
            return error(request_id, str(exc))

    def handle(self, request: dict) -> dict:
        """One parsed request -> its reply; a bug in a handler is reported, not raised."""
        request_id = request.get("id")
        self._allocated |= request["cmd"] in HEAVY
        try:
            return ok(request_id, **getattr(self, "_" + request["cmd"])(request))
        except InputError as exc:
            return error(request_id, str(exc))
        except MemoryError:
            return error(request_id, "out of memory: close sessions or use a smaller scan")
        except Exception as exc:  # a bug: keep serving, say what failed, log the traceback for the report
            self.log(traceback.format_exc())
            return error(request_id, f"internal error in {request['cmd']}: {type(exc).__name__}: {exc}")

    def release_memory(self) -> None:
        """Give freed memory back to the system after a heavy command (called once its reply is sent).

        glibc keeps freed blocks for reuse, so a long session's RSS would follow the largest request it ever
        served (the volume-size arrays of a click that grew into many windows) rather than what it holds."""
        if self._allocated:
            self._allocated = False
            _malloc_trim()

    # ------------------------------------------------------------------ commands
    def _hello(self, request: dict) -> dict:
        return {"protocol": protocol.PROTOCOL_VERSION, "medsam3d": __version__, **self.describe,
                "sessions": len(self.sessions)}

    def _load(self, request: dict) -> dict:
        from ..session import Session

        path = Path(request["path"])
        if not path.exists():
            raise InputError(f"load: scan not found: {path}")
        if len(self.sessions) >= MAX_SESSIONS:
            raise InputError(f"load: {MAX_SESSIONS} sessions are open; close one first")
        modality = option(request, "modality", str, "auto")
        series = option(request, "series", str, "") or None
        session = Session(self.make_segmenter(), path, modality=modality, series_uid=series)
        name = next(self._ids)
        self.sessions[name] = session
        volume = session.volume
        return {"session": name, "shape": list(volume.shape), "spacing": volume.spacing.tolist(),
                "modality": session.segmenter.modality}

    def _add_point(self, request: dict) -> dict:
        session = self._session(request)
        change = session.add_point(request["object"], numbers(request, "point", 3),
                                   option(request, "positive", bool, True), self._frame(request))
        return _change(request["object"], change)

    def _add_box(self, request: dict) -> dict:
        session = self._session(request)
        change = session.add_box(request["object"], numbers(request, "box", 6), self._frame(request))
        return _change(request["object"], change)

    def _set_mask(self, request: dict) -> dict:
        from ..io import read_volume

        session = self._session(request)
        path = Path(request["path"])
        if not path.is_file():
            raise InputError(f"set_mask: mask not found: {path}")
        mask = read_volume(path)
        if not _same_grid(mask, session.volume):
            raise InputError(f"set_mask: {path.name} is not on the scan's grid (shape, spacing, origin, direction)")
        return _change(request["object"], session.set_mask(request["object"], mask.array))

    def _undo(self, request: dict) -> dict:
        return _change(request["object"], self._session(request).undo(request["object"]))

    def _reset(self, request: dict) -> dict:
        return _change(request["object"], self._session(request).reset(request["object"]))

    def _get_mask(self, request: dict) -> dict:
        session = self._session(request)
        name = request["object"]
        mask = session.mask(name)  # checks the object exists before anything is written
        inline = option(request, "inline", bool, False)
        path = option(request, "path", str, "")
        if inline == bool(path):
            raise InputError("get_mask: give either a path or inline: true")
        if inline:
            return {"object": name, "voxels": session.voxels(name), **protocol.pack_box(mask, session.take_changes(name))}
        from ..io import write_volume

        target = Path(path)
        if session.path is not None and target.exists() and target.resolve() == session.path.resolve():
            raise InputError(f"get_mask: {target} is the scan; medsam3d never overwrites an input")
        write_volume(session.volume.with_array(mask), target)
        return {"object": name, "path": str(target), "voxels": session.voxels(name),
                "box": _box(session.take_changes(name))}

    def _close(self, request: dict) -> dict:
        self._session(request)
        del self.sessions[request["session"]]
        return {"session": request["session"]}

    def _shutdown(self, request: dict) -> dict:
        self.stopping = True
        return {}

    # ------------------------------------------------------------------ helpers
    def _session(self, request: dict):
        name = request["session"]
        if name not in self.sessions:
            raise InputError(f"unknown session {name!r}; open: {', '.join(self.sessions) or 'none'}")
        return self.sessions[name]

    @staticmethod
    def _frame(request: dict) -> str:
        from ..prompts import check_frame

        return check_frame(option(request, "coords", str, "ijk"))


def _malloc_trim() -> None:
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
        try:
            _TRIM = getattr(ctypes.CDLL(name), "malloc_trim", False) if name else False
        except OSError:
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None  # glibc's malloc_trim, False where there is none (macOS, Windows, musl)


def model_licence(model: str) -> str:
    """What a client shows about the weights' terms (the default's card has the data sources' licences)."""
    from .. import store

    if model == "default":
        return "Apache-2.0 (medsam3d default; training data and their licences: medsam3d models info default)"
    try:
        return str(store.info(model).get("license", "see the model's source"))
    except InputError:
        return "unknown: a checkpoint given by path"


def _same_grid(a, b, tolerance: float = 1e-4) -> bool:
    """Same shape, spacing, origin and direction (to ``tolerance``, as files round them)."""
    import numpy as np

    return a.shape == b.shape and all(np.allclose(getattr(a, k), getattr(b, k), atol=tolerance)
                                      for k in ("spacing", "origin", "direction"))


def _box(box: Optional[tuple]) -> Optional[list]:
    return None if box is None else [list(box[0]), list(box[1])]


def _change(name: str, change) -> dict:
    return {"object": name, "changed": _box(change.box), "voxels": change.voxels, "iou": change.iou,
            "timings_ms": {k: round(v * 1000, 2) for k, v in change.timings.items()}}
