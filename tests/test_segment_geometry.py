"""Geometry end to end: prompts in any frame hit the same voxels, masks overlay the object in every orientation
and format, and the written mask has the input's exact geometry. The model is a thresholding stand-in, so the
geometry is proven apart from learned weights."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3d.io import read_volume, write_volume
from medsam3d.segmenter import Segmenter

from helpers import GEOMETRIES, SPHERE_CENTER_LPS, ThresholdModel, dice, sphere_volume


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


def test_a_new_object_reuses_a_cached_window_only_near_its_centre_and_a_refinement_keeps_its_window():
    """A new click 60 mm (40 window voxels) off the centre of the cached window is inside it but gets its own
    window, as does one 20 mm off, one 6 mm off reuses it, and a refinement click 60 mm off stays in the window of
    the previous logits."""
    volume, model, seg, centre = _segmenter_on_a_large_scan()
    first = seg.predict(points=[centre])
    assert model.encode_calls == 1
    mm_per_voxel = volume.spacing  # RAS geometry: index axes are the model's axes
    near = centre + np.round(np.array([6.0, 0, 0]) / mm_per_voxel)
    far = centre + np.round(np.array([60.0, 0, 0]) / mm_per_voxel)
    assert first.windows[0].contains(volume.ijk_to_lps(far), margin=16)  # it would have been reused before
    seg.predict(points=[near])
    assert model.encode_calls == 1
    refined = seg.predict(points=[centre, far], labels=[1, 0], refine=True)
    assert model.encode_calls == 1 and refined.windows[0] == first.windows[0]
    seg.forget_previous()
    other = seg.predict(points=[far])
    assert model.encode_calls == 2 and other.windows[0] != first.windows[0]
    offset = other.windows[0].lps_to_voxel(volume.ijk_to_lps(far)) - 63.5
    assert np.abs(offset).max() <= 1.0  # centred on the click
    seg.forget_previous()
    mid = centre + np.round(np.array([20.0, 0, 0]) / mm_per_voxel)  # 13 window voxels: more than 8 off-centre
    assert seg.predict(points=[mid]).windows[0] not in (first.windows[0], other.windows[0])
    assert model.encode_calls == 3


@pytest.mark.parametrize("region", [(slice(50, 80), slice(40, 90), slice(60, 75)),  # inside the window
                                    (slice(0, 30), slice(90, 128), slice(60, 75))])  # touching two window faces
def test_paste_back_of_the_positive_region_only_gives_the_same_mask(region):
    """positive_only resamples only the window voxels around the positive logits, on an oblique scan."""
    from medsam3d.preprocess import Window, paste_back

    volume, _ = sphere_volume("oblique")
    window = Window(tuple(SPHERE_CENTER_LPS + [5.0, -3.0, 2.0]))
    rng = np.random.default_rng(0)
    logits = np.full((128, 128, 128), -3.0, dtype=np.float32)
    logits[region] = rng.normal(0.5, 1.0, logits[region].shape)
    full = np.zeros(volume.shape, bool)
    small = np.zeros(volume.shape, bool)
    box, values = paste_back(logits, window, volume)
    full[box] = values > 0
    box_small, values_small = paste_back(logits, window, volume, positive_only=True)
    small[box_small] = values_small > 0
    assert values_small.size < values.size / 4
    assert full.sum() > 1000
    np.testing.assert_array_equal(small, full)


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
