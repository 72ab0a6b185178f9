"""The preview PNG: size, outlines where the mask is, radiological orientation for any direction matrix, window by
modality, colours, and nothing left by a failed write. (`segment --preview`: tests/integration/test_cli_preview.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from medsam3d import preview
from medsam3d.io import Volume
from medsam3d.preview import VIEWS, Canonical, display_window, plane, write_preview
from medsam3d.prompts import resolve

from helpers import SPHERE_CENTER_LPS, colour_mask, rotation, sphere_volume


def layout_of(volume: Volume, mask: np.ndarray):
    """The figure height and the three planes' pixel rectangles (left, top, width, height) write_preview uses."""
    orient = Canonical.of(volume)
    shape, spacing = orient.array(volume.array).shape, volume.spacing[list(orient.perm)]
    sizes = [(shape[v.cols] * spacing[v.cols], shape[v.rows] * spacing[v.rows]) for v in VIEWS]
    m = orient.array(mask)
    extent = preview.extent_slices(m, preview.MONTAGE)
    crop = preview.extent_crop(m, spacing) if extent else (0, shape[0] - 1, 0, shape[1] - 1)
    thumb = ((crop[1] - crop[0] + 1) * spacing[0], (crop[3] - crop[2] + 1) * spacing[1])
    height, panels, _ = preview.plan(sizes, len(extent), thumb)
    return height, [tuple(v * preview.DPI for v in box) for box in panels]


@pytest.mark.parametrize("geometry", ["ras", "oblique"])
def test_png_size_and_outline_where_the_mask_is(tmp_path, geometry):
    volume, inside = sphere_volume(geometry, extent_mm=100.0)
    centre = volume.lps_to_ijk(SPHERE_CENTER_LPS)
    prompts = resolve(volume, [centre.round()])
    out = write_preview(tmp_path / "p.png", volume, inside.astype(np.uint8), [prompts], "mr", "scan.nii.gz")
    png = imread(out)
    height, panels = layout_of(volume, inside)
    assert png.shape[:2] == (round(height * preview.DPI), preview.WIDTH_IN * preview.DPI)
    yellow = colour_mask(png, preview.COLOURS[0])
    # in the axial panel, the outline's centre is the sphere's, placed by its physical position: the patient's
    # right (small L) on the image's left, anterior (small P) at the top
    left, top, w, h = panels[0]
    rows, cols = np.nonzero(yellow[int(top):int(top + h), int(left):int(left + w)])
    assert len(rows) > 50
    lps = volume.ijk_to_lps(np.argwhere(np.ones(volume.shape, bool)))
    lo, hi = lps.min(0), lps.max(0)
    if geometry == "ras":  # exact grid: the sphere's position as a fraction of the image's extent in L and P
        expected = (SPHERE_CENTER_LPS[:2] - lo[:2]) / (hi[:2] - lo[:2])
        np.testing.assert_allclose([cols.mean() / w, rows.mean() / h], expected, atol=0.03)
    radius_px = (cols.max() - cols.min()) / 2
    assert abs(radius_px / w * 100.0 - 28.0) < 5.0  # the sphere's 28 mm radius in a ~100 mm wide panel
    assert not list(tmp_path.glob(".p.png*"))  # no temporary file left behind


def corner_volume(direction: np.ndarray, spacing=(1.0, 2.0, 3.0), shape=(20, 16, 12)) -> Volume:
    """A volume with a bright block in the patient's right-anterior-superior corner, by physical position."""
    volume = Volume(np.zeros(shape, np.int16), spacing, (0, 0, 0), direction)
    lps = volume.ijk_to_lps(np.argwhere(np.ones(shape, bool))).reshape(*shape, 3)
    lo, hi = lps.reshape(-1, 3).min(0), lps.reshape(-1, 3).max(0)
    frac = (lps - lo) / (hi - lo)  # 0..1 along L, P, S
    volume.array[(frac[..., 0] < 0.3) & (frac[..., 1] < 0.3) & (frac[..., 2] > 0.7)] = 100
    return volume


@pytest.mark.parametrize("direction", [
    np.eye(3),  # LPS (ITK, DICOM)
    np.diag([-1.0, -1.0, 1.0]),  # RAS-flipped (NIfTI canonical)
    np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]]),  # permuted and flipped: i->P, j->I, k->R
    rotation("z", 20) @ np.diag([-1.0, 1.0, -1.0]),  # oblique and flipped
], ids=["lps", "ras", "permuted", "oblique"])
def test_right_anterior_superior_corner_is_top_left_in_every_view(direction):
    volume = corner_volume(direction)
    orient = Canonical.of(volume)
    xyz = orient.array(volume.array)
    block = np.argwhere(xyz > 0)
    for view in VIEWS:  # a plane through the block: right/anterior on the left, anterior/superior on top
        index = int(np.median(block[:, view.normal]))
        image = plane(view, xyz, index)
        rows, cols = np.nonzero(image)
        assert rows.mean() < image.shape[0] / 2 and cols.mean() < image.shape[1] / 2, view.name
    if not orient.oblique:  # the displayed extent (voxels x their spacing) is the physical extent along L, P, S
        lps = volume.ijk_to_lps(np.argwhere(np.ones(volume.shape, bool)))
        extent = np.array(xyz.shape) * volume.spacing[list(orient.perm)]
        np.testing.assert_allclose(extent, lps.max(0) - lps.min(0) + volume.spacing[list(orient.perm)])


def test_ct_soft_tissue_window_and_mr_percentiles(tmp_path):
    assert display_window(np.zeros((4, 4, 4)), "ct") == (-160.0, 240.0)
    ramp = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    np.testing.assert_allclose(display_window(ramp, "mr"), np.percentile(ramp, [1, 99]))
    volume, inside = sphere_volume("lps", extent_mm=80.0)  # sphere 100, background 10
    prompts = resolve(volume, [volume.lps_to_ijk(SPHERE_CENTER_LPS).round()])
    grey = {}
    for modality in ("ct", "mr"):
        png = imread(write_preview(tmp_path / f"{modality}.png", volume, inside.astype(np.uint8), [prompts],
                                   modality))
        left, top, w, h = layout_of(volume, inside)[1][0]
        grey[modality] = png[int(top) + 4, int(left) + 4, 0]  # the axial panel's corner: background, 10
    assert abs(grey["ct"] - (10 + 160) / 400) < 0.02  # W 400 L 40
    assert grey["mr"] < 0.02  # 10 is the 1st percentile


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def half_written(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_written)
    volume, inside = sphere_volume("lps", extent_mm=60.0)
    with pytest.raises(OSError):
        write_preview(tmp_path / "p.png", volume, inside.astype(np.uint8))
    assert not list(tmp_path.iterdir())


def test_each_label_its_own_colour_and_the_box(tmp_path):
    volume, inside = sphere_volume("ras", extent_mm=80.0)
    labels = inside.astype(np.uint8) * 2
    labels[: volume.shape[0] // 2][inside[: volume.shape[0] // 2]] = 7
    centre = volume.lps_to_ijk(SPHERE_CENTER_LPS).round()
    objects = [resolve(volume, [centre]), resolve(volume, box=[*(centre - 8), *(centre + 8)])]
    png = imread(write_preview(tmp_path / "p.png", volume, labels, objects, "mr"))
    for colour in preview.COLOURS[:2]:  # labels 2 and 7
        assert colour_mask(png, colour).sum() > 50
    assert colour_mask(png, preview.POSITIVE, 0.05).sum() > 50  # the click and the box
