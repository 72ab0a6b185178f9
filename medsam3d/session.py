"""Interactive sessions: one scan, any number of objects, each with its own prompts, memory and undo.

    session = Session(Segmenter(), "ct.nii.gz")
    change = session.add_point("liver", (91, 52, 18))          # voxel indices (ijk), positive
    change = session.add_point("liver", (80, 60, 18), positive=False)
    session.mask("liver")                                        # uint8 (I, J, K) on the scan's grid
    session.undo("liver")

Every object keeps the low-res logits of its last prediction (``memory``), so a click refines that object's
answer, whatever other objects were clicked in between; the encoded windows are the Segmenter's and shared by
all objects, so a click in an encoded window costs only the decoder and the paste-back. Each change reports the
box of voxels it changed, so a client (the Slicer module) updates only that part of its copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .boxes import bounding_box
from .errors import InputError
from .io import Volume
from .prompts import Frame, Prompts, to_ijk

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (lo, hi) voxel indices, both inclusive
Region = tuple[slice, slice, slice]  # where an object's mask can be non-zero: (I, J, K) index ranges

EXACT_UNDO = 8  # undo steps that keep the model's memory too (1-2 MB each); older ones keep the mask only


@dataclass(frozen=True)
class ObjectState:
    """One object's prompts and last answer; immutable, so undo is a stack of these."""

    points: tuple = ()  # ((i, j, k), ...) continuous voxel indices
    labels: tuple = ()  # (1 | 0, ...)
    box: Optional[tuple] = None  # ((i0, j0, k0), (i1, j1, k1))
    mask_prompt: Optional[np.ndarray] = None  # (I, J, K) bool from set_mask, used until the next click answers
    memory: Optional[dict] = None  # the Segmenter's answer per window of the last prediction (Result.memory)
    mask: Optional[np.ndarray] = None  # (I, J, K) uint8, the current answer (None: empty)
    region: Optional[Region] = None  # the mask is zero outside this box
    voxels: int = 0  # the mask's voxel count


@dataclass
class Change:
    """What a request did to an object: the box of voxels that changed (None: nothing) and the mask's size."""

    box: Optional[Box]
    voxels: int
    iou: list[float] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Saved:
    """A history entry: the state before a change, without its full-size mask. That mask differed from the one after
    the change only inside ``box``, so only those voxels are kept (bit-packed); undo, newest entry first, puts them
    back into the mask after the change, which is then the current one. A click on a large organ in a fine scan
    changes a few windows' worth of voxels, far fewer than the object's region holds."""

    state: ObjectState  # its mask (and mask prompt) left out when ``packed`` holds the mask
    box: Optional[Box] = None  # where the change touched the mask (None: nowhere)
    packed: Optional[np.ndarray] = None  # np.packbits of mask[box]; None: the mask was empty


@dataclass
class _Object:
    state: ObjectState = field(default_factory=ObjectState)
    history: list[_Saved] = field(default_factory=list)
    unsent: Optional[Box] = None  # voxels changed since the last ``take_changes``


class Session:
    """One scan and its objects, over a ``Segmenter`` (which owns the model and the encoded windows)."""

    def __init__(self, segmenter, volume: Volume | str | Path | None = None, modality: str = "auto",
                 series_uid: Optional[str] = None, max_undo: int = 50) -> None:
        """``volume``: the scan (read here), or None for the one the Segmenter holds already."""
        self.segmenter = segmenter
        self.path = None if volume is None or isinstance(volume, Volume) else Path(volume)
        if volume is None and segmenter.volume is None:
            raise InputError("no scan: give one, or set the Segmenter's first")
        self.volume = segmenter.volume if volume is None else segmenter.set_volume(volume, series_uid, modality)
        self.max_undo = max_undo
        self.objects: dict[str, _Object] = {}

    # ------------------------------------------------------------------ prompts
    def add_point(self, name: str, xyz: Sequence[float], positive: bool = True, frame: Frame = "ijk") -> Change:
        ijk = to_ijk(self.volume, xyz, frame, "point" if positive else "negative point")
        state = self.objects[name].state if name in self.objects else ObjectState()
        labels = state.labels + (1 if positive else 0,)
        if 1 not in labels and state.box is None and state.mask_prompt is None and state.mask is None:
            raise InputError("the first click on an object must be positive (or give a box or a mask first)")
        return self._predict(name, replace(state, points=state.points + (tuple(ijk),), labels=labels))

    def add_box(self, name: str, corners: Sequence[float], frame: Frame = "ijk") -> Change:
        corners = np.asarray(corners, dtype=np.float64).reshape(2, 3)
        ijk = np.stack([to_ijk(self.volume, c, frame, "box corner") for c in corners])
        lo, hi = ijk.min(0), ijk.max(0)
        if (hi - lo < 1).any():
            raise InputError("box has zero size along an axis")
        state = self._object(name).state
        return self._predict(name, replace(state, box=(tuple(lo), tuple(hi))))

    def set_mask(self, name: str, mask: np.ndarray) -> Change:
        """Replace the object's answer by ``mask`` (an edited segment); the next click refines it."""
        mask = np.asarray(mask)
        if mask.shape != self.volume.shape:
            raise InputError(f"mask has shape {mask.shape}, the scan {self.volume.shape}")
        new = (mask > 0).astype(np.uint8)
        box = changed_box(None, new)
        region = None if box is None else tuple(slice(a, b + 1) for a, b in zip(*box))
        obj = self._object(name)
        state = replace(obj.state, mask_prompt=new.astype(bool) if box else None, memory=None,
                        mask=new if box else None, region=region)
        return self._commit(name, state, [], {})

    def undo(self, name: str) -> Change:
        obj = self._existing(name)
        if not obj.history:
            raise InputError(f"nothing to undo for object {name!r}")
        return self._commit(name, self._unpack(obj.history.pop(), obj.state), [], {}, remember=False)

    def reset(self, name: str) -> Change:
        """Forget the object's prompts and answer (undo can bring them back)."""
        self._existing(name)
        return self._commit(name, ObjectState(), [], {})

    def remove(self, name: str) -> None:
        self._existing(name)
        del self.objects[name]

    # ------------------------------------------------------------------ answers
    def mask(self, name: str) -> np.ndarray:
        """The object's mask, uint8 (I, J, K) on the scan's grid (zeros before any prompt)."""
        mask = self._existing(name).state.mask
        return mask if mask is not None else np.zeros(self.volume.shape, np.uint8)

    def voxels(self, name: str) -> int:
        """The object's mask's voxel count (kept with each change: no pass over the scan)."""
        return self._existing(name).state.voxels

    def take_changes(self, name: str) -> Optional[Box]:
        """The box of voxels changed since the last call (None: none), for a client that keeps a copy."""
        obj = self._existing(name)
        box, obj.unsent = obj.unsent, None
        return box

    # ------------------------------------------------------------------ internals
    def _object(self, name: str) -> _Object:
        if not isinstance(name, str) or not name:
            raise InputError("object must be a non-empty string")
        return self.objects.setdefault(name, _Object())

    def _existing(self, name: str) -> _Object:
        if name not in self.objects:
            raise InputError(f"unknown object {name!r}; known: {', '.join(self.objects) or 'none'}")
        return self.objects[name]

    def _predict(self, name: str, state: ObjectState) -> Change:
        prompts = Prompts(np.array(state.points, dtype=np.float64).reshape(-1, 3),
                          np.array(state.labels, dtype=np.int64),
                          None if state.box is None else np.array(state.box, dtype=np.float64),
                          state.mask_prompt if state.memory is None else None)
        refine = state.memory is not None  # a further prompt: the last answer's logits go back in
        result = self.segmenter.predict_prompts(prompts, refine=refine, previous=state.memory or {})
        # the windows' footprints bound the mask: diffs and undo copies look only there
        region = _enclosing([w.footprint(self.volume) for w in result.windows])
        new = replace(state, mask_prompt=None, memory=result.memory, mask=result.mask.array, region=region)
        return self._commit(name, new, result.iou, result.timings, touched=_touched(state.memory, result.memory))

    def _commit(self, name: str, state: ObjectState, iou: list[float], timings: dict,
                remember: bool = True, touched: Optional[Region] = None) -> Change:
        """Make ``state`` the object's. ``touched``: where its mask can differ from the current one (None:
        anywhere in either's region)."""
        obj = self._object(name)
        old = obj.state
        if old.mask is None or state.mask is None:
            touched = None
        box = changed_box(old.mask, state.mask, touched or bounding(old.region, state.region))
        if state.mask is None:
            voxels = 0
        elif touched is None:
            voxels = int(np.count_nonzero(state.mask[state.region]))
        else:  # a click on a large object changes a few of its windows: count there only
            voxels = old.voxels - int(np.count_nonzero(old.mask[touched])) + int(np.count_nonzero(state.mask[touched]))
        state = replace(state, voxels=voxels)
        if remember:
            obj.history = (obj.history + [self._pack(old, box)])[-self.max_undo:]
            if len(obj.history) > EXACT_UNDO:  # older steps undo to their mask, refined as a mask prompt
                stale = obj.history[-EXACT_UNDO - 1]
                obj.history[-EXACT_UNDO - 1] = replace(stale, state=replace(stale.state, memory=None))
        obj.state = state
        obj.unsent = union(obj.unsent, box)
        return Change(box, voxels, list(iou), dict(timings))

    @staticmethod
    def _pack(state: ObjectState, box: Optional[Box]) -> _Saved:
        """``state``, about to be replaced by a change that touched its mask inside ``box``, as a history entry."""
        if state.mask is None:
            return _Saved(state)
        packed = np.packbits(state.mask[_slices(box)]) if box is not None else np.zeros(0, np.uint8)
        return _Saved(replace(state, mask=None, mask_prompt=None), box, packed)

    def _unpack(self, saved: _Saved, current: ObjectState) -> ObjectState:
        """The state a history entry saved, from it and the ``current`` state (the one after its change)."""
        state = saved.state
        if saved.packed is None:
            return state
        mask = current.mask.copy() if current.mask is not None else np.zeros(self.volume.shape, np.uint8)
        if saved.box is not None:
            part = mask[_slices(saved.box)]
            part[...] = np.unpackbits(saved.packed, count=part.size).reshape(part.shape)
        # without its memory (an old step), the next click refines the mask itself
        prompt = mask.astype(bool) if state.memory is None else None
        return replace(state, mask=mask, mask_prompt=prompt)


def _touched(before: Optional[dict], after: dict) -> Optional[Region]:
    """Where the mask of the answer ``after`` can differ from that of ``before`` (each a ``Result.memory``): the
    boxes of the windows whose answers are not shared by both (an incremental refinement keeps the others'); None
    when nothing is shared. The mask is the union of its windows' masks, so outside those boxes it is the union of
    the same, kept windows' masks."""
    if not before:
        return None
    kept = {id(answer) for answer in after.values()} & {id(answer) for answer in before.values()}
    if not kept:
        return None
    boxes = [a.box for a in list(before.values()) + list(after.values())
             if id(a) not in kept and all(b.stop > b.start for b in a.box)]
    return _enclosing(boxes) if boxes else (slice(0, 0),) * 3


def _enclosing(regions: list[Region]) -> Region:
    """The smallest region holding them all (at least one)."""
    return functools.reduce(bounding, regions)


def _slices(box: Box) -> Region:
    return tuple(slice(a, b + 1) for a, b in zip(*box))


def changed_box(old: Optional[np.ndarray], new: Optional[np.ndarray],
                region: Optional[Region] = None) -> Optional[Box]:
    """Bounding box of the voxels that differ between two masks (None: a mask that is None is all zeros), looking
    only inside ``region`` when given (both masks are zero outside it)."""
    if old is None and new is None:
        return None
    region = region or (slice(None),) * 3
    a = old[region] if old is not None else 0
    b = new[region] if new is not None else 0
    diff = np.not_equal(a, b)
    if not diff.any():
        return None
    box = bounding_box(np.broadcast_to(diff, np.broadcast_shapes(np.shape(a), np.shape(b))))
    offset = [r.start or 0 for r in region]
    return (tuple(int(s.start + o) for s, o in zip(box, offset)),
            tuple(int(s.stop - 1 + o) for s, o in zip(box, offset)))


def bounding(a: Optional[Region], b: Optional[Region]) -> Optional[Region]:
    """The smallest region holding both (None: nothing)."""
    if a is None or b is None:
        return a or b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def union(a: Optional[Box], b: Optional[Box]) -> Optional[Box]:
    if a is None or b is None:
        return a or b
    return (tuple(map(min, a[0], b[0])), tuple(map(max, a[1], b[1])))
