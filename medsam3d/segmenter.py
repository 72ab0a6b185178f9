"""``Segmenter``: a scan and prompts in, a mask on the scan's own grid out. The CLI, the evaluator and the
interactive sessions of ``medsam3d serve`` (``session.py``) are thin layers over it.

    seg = Segmenter(model="sam-med3d", checkpoint="sam_med3d_turbo.pth")
    seg.set_volume("scan.nii.gz")
    result = seg.predict(points=[(120, 88, 40)])          # voxel indices (ijk) of the scan
    result.mask                                           # Volume, uint8, the scan's exact geometry

Per prompt set: choose a 128^3 model-space window around the prompts (a refinement keeps the object's last one
while they fit), encode it once (cached), decode, bring the logits back onto the scan's grid. If the object touches the window's
border it grows into neighbouring windows centred on that border, seeded with the mask so far, until it stops
touching or ``max_windows`` is reached. A refinement decodes every window again, or, with ``incremental=True``
(``medsam3d serve``'s default), only the windows its newest click changes, keeping the others' answers
(``Result.memory``; ``_incremental_plan``).

The network runs behind a backend (``backends/``: PyTorch, or ONNX Runtime without torch); everything here is numpy.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

import numpy as np

from .backends import Backend, open_backend
from .boxes import bounding_box
from .errors import InputError
from .io import Volume, nifti_header, read_sitk, zeros_ijk
from .intensity import check_modality, guess_modality, normalise
from .preprocess import (INSIDE_LOGIT, OUTSIDE_LOGIT, Window, block_mean, crop_window, mask_to_window, paste_back,
                         paste_mask, positive_logits, upsample_logits)
from .prompts import Frame, Prompts, resolve

GROW_OVERLAP = 24  # window voxels shared by a window and the one grown from it
# Bumped by every change to how the Segmenter answers (windows, seeds, paste-back) that moves the held-out numbers:
# the promotion gate's fingerprint includes it, so a default recorded under another revision is measured again
# (`scripts/promote.py --remeasure` re-records the packaged one). 2: grown-window seeds ranked without a full sort.
# 3: a new object's window is centred on its clicks, never another object's encoded window within 8 voxels.
REVISION = 3
# encoded windows kept per scan: a new object gets its own window, so a long session on one scan would otherwise
# keep every encoding it ever made (medsam3d-tiny: 128 x 8^3 + 64 x 16^3 + 32 x 32^3 floats, 5.5 MB each)
MAX_CACHED_WINDOWS = 16
WINDOW_MARGIN = 16  # window voxels a prompt must keep from the border for the object's last window to be kept for it


@dataclass(frozen=True)
class WindowAnswer:
    """One window's part of an answer: what a further click on the object refines, or keeps as it is."""

    low_res: np.ndarray  # (L, L, L) the model's logits: the mask prompt of the window's next decode
    box: tuple  # (slice, slice, slice): where on the scan's grid ``inside`` lies
    # np.packbits of the thresholded mask in ``box`` (C order): kept by an incremental Segmenter only, the one
    # that reuses it; None otherwise
    inside: Optional[np.ndarray]
    iou: float  # the model's predicted IoU

    def mask(self) -> np.ndarray:
        shape = tuple(s.stop - s.start for s in self.box)
        return np.unpackbits(self.inside, count=int(np.prod(shape))).reshape(shape)

    def holds(self, ijk: np.ndarray) -> bool:
        """Whether this window's mask holds the scan voxel nearest to ``ijk`` (3,)."""
        index = np.rint(ijk).astype(int) - [s.start for s in self.box]
        shape = [s.stop - s.start for s in self.box]
        if ((index < 0) | (index >= shape)).any():
            return False
        flat = int(np.ravel_multi_index(tuple(index), shape))
        return bool(self.inside[flat // 8] >> (7 - flat % 8) & 1)


@dataclass
class Result:
    mask: Volume  # uint8 on the input grid
    probabilities: Optional[Volume]  # float32 in [0, 1] when asked for
    windows: list[Window]
    iou: list[float]
    timings: dict[str, float] = field(default_factory=dict)
    # each window's answer by window centre: what a further prompt on this object refines (``previous``)
    memory: dict = field(default_factory=dict)

    @property
    def low_res(self) -> dict:
        """The model's low-res logits (L, L, L) per window centre."""
        return {center: answer.low_res for center, answer in self.memory.items()}

    @property
    def volume_ml(self) -> float:
        return float(self.mask.array.sum() * np.prod(self.mask.spacing) / 1000.0)


class Segmenter:
    def __init__(self, model: Any = "default", checkpoint: Optional[str | Path] = None,
                 device: str = "cpu", threads: Optional[int] = None, max_windows: int = 8,
                 allow_random_weights: bool = False, backend: str = "torch", incremental: bool = False) -> None:
        """``model``: "default", a stored name, a registry name with ``checkpoint``, an ONNX bundle directory
        (``backend="onnxruntime"``), or a loaded model / backend object (shared between Segmenters)."""
        self.threads = int(threads) if threads else None  # applied around this Segmenter's own work only
        self.device = device
        self.model: Backend
        self.model, self.weights_sha256 = open_backend(backend, model, checkpoint, device, self.threads,
                                                       allow_random_weights)
        self.size = int(self.model.img_size)
        # a refinement re-decodes only the last answer's windows that hold its newest click and keeps the others
        # (``_predict_prompts``): an object spanning many windows stays click-fast
        self.incremental = incremental
        self.max_windows = max_windows
        self.volume: Optional[Volume] = None
        self._source = None  # SimpleITK image of the volume, for resampling
        self._fill = 0.0
        self.modality = "mr"  # intensity handling of the current volume (intensity.normalise)
        self._embeddings: dict[tuple, Any] = {}  # window centre -> encode's output
        self._memory: dict[tuple, WindowAnswer] = {}  # the last prediction's answer per window centre
        # called with a step's name around steps that can take seconds; returns a context manager (CLI: spinner)
        self.on_step: Callable[[str], ContextManager] = lambda name: nullcontext()

    # ------------------------------------------------------------------ volume
    def set_volume(self, volume: Volume | str | Path, series_uid: Optional[str] = None,
                   modality: str = "auto") -> Volume:
        """Load (or take) the scan; clears the embedding cache. ``modality`` "ct" or "mr" chooses the intensity
        handling (``intensity.normalise``); "auto" says CT when the scan holds air in Hounsfield units."""
        with self._own_threads():
            return self._set_volume(volume, series_uid, check_modality(modality))

    def _set_volume(self, volume: Volume | str | Path, series_uid: Optional[str], modality: str) -> Volume:
        if isinstance(volume, Volume):
            self.volume = volume
            self._source = volume.to_sitk()
        else:
            with self.on_step(f"reading {volume}"):
                self._source = read_sitk(volume, series_uid)
            self.volume = Volume.from_sitk(self._source, copy=False)  # self._source keeps the buffer alive
            self.volume.nifti_header = nifti_header(volume)
        self._fill = float(self.volume.array.min())
        self.modality = guess_modality(self.volume.array) if modality == "auto" else modality
        self._embeddings.clear()
        self._memory.clear()
        return self.volume

    def forget_previous(self) -> None:
        """Drop the previous low-res logits (a new object): the next ``refine`` starts without a mask prompt."""
        self._memory.clear()

    # ------------------------------------------------------------------ prediction
    def predict(self, points: Sequence[Sequence[float]] = (), labels: Optional[Sequence[int]] = None,
                box: Optional[Sequence[float]] = None, mask: Optional[np.ndarray] = None, frame: Frame = "ijk",
                probabilities: bool = False, refine: bool = False) -> Result:
        """Segment the object the prompts point at. ``points`` with ``labels`` (1 positive, 0 negative, default
        all positive); ``box`` as two corners (6 numbers); ``mask`` a previous mask on the volume's grid;
        ``refine`` feeds the previous low-res logits of the same window back as the mask prompt."""
        if self.volume is None:
            raise InputError("no volume set: call set_volume first")
        labels = [1] * len(points) if labels is None else list(labels)
        if len(labels) != len(points):
            raise InputError(f"{len(points)} points but {len(labels)} labels")
        if set(labels) - {0, 1}:
            raise InputError(f"labels must be 1 (positive) or 0 (negative), got {sorted(set(labels))}")
        pos = [p for p, lab in zip(points, labels) if lab == 1]
        neg = [p for p, lab in zip(points, labels) if lab == 0]
        prompts = resolve(self.volume, pos, neg, box, mask, frame)
        if labels:  # resolve lists the positives first: where the last click given went
            prompts.newest = len(pos) - 1 if labels[-1] == 1 else len(labels) - 1
        return self.predict_prompts(prompts, probabilities, refine)

    def predict_prompts(self, prompts: Prompts, probabilities: bool = False, refine: bool = False,
                        previous: Optional[dict] = None) -> Result:
        """``previous``: the ``Result.memory`` of the object's last answer, for a session that keeps several
        objects (``session.Session``); without it, ``refine`` uses this Segmenter's last prediction."""
        if previous is not None:
            self._memory = previous  # rebound below, never modified: the caller's copy stays as it was
        with self._own_threads():
            return self._predict_prompts(prompts, probabilities, refine)

    @contextmanager
    def _own_threads(self):
        """This Segmenter's thread count for its backend and SimpleITK while it works, the process's before and
        after."""
        if not self.threads:
            yield
            return
        import SimpleITK as sitk

        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.threads)
        try:
            with self.model.using_threads(self.threads):
                yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)

    def _predict_prompts(self, prompts: Prompts, probabilities: bool, refine: bool) -> Result:
        timings = {"encode": 0.0, "decode": 0.0, "resample": 0.0}
        plan = self._incremental_plan(prompts) if refine and self.incremental and not probabilities else None
        kept, planned = plan if plan is not None else ({}, self._plan_windows(prompts, refine))
        # each planned window starts from the last prediction's logits there, or, where the clicks have moved on
        # to a new window, from the last prediction carried over into it
        previous = [(self._memory[w.center_lps].low_res if w.center_lps in self._memory
                     else self._carried_over(w)) if refine else None for w in planned]
        self._memory = dict(kept)  # from now on: this prediction's windows only
        # (box, logits there (probabilities only, else None), logits > 0)
        pieces: list[tuple[tuple[slice, slice, slice], Optional[np.ndarray], np.ndarray]] = []
        windows = [Window(c, self.size) for c in kept]
        # (window, prior mask so far for a grown window, previous logits for a planned one)
        queue: list[tuple[Window, Optional[np.ndarray], Optional[np.ndarray]]] = [
            (w, None, prev) for w, prev in zip(planned, previous)]
        while queue and len(windows) < max(self.max_windows, len(planned) + len(kept)):
            window, prior, prev = queue.pop(0)
            low_res, iou = self._predict_window(window, prompts, prior, prev, timings)
            t0 = time.perf_counter()
            offset, block, box, logits, inside = self._paste(window, low_res, probabilities)
            pieces.append((box, logits, inside))
            self._memory[window.center_lps] = WindowAnswer(low_res, box,
                                                           np.packbits(inside) if self.incremental else None, iou)
            timings["resample"] += time.perf_counter() - t0
            windows.append(window)
            for grown, seed in self._growth(window, low_res, offset, block):
                if all(np.linalg.norm(np.subtract(grown.center_lps, w.center_lps)) > self.size * 0.375 *
                       grown.spacing for w in windows + [q[0] for q in queue]):
                    queue.append((grown, seed, None))
        return self._assemble(pieces, kept, windows, probabilities, timings)

    def _incremental_plan(self, prompts: Prompts) -> Optional[tuple[dict[tuple, WindowAnswer], list[Window]]]:
        """For an incremental refinement: the last answer's windows kept as they are, and the windows to decode
        again for its newest click; None (decode as usual) for anything but a click refining an incremental answer,
        and when every window would be decoded again anyway (an object in one window: the usual plan moves the
        window when the clicks near its border).

        A positive click adds to the object: only the window that holds it most centrally is decoded again (the
        answer is the union of the windows'); one outside every window gets a new window of its own, started from
        the answer so far (``_carried_over``). A negative click must take its region out of every window whose mask
        has it, so each of those is decoded again."""
        if not len(prompts.points) or prompts.box is not None or prompts.mask is not None or not self._memory:
            return None
        if any(answer.inside is None for answer in self._memory.values()):
            return None  # an answer of a Segmenter that was not incremental: nothing to keep
        click = prompts.points[prompts.newest]  # (3,) ijk
        newest = self.volume.ijk_to_lps(click[None])  # (1, 3) LPS
        windows = [Window(c, self.size) for c in self._memory]
        holding = [w for w in windows if w.contains(newest)]
        if prompts.labels[prompts.newest] == 1 and holding:
            redo = [min(holding, key=lambda w: np.abs(w.lps_to_voxel(newest[0]) - (self.size - 1) / 2).max())]
        elif prompts.labels[prompts.newest] == 1:
            redo = [self._window_around(newest[0], newest, refine=False)]
        else:  # the windows whose mask has the clicked voxel
            voxel = np.clip(np.rint(click), 0, np.array(self.volume.shape) - 1)
            having = [w for w in windows if self._memory[w.center_lps].holds(voxel)]
            if any(w not in holding for w in having):
                return None  # a window has it in the rim its click test leaves out: decode as usual
            redo = having
        kept = {c: answer for c, answer in self._memory.items() if c not in {w.center_lps for w in redo}}
        return (kept, redo) if kept and redo else None

    # ------------------------------------------------------------------ steps
    def _paste(self, window: Window, low_res: np.ndarray, probabilities: bool) -> tuple:
        """One window's answer onto the scan's grid -> (offset, block, box, logits, inside).

        ``block``: the window's logits (window space) from window voxel ``offset`` on: all of them for
        probabilities, else the block around the voxels > 0, which is all a mask needs (None: no voxel > 0).
        ``box``: where on the scan's grid; ``inside``: the mask there (``paste_mask``, so the same with or without
        probabilities); ``logits``: the logits there, for probabilities only (else None)."""
        if probabilities:
            offset, block = np.zeros(3, dtype=int), upsample_logits(low_res, self.size)
        else:
            offset, block = positive_logits(low_res, self.size)
        if block is None:
            return offset, None, tuple(slice(0, 0) for _ in range(3)), None, np.zeros((0, 0, 0), dtype=bool)
        box, inside = paste_mask(block, window, self.volume, offset=offset)
        logits = paste_back(block, window, self.volume, offset=offset)[1] if probabilities else None
        return offset, block, box, logits, inside

    def _plan_windows(self, prompts: Prompts, refine: bool) -> list[Window]:
        """The windows the prompts are decoded in: one when they fit in one, else one per group of clicks.

        Clicks can span more than a window (both ends of a long muscle or vessel, or a corrective click far
        along one). Then each click gets a window around it, unless a window already planned holds it: a
        refinement starts from its newest click (the correction), a new object from its positive clicks.
        Each window is decoded with the clicks inside it; growth then joins them into one mask."""
        first = self._choose_window(prompts, refine)
        if not len(prompts.points) or prompts.box is not None or prompts.mask is not None:
            return [first]
        every_point = self.volume.ijk_to_lps(prompts.points)
        if first.contains(every_point):
            return [first]
        if refine:
            order = list(range(len(every_point)))[::-1]
        else:  # a negative click alone in a window has nothing to subtract from
            order = [i for i in range(len(every_point)) if prompts.labels[i] == 1]
        planned: list[Window] = []
        for i in order:
            if not any(w.contains(every_point[i:i + 1], margin=WINDOW_MARGIN) for w in planned):
                planned.append(self._window_around(every_point[i], every_point[i:i + 1], refine))
        return planned or [first]

    def _choose_window(self, prompts: Prompts, refine: bool = False) -> Window:
        """The object's last window if it holds every prompt with room around it, else one centred on the positive
        prompts (training placed objects near the centre, and answers depend on it)."""
        volume = self.volume
        if len(prompts.points) and (prompts.labels == 1).any():
            anchor = prompts.points[prompts.labels == 1]
        elif prompts.box is not None:
            anchor = prompts.box
        elif prompts.mask is not None:
            anchor = np.argwhere(prompts.mask).mean(0, keepdims=True)
        else:
            anchor = prompts.points
        every_prompt = volume.ijk_to_lps(np.concatenate([prompts.points, anchor]))
        return self._window_around(volume.ijk_to_lps(np.asarray(anchor).mean(0)), every_prompt, refine)

    def _window_around(self, center: np.ndarray, every_prompt: np.ndarray, refine: bool) -> Window:
        """A window for prompts centred at ``center`` (LPS mm): for a refinement, one of the object's last windows
        that holds them all with room around it; else a new one there (its encoding is re-used if that very
        window was encoded before). Windows encoded for other objects are not considered, so an answer depends on
        the object's own prompts only, not on what else the session segmented first."""
        for candidate in (list(self._memory) if refine else []):  # the previous prediction's windows, first first
            window = Window(candidate, self.size)
            if window.contains(every_prompt, margin=WINDOW_MARGIN):
                return window
        spacing = Window.spacing
        # snap to the model-space lattice so cached and grown windows line up voxel for voxel
        snapped = np.round(center / spacing) * spacing
        return Window(tuple(float(c) for c in snapped), self.size, spacing)

    def _carried_over(self, window: Window) -> Optional[np.ndarray]:
        """The last prediction's logits, from every window it used, seen from ``window`` -> (L, L, L) low-res
        logits (L: the model's output grid), or None when none of it falls inside.

        A refinement whose clicks no longer fit the last window gets a new one; decoded there without a mask
        prompt, the model loses the object it had. Every window sits on the same 1.5 mm lattice, so the shift
        between two windows is a whole number of voxels."""
        size = self.size
        carried = np.full((size,) * 3, OUTSIDE_LOGIT, dtype=np.float32)  # window voxels (S, S, S)
        for center, answer in self._memory.items():
            offset = np.rint(Window(center, size, window.spacing).lps_to_voxel(window.origin_lps)).astype(int)
            if (np.abs(offset) >= size).any():
                continue
            src, dst = _overlap(offset, size)  # upsample only the old window's voxels that fall in this one
            np.maximum(carried[dst], upsample_logits(answer.low_res, size, [s.start for s in src],
                                                     [s.stop for s in src]), out=carried[dst])
        if not (carried > 0).any():
            return None
        return block_mean(carried, self.model.low_res_size)

    def _embedding(self, window: Window, timings: dict) -> Any:
        key = window.center_lps
        if key not in self._embeddings:
            t0 = time.perf_counter()
            crop = normalise(crop_window(self._source, window, self._fill), self.modality)
            with self.on_step("encoding the window"):
                self._embeddings[key] = self.model.encode(crop)
            while len(self._embeddings) > MAX_CACHED_WINDOWS:  # drop the oldest that no refinement needs
                stale = next((k for k in self._embeddings if k != key and k not in self._memory), None)
                if stale is None:
                    break
                del self._embeddings[stale]
            timings["encode"] += time.perf_counter() - t0
        return self._embeddings[key]

    def _predict_window(self, window: Window, prompts: Prompts, prior: Optional[np.ndarray],
                        previous: Optional[np.ndarray], timings: dict) -> tuple[np.ndarray, float]:
        """Decode one window -> the low-res logits (L, L, L) and the predicted IoU."""
        features = self._embedding(window, timings)
        t0 = time.perf_counter()
        inputs, multimask = self._decode_inputs(window, prompts, prior, previous)
        low_res, score = self.model.decode(features, multimask=multimask, **inputs)  # (L, L, L), float
        timings["decode"] += time.perf_counter() - t0
        return low_res, score

    def _decode_inputs(self, window: Window, prompts: Prompts, prior: Optional[np.ndarray],
                       previous: Optional[np.ndarray]) -> tuple[dict[str, Optional[np.ndarray]], bool]:
        """What ``window`` is decoded with: the backend's prompt arguments (points, labels, box, mask_input), and
        whether to ask for the multimask outputs.

        ``prior``: for a window grown from another, the mask so far as (S, S, S) logits in this window: it adds seed
        clicks and is the mask prompt, and the box is left out. ``previous``: for a refinement, the last
        prediction's (L, L, L) logits here, the mask prompt unless there is a prior or a mask prompt."""
        points, labels = self._points_in_window(window, prompts, prior)
        inputs = {"points": points if len(points) else None, "labels": labels if len(points) else None,
                  "box": self._box_in_window(window, prompts.box) if prompts.box is not None and prior is None
                  else None,
                  "mask_input": self._mask_prompt(window, prompts, prior, previous)}
        if all(value is None for value in inputs.values()):
            raise InputError("no prompt falls inside the model window; put the prompts closer together")
        # one positive click and nothing else is ambiguous (a vertebra or the spine?); the model says what it does
        lone_click = (inputs["box"] is None and inputs["mask_input"] is None and len(points) == 1
                      and len(prompts.points) == 1 and bool(prompts.labels[0] == 1))
        return inputs, self.model.multimask_for(lone_click)

    def _points_in_window(self, window: Window, prompts: Prompts,
                          prior: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The clicks inside ``window`` -> window voxel coordinates (N, 3) and labels (N,); a grown window adds seed
        clicks deep inside the mask so far (``prior``)."""
        volume = self.volume
        pts = window.lps_to_voxel(volume.ijk_to_lps(prompts.points)) if len(prompts.points) else np.zeros((0, 3))
        inside = ((pts >= 0) & (pts <= self.size - 1)).all(1)
        pts, labels = pts[inside], prompts.labels[inside]
        if prior is not None:
            seeds = _interior_points(prior > 0, 2)
            pts = np.concatenate([pts, seeds])
            labels = np.concatenate([labels, np.ones(len(seeds), dtype=np.int64)])
        return pts, labels

    def _box_in_window(self, window: Window, box: np.ndarray) -> np.ndarray:
        """A (2, 3) ijk box -> (6,) window corners (a0, b0, c0, a1, b1, c1): the box of its 8 corners in window
        voxels (the axes need not line up), clipped to the window."""
        corners = np.array([[box[a][0], box[b][1], box[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        inside = np.clip(window.lps_to_voxel(self.volume.ijk_to_lps(corners)), 0, self.size - 1)  # (8, 3)
        return np.concatenate([inside.min(0), inside.max(0)]).astype(np.float32)

    def _mask_prompt(self, window: Window, prompts: Prompts, prior: Optional[np.ndarray],
                     previous: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """-> (L, L, L) mask-prompt logits, first of: a grown window's mask so far, the user's mask (fraction
        covered 0..1 -> logits -10..10), a refinement's previous logits; None without any."""
        if prior is not None:
            return block_mean(prior, self.model.low_res_size)
        if prompts.mask is not None:
            fraction = mask_to_window(prompts.mask, self.volume, window)
            return block_mean((fraction - 0.5) * INSIDE_LOGIT, self.model.low_res_size)
        return previous

    def _growth(self, window: Window, low_res: np.ndarray, start: np.ndarray,
                block: Optional[np.ndarray]) -> list[tuple[Window, np.ndarray]]:
        """Windows to grow into: one per face where the object touches the border (and the scan continues).

        ``block``: the window's logits from window voxel ``start`` on, holding every voxel > 0 (None: none);
        ``low_res``: the whole window's, for the grown windows' priors."""
        grown = []
        if block is None:
            return grown
        inside = block > 0
        step = self.size - GROW_OVERLAP
        logits = None  # the whole window's logits, upsampled once if the object touches a face
        for axis in range(3):
            for side, index in ((-1, 0), (1, self.size - 1)):
                if not start[axis] <= index < start[axis] + block.shape[axis]:
                    continue  # no voxel > 0 reaches this face
                face = np.take(inside, index - start[axis], axis=axis)
                if face.sum() < 4:
                    continue
                offset = np.zeros(3, dtype=int)
                # centre the new window on the border region in the other two axes
                other = [a for a in range(3) if a != axis]
                centroid = (np.argwhere(face) + start[other]).mean(0)  # window voxels
                for a, c in zip(other, centroid):
                    offset[a] = int(round(c - (self.size - 1) / 2))
                offset[axis] = side * step
                new_center = window.voxel_to_lps(np.full(3, (self.size - 1) / 2) + offset)
                candidate = Window(tuple(float(c) for c in new_center), self.size, window.spacing)
                if not self._overlaps_volume(candidate):
                    continue
                if logits is None:
                    logits = upsample_logits(low_res, self.size)
                grown.append((candidate, _shift(logits, offset, fill=OUTSIDE_LOGIT)))
        return grown

    def _overlaps_volume(self, window: Window) -> bool:
        box = window.footprint(self.volume)
        return all(s.stop - s.start > 0 for s in box)

    def _assemble(self, pieces, kept: dict, windows, probabilities: bool, timings) -> Result:
        """The new pieces (box, logits, logits > 0) and the kept windows' masks -> the answer on the scan's grid."""
        volume = self.volume
        mask = zeros_ijk(volume.shape, np.uint8)
        prob = zeros_ijk(volume.shape, np.float32) if probabilities else None
        for box, logits, inside in pieces:
            if inside.size == 0:
                continue
            mask[box] |= inside
            if prob is not None:
                np.maximum(prob[box], 1.0 / (1.0 + np.exp(-logits)), out=prob[box])
        for answer in kept.values():
            mask[answer.box] |= answer.mask()
        ious = [self._memory[w.center_lps].iou for w in windows]
        return Result(volume.with_array(mask), volume.with_array(prob) if prob is not None else None, windows,
                      ious, timings, dict(self._memory))


def _shift(array: np.ndarray, offset: np.ndarray, fill: float) -> np.ndarray:
    """Window-space map seen from a window whose voxel 0 sits at ``offset`` of this one's."""
    out = np.full_like(array, fill)
    src, dst = _overlap(offset, array.shape[0])
    out[dst] = array[src]
    return out


def _overlap(offset: np.ndarray, n: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Two n^3 windows, the second's voxel 0 at ``offset`` of the first's -> (the first's voxels they share, where
    those fall in the second)."""
    src = tuple(slice(int(max(o, 0)), int(n + min(o, 0))) for o in offset)
    dst = tuple(slice(int(max(-o, 0)), int(n - max(o, 0))) for o in offset)
    return src, dst


def _interior_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` voxels deepest inside ``mask`` (farthest from its boundary), deepest first; among equally
    deep voxels, the lowest in C order (the seeds must not depend on how a sort orders ties).

    The distances are computed in the mask's bounding box grown by one voxel, which holds every voxel's nearest
    background voxel (any voxel beyond is farther), so they equal the whole array's. Only the voxels at least as
    deep as the ``count``-th deepest are ranked: a full sort of a window's 2M distances took ~0.4 s a window."""
    # imported here: about 0.4 s of start-up (python -X importtime) that a one-window job never needs
    from scipy import ndimage

    if not mask.any():
        return np.zeros((0, 3))
    box = bounding_box(mask, margin=1)
    depth = ndimage.distance_transform_edt(mask[box]).reshape(-1)  # the box's voxels, C order
    count = min(count, depth.size)
    threshold = np.partition(depth, depth.size - count)[depth.size - count]
    candidates = np.flatnonzero(depth >= threshold)
    voxels = np.stack(np.unravel_index(candidates, mask[box].shape), 1) + [s.start for s in box]  # (n, 3)
    order = np.lexsort((np.ravel_multi_index(voxels.T, mask.shape), -depth[candidates]))[:count]
    return voxels[order].astype(np.float64)
