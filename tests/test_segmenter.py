"""The Segmenter (medsam3d.segmenter).

Geometry end to end: prompts in any frame hit the same voxels, masks overlay the object in every orientation and
format, and the written mask has the input's exact geometry; the model is a thresholding stand-in, so the geometry is
proven apart from learned weights. Windows: objects larger than one window grow into neighbours (a long rod clicked
at both ends gives one mask), the window cache is reused, bounded and kept for refinement, and a refinement that
moves carries the last answer along (S/2 logits too). Also: the modality it chooses, and which of several masks it
keeps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsam3d.errors import InputError
from medsam3d.io import read_volume, write_volume
from medsam3d.preprocess import Window
from medsam3d.segmenter import Segmenter

from helpers import (GEOMETRIES, ROD_ENDS, ROD_WINDOW, SPHERE_CENTER_LPS, ThresholdModel, dice, fine_model, long_rod,
                     open_read_out, sphere_volume)


@pytest.mark.parametrize("fmt", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_clicks_in_every_frame_segment_the_sphere(tmp_path, geometry, fmt):
    volume, truth = sphere_volume(geometry)
    scan = write_volume(volume, tmp_path / f"scan{fmt}")
    model = ThresholdModel()
    seg = Segmenter(model=model)
    loaded = seg.set_volume(scan)
    np.testing.assert_array_equal(loaded.array, volume.array)
    centre_ijk = loaded.lps_to_ijk(SPHERE_CENTER_LPS)
    clicks = {"ijk": centre_ijk, "ras": SPHERE_CENTER_LPS * [-1, -1, 1], "lps": SPHERE_CENTER_LPS}
    masks = {frame: seg.predict(points=[xyz], frame=frame).mask for frame, xyz in clicks.items()}
    assert model.encode_calls == 1  # the same window, encoded once, for all three clicks
    for frame, mask in masks.items():
        assert dice(mask.array, truth) >= 0.95, frame
        np.testing.assert_array_equal(mask.array, masks["ijk"].array)

    out = write_volume(masks["ras"], tmp_path / f"mask{fmt}")
    written = read_volume(out)
    assert written.shape == loaded.shape
    assert written.array.dtype == np.uint8
    np.testing.assert_array_equal(written.spacing, loaded.spacing)
    np.testing.assert_array_equal(written.origin, loaded.origin)
    np.testing.assert_array_equal(written.direction, loaded.direction)
    np.testing.assert_array_equal(written.array, masks["ras"].array)


def test_object_larger_than_a_window_grows_into_neighbours():
    # a 260 mm long bright slab: longer than one 192 mm window
    volume, _ = sphere_volume("lps", extent_mm=300.0, radius=1.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    lps = volume.ijk_to_lps(ijk.reshape(-1, 3)).reshape(*volume.shape, 3)
    rel = lps - SPHERE_CENTER_LPS
    truth = (np.abs(rel[..., 0]) <= 130) & (np.abs(rel[..., 1]) <= 25) & (np.abs(rel[..., 2]) <= 25)
    volume.array = np.where(truth, 100, 10).astype(np.int16)
    seg = Segmenter(model=ThresholdModel(), max_windows=6)
    seg.set_volume(volume)
    single = Segmenter(model=ThresholdModel(), max_windows=1)
    single.set_volume(volume)
    one = single.predict(points=[volume.lps_to_ijk(SPHERE_CENTER_LPS)])
    grown = seg.predict(points=[volume.lps_to_ijk(SPHERE_CENTER_LPS)])
    assert len(one.windows) == 1 and dice(one.mask.array, truth) < 0.85
    assert len(grown.windows) >= 2
    assert dice(grown.mask.array, truth) >= 0.95


def test_api_entry_point_and_refinement_reuse_the_cached_window():
    from medsam3d import Segmenter as PublicSegmenter

    volume, truth = sphere_volume("ras")
    model = ThresholdModel()
    seg = PublicSegmenter(model=model)
    seg.set_volume(volume)
    centre = volume.lps_to_ijk(SPHERE_CENTER_LPS)
    first = seg.predict(points=[centre])
    second = seg.predict(points=[centre, centre + [6, 0, 0]], labels=[1, 0], refine=True)
    assert model.encode_calls == 1 and model.decode_calls == 2
    assert second.windows == first.windows
    assert dice(second.mask.array, truth) >= 0.95


def _segmenter_on_a_large_scan():
    """A 260 mm RAS sphere volume behind a Segmenter with the threshold stand-in -> (volume, model, seg, centre)."""
    volume, _ = sphere_volume("ras", extent_mm=260.0)
    model = ThresholdModel()
    seg = Segmenter(model=model)
    seg.set_volume(volume)
    return volume, model, seg, volume.lps_to_ijk(SPHERE_CENTER_LPS)


def test_a_new_object_gets_a_window_on_its_click_and_a_refinement_keeps_its_window():
    """A new object's window is centred on its click, even 6 mm from another object's encoded window (the same
    window again re-uses its encoding), so an answer does not depend on what the session segmented before; a
    refinement click 60 mm off centre stays in the window of the previous logits."""
    volume, model, seg, centre = _segmenter_on_a_large_scan()
    first = seg.predict(points=[centre])
    assert model.encode_calls == 1
    mm_per_voxel = volume.spacing  # RAS geometry: index axes are the model's axes
    near = centre + np.round(np.array([6.0, 0, 0]) / mm_per_voxel)
    far = centre + np.round(np.array([60.0, 0, 0]) / mm_per_voxel)
    assert first.windows[0].contains(volume.ijk_to_lps(far), margin=16)
    seg.forget_previous()
    again = seg.predict(points=[centre])
    assert model.encode_calls == 1 and again.windows[0] == first.windows[0]  # the very same window: re-used
    refined = seg.predict(points=[centre, far], labels=[1, 0], refine=True)
    assert model.encode_calls == 1 and refined.windows[0] == first.windows[0]
    seg.forget_previous()
    nearby = seg.predict(points=[near])
    assert model.encode_calls == 2 and nearby.windows[0] != first.windows[0]
    offset = nearby.windows[0].lps_to_voxel(volume.ijk_to_lps(near)) - 63.5
    assert np.abs(offset).max() <= 1.0  # centred on the click
    fresh = Segmenter(model=ThresholdModel())
    fresh.set_volume(volume)
    np.testing.assert_array_equal(fresh.predict(points=[near]).mask.array, nearby.mask.array)


def test_the_window_cache_stays_bounded_over_many_objects_and_keeps_what_refinement_needs():
    from medsam3d.segmenter import MAX_CACHED_WINDOWS

    volume, model, seg, centre = _segmenter_on_a_large_scan()
    first = seg.predict(points=[centre])
    steps = [np.round(np.array([a, b, 0.0]) / volume.spacing) for a in range(-100, 101, 40)
             for b in range(-100, 101, 40)]  # 36 objects, every one 40 mm from its neighbours
    for step in steps:
        seg.predict(points=[centre + step])
    assert model.encode_calls > MAX_CACHED_WINDOWS
    assert len(seg._embeddings) <= MAX_CACHED_WINDOWS
    last = seg.predict(points=[centre + steps[-1], centre + steps[-1] + [2, 0, 0]], labels=[1, 0], refine=True)
    calls = model.encode_calls
    assert last.windows[0].center_lps in seg._embeddings and calls == model.encode_calls  # refinement: cached
    assert first.windows[0].center_lps not in seg._embeddings  # the oldest went first


def test_a_refinement_that_needs_a_new_window_carries_the_last_answer_into_it():
    """Clicks that no longer fit the last window move the refinement to a new one; there the decoder gets the last
    prediction, shifted into the new window, as its mask prompt (without it, many clicks gave a speck)."""
    volume, model, seg, centre = _segmenter_on_a_large_scan()
    seen = []
    decode = model.decode

    def spy(embedding, **kwargs):
        logits, iou = decode(embedding, **kwargs)
        seen.append((logits, kwargs.get("mask_input")))
        return logits, iou

    model.decode = spy
    first = seg.predict(points=[centre])
    far = centre + np.round(np.array([110.0, 0, 0]) / volume.spacing)
    assert not first.windows[0].contains(volume.ijk_to_lps(far), margin=16)
    seen.clear()
    refined = seg.predict(points=[centre, far], refine=True)
    old, new = first.windows[0], refined.windows[0]
    assert new != old
    own, carried = seen[0]  # the new window's first decode: the stand-in's own answer there, and the mask prompt
    assert carried is not None and carried.shape == own.shape == (1, 1, 32, 32, 32)
    # low-res voxel j of the new window covers its voxels 4j..4j+3; where all of them lie in the old window the
    # carried logits must say what the stand-in says from the new window, and nothing is carried from outside it
    offset = np.rint(old.lps_to_voxel(new.origin_lps)).astype(int)  # new window voxel 0 in old window voxels
    assert np.abs(offset).max() > 16
    lo = np.arange(32) * 4
    inside = [(lo + o >= 0) & (lo + 3 + o <= 127) for o in offset]
    outside = [(lo + 3 + o < 0) | (lo + o > 127) for o in offset]
    overlap = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    beyond = outside[0][:, None, None] | outside[1][None, :, None] | outside[2][None, None, :]
    own, carried = own[0, 0].numpy() > 0, carried[0, 0].numpy()
    assert own[overlap].sum() > 100  # the sphere is in the overlap
    assert ((carried > 0) == own)[overlap].mean() > 0.97
    assert (carried[beyond] <= 0).all()


def test_clicks_at_both_ends_of_a_long_rod_give_one_mask_holding_both():
    volume, rod = long_rod()
    seg = Segmenter(model=ThresholdModel(ROD_WINDOW), max_windows=2)
    seg.set_volume(volume)
    result = seg.predict(points=list(ROD_ENDS))  # used to fail: "no prompt falls inside the model window"
    mask = result.mask.array > 0
    assert all(mask[p] for p in ROD_ENDS)
    assert len(result.windows) == 2 and not (mask & ~rod).any()
    # a refinement with a click far along the rod from both: answered in a window around it, the ends kept
    middle = (20, 20, 200)
    refined = seg.predict(points=list(ROD_ENDS) + [middle], refine=True).mask.array > 0
    assert refined[middle] and all(refined[p] for p in ROD_ENDS)


@pytest.mark.parametrize("incremental", [False, True])
def test_incremental_refinement_redecodes_only_the_windows_holding_the_click(incremental):
    """A rod spanning several windows: with ``incremental`` a click re-decodes the window(s) holding it and keeps
    every other window's answer (and its voxels) as it was; without it every window is decoded again."""
    volume, rod = long_rod()
    model = ThresholdModel(ROD_WINDOW)
    seg = Segmenter(model=model, max_windows=8, incremental=incremental)
    seg.set_volume(volume)
    first = seg.predict(points=[ROD_ENDS[0]])
    assert len(first.windows) >= 3 and first.mask.array[rod].mean() > 0.5
    calls = model.decode_calls
    click = (20, 20, 20)  # near the first click: in the first window only
    second = seg.predict(points=[ROD_ENDS[0], click], refine=True)
    holding = [w for w in first.windows if w.contains(volume.ijk_to_lps(np.array([click])))]
    redone = model.decode_calls - calls
    if incremental:
        assert redone == len(holding) == 1
        assert {w.center_lps for w in second.windows} == {w.center_lps for w in first.windows}
        for center, answer in first.memory.items():
            if all(center != w.center_lps for w in holding):
                assert second.memory[center] is answer  # kept as it was
                assert (second.mask.array[answer.box] >= answer.mask()).all()
    else:
        assert redone == len(second.windows) >= 3
    assert second.mask.array[click] and not (second.mask.array.astype(bool) & ~rod).any()


def _recording_decoded_windows(seg: Segmenter) -> list:
    """Make ``seg`` record the centre of every window it decodes, in order."""
    decoded: list = []
    original = seg._predict_window
    seg._predict_window = lambda window, *args: decoded.append(window.center_lps) or original(window, *args)
    return decoded


@pytest.mark.parametrize("positive", [True, False])
def test_incremental_click_in_overlapping_windows(positive):
    """A click where two windows overlap: a positive one is decoded in the window that holds it most centrally
    only (it adds to a union of the windows' masks); a negative one in every window that holds it, as each may
    hold the region it takes out."""
    volume, rod = long_rod()
    seg = Segmenter(model=ThresholdModel(ROD_WINDOW), max_windows=8, incremental=True)
    seg.set_volume(volume)
    first = seg.predict(points=[ROD_ENDS[0]])
    lps = volume.ijk_to_lps(np.argwhere(rod))
    overlap = [n for n in range(0, len(lps), 97) if sum(w.contains(lps[n]) for w in first.windows) == 2]
    assert overlap, "the rod's windows overlap"
    click = tuple(int(v) for v in np.argwhere(rod)[overlap[len(overlap) // 2]])
    holding = [w for w in first.windows if w.contains(volume.ijk_to_lps(np.array([click])))]
    distance = [np.abs(w.lps_to_voxel(volume.ijk_to_lps(np.array(click))) - (ROD_WINDOW - 1) / 2).max()
                for w in holding]
    decoded = _recording_decoded_windows(seg)
    second = seg.predict(points=[ROD_ENDS[0], click], labels=[1, int(positive)], refine=True)
    if positive:
        assert decoded == [holding[int(np.argmin(distance))].center_lps]
    else:
        assert sorted(decoded) == sorted(w.center_lps for w in holding)
    for center, answer in first.memory.items():
        if center not in decoded:
            assert second.memory[center] is answer
    assert {w.center_lps for w in second.windows} == {w.center_lps for w in first.windows}


def test_incremental_click_outside_every_window_gets_a_window_of_its_own():
    """A click beyond the answer's windows is decoded in a new window around it, started from the answer so far;
    the other windows' answers are kept as they were (not planned and grown again from scratch)."""
    volume, rod = long_rod()
    seg = Segmenter(model=ThresholdModel(ROD_WINDOW), max_windows=2, incremental=True)
    seg.set_volume(volume)
    first = seg.predict(points=[ROD_ENDS[0]])
    assert len(first.windows) == 2
    far = (20, 20, 300)
    assert not any(w.contains(volume.ijk_to_lps(np.array([far]))) for w in first.windows)
    decoded = _recording_decoded_windows(seg)
    second = seg.predict(points=[ROD_ENDS[0], far], refine=True)
    assert len(decoded) == 1 and decoded[0] not in first.memory
    assert Window(decoded[0], ROD_WINDOW).contains(volume.ijk_to_lps(np.array([far])), margin=ROD_WINDOW / 2 - 2)
    assert all(second.memory[c] is answer for c, answer in first.memory.items())
    mask = second.mask.array.astype(bool)
    assert mask[far] and (mask >= first.mask.array.astype(bool)).all() and not (mask & ~rod).any()


def test_incremental_refinement_refines_the_click_given_last():
    """``predict`` lists positive clicks before negative ones; the refinement still answers the click given last
    (here a positive one far along the rod, after a negative one), not the last in that listing."""
    volume, rod = long_rod()
    seg = Segmenter(model=ThresholdModel(ROD_WINDOW), max_windows=8, incremental=True)
    seg.set_volume(volume)
    seg.predict(points=[ROD_ENDS[0]])
    seg.predict(points=[ROD_ENDS[0], (20, 20, 30)], labels=[1, 0], refine=True)
    far = (20, 20, 200)
    decoded = _recording_decoded_windows(seg)
    seg.predict(points=[ROD_ENDS[0], (20, 20, 30), far], labels=[1, 0, 1], refine=True)
    assert len(decoded) == 1 and Window(decoded[0], ROD_WINDOW).contains(volume.ijk_to_lps(np.array([far])))


def test_incremental_negative_click_in_a_windows_rim_decodes_every_window():
    """A window's mask covers the scan voxels up to half a window voxel beyond its last one, where its click test
    leaves the click out: a negative click there cannot be answered by that window alone, so every window is
    decoded again (the usual plan) rather than keeping the window that still holds the voxel."""
    volume, rod = long_rod()
    seg = Segmenter(model=ThresholdModel(ROD_WINDOW), max_windows=8, incremental=True)
    seg.set_volume(volume)
    first = seg.predict(points=[ROD_ENDS[0]])
    rim = None
    for k in range(10, 390):
        voxel = np.array([20.0, 20.0, k])
        lps = volume.ijk_to_lps(voxel[None])
        if any(a.holds(voxel) and not Window(c, ROD_WINDOW).contains(lps) for c, a in first.memory.items()):
            rim = voxel
            break
    assert rim is not None, "the rod's windows have a voxel in a rim"
    decoded = _recording_decoded_windows(seg)
    seg.predict(points=[ROD_ENDS[0], rim], labels=[1, 0], refine=True)
    assert set(decoded) >= set(first.memory)


def test_segmenter_chooses_and_reports_the_modality():
    volume, _ = sphere_volume("ras")
    seg = Segmenter(model=ThresholdModel(), device="cpu")
    seg.set_volume(volume)
    assert seg.modality == "mr"
    ct = volume.with_array(np.where(volume.array > 50, 40.0, -1000.0).astype(np.float32))  # sphere in air
    seg.set_volume(ct)
    assert seg.modality == "ct"
    seg.set_volume(ct, modality="mr")
    assert seg.modality == "mr"
    with pytest.raises(InputError, match="unknown modality 'pet'"):
        seg.set_volume(ct, modality="pet")


class _ThreeMaskModel:
    """Decoder stand-in offering three different masks with IoU scores 0.2, 0.9, 0.5 for a lone click."""

    name = "three-masks"
    is_trained = True

    def __init__(self) -> None:
        self.config = SimpleNamespace(img_size=64, box_prompts=False, first_click_multimask=True)
        self.multimask_calls: list[bool] = []

    def encode(self, image):
        return image

    def multimask_for(self, lone_click):  # PromptableModel3D's rule
        config = self.config
        return bool(getattr(config, "multimask_refine", False) or (lone_click and config.first_click_multimask))

    def decode(self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask_output=False,
               keep_best=False):  # keep_best ignored: the Segmenter must pick
        self.multimask_calls.append(multimask_output)
        low = torch.full((1, 3, 16, 16, 16), -10.0)
        low[0, 0, 6:10, 6:10, 6:10] = 10  # small
        low[0, 1, 4:12, 4:12, 4:12] = 10  # medium: the highest IoU score
        low[0, 2, 2:14, 2:14, 2:14] = 10  # large
        iou = torch.tensor([[0.2, 0.9, 0.5]])
        if not multimask_output:
            return low[:, :1], iou[:, :1]
        return low, iou


def test_segmenter_keeps_the_mask_with_the_highest_predicted_iou_for_a_lone_click():
    from medsam3d.io import Volume
    from medsam3d.segmenter import Segmenter

    image = np.random.default_rng(0).uniform(10, 100, (64, 64, 64)).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    model = _ThreeMaskModel()
    seg = Segmenter(model=model)
    seg.set_volume(volume, modality="mr")
    result = seg.predict(points=[[32, 32, 32]], labels=[1])
    assert model.multimask_calls == [True]
    assert result.iou == pytest.approx([0.9])
    # the medium cube: 8 low-res voxels = 32 full voxels a side, 1.5 mm voxels on both grids
    assert abs(int(result.mask.array.sum()) - 32**3) < 0.1 * 32**3
    seg.predict(points=[[32, 32, 32], [40, 40, 40]], labels=[1, 0], refine=True)
    assert model.multimask_calls[-1] is False  # more than one click: no ambiguity left to resolve


def test_segmenter_with_multimask_refine_keeps_the_best_scored_mask_at_every_click():
    from medsam3d.io import Volume
    from medsam3d.segmenter import Segmenter

    image = np.random.default_rng(0).uniform(10, 100, (64, 64, 64)).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    model = _ThreeMaskModel()
    model.config.multimask_refine = True
    seg = Segmenter(model=model)
    seg.set_volume(volume, modality="mr")
    seg.predict(points=[[32, 32, 32]], labels=[1])
    result = seg.predict(points=[[32, 32, 32], [40, 40, 40]], labels=[1, 0], refine=True)
    assert model.multimask_calls == [True, True]
    assert result.iou == pytest.approx([0.9])
    assert abs(int(result.mask.array.sum()) - 32**3) < 0.1 * 32**3  # the medium cube again, not token 0's small one
    seg.predict(box=[20, 20, 20, 44, 44, 44])
    assert model.multimask_calls[-1] is True  # a box too


def test_segmenter_refines_and_carries_s2_logits_across_windows():
    from medsam3d.io import Volume
    from medsam3d.segmenter import Segmenter

    model = fine_model(True)
    open_read_out(model)
    rng = np.random.default_rng(0)
    volume = Volume(rng.uniform(10, 100, (120, 64, 64)).astype(np.float32), (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    seg = Segmenter(model=model)
    seg.set_volume(volume, modality="mr")
    first = seg.predict(points=[[30, 32, 32]], labels=[1])
    assert first.mask.array.shape == volume.shape
    assert all(t.shape == (32, 32, 32) for t in first.low_res.values())
    # a second click far along axis 0 no longer fits the first window: the refinement moves, carrying the answer
    moved = seg.predict(points=[[30, 32, 32], [100, 32, 32]], labels=[1, 1], refine=True)
    assert moved.mask.array.shape == volume.shape
    assert all(t.shape == (32, 32, 32) for t in moved.low_res.values())
    # the carry shifts S/2 logits: a known blob, seen from a window 16 voxels (8 low-res voxels) along axis 0
    from medsam3d.preprocess import Window
    from medsam3d.segmenter import WindowAnswer

    old = Window(next(iter(moved.low_res)), seg.size)
    blob = np.full((32, 32, 32), -20.0, dtype=np.float32)
    blob[10:20, 12:20, 12:20] = 20.0
    seg._memory = {old.center_lps: WindowAnswer(blob, (slice(0, 0),) * 3, np.zeros(0, np.uint8), 1.0)}
    new = Window(tuple(old.voxel_to_lps(np.full(3, (seg.size - 1) / 2) + [16, 0, 0])), seg.size)
    carried = seg._carried_over(new)
    assert carried.shape == (32, 32, 32)
    assert (carried[3:11, 13:19, 13:19] > 0).all()
    inside = np.zeros((32, 32, 32), dtype=bool)
    inside[1:13, 11:21, 11:21] = True
    assert (carried[~inside] < 0).all()


def test_grown_window_seeds_are_the_whole_arrays_deepest_voxels():
    """Seeds for a grown window come from distances computed in the mask's box: the deepest voxels of the whole
    array's distance transform, deepest first, ties to the lowest C-order index."""
    from scipy import ndimage

    from medsam3d.segmenter import _interior_points

    rng = np.random.default_rng(0)
    for _ in range(100):
        shape = tuple(int(n) for n in rng.integers(5, 40, 3))
        mask = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=int(rng.integers(1, 4)))
        depth = ndimage.distance_transform_edt(mask).reshape(-1)
        flat = np.lexsort((np.arange(depth.size), -depth))[:2]  # deepest first, ties by index: the definition
        want = np.stack(np.unravel_index(flat, shape), 1) if mask.any() else np.zeros((0, 3))
        np.testing.assert_array_equal(_interior_points(mask, 2), want)
