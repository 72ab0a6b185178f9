"""The public-data preparation's readers of each source's cases (medsam3d.public_data.cases), on synthetic files:
a lesion mask off its image grid, and Slicer segments read from a .seg.nrrd header."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.fixture(scope="module")
def prepare():
    """The data preparation's readers of each source's cases (scripts/prepare_public_data.py runs them)."""
    from medsam3d.public_data import cases

    return cases


def _image(origin=(0.0, 0.0, 0.0), value=0) -> sitk.Image:
    image = sitk.Image([12, 10, 8], sitk.sitkUInt8)
    image.SetSpacing((0.7, 0.7, 5.0))
    image.SetOrigin(origin)
    if value:
        image[4:7, 3:6, 2:4] = value
    return image


def test_a_lesion_mask_off_its_image_grid_is_resampled_only_within_a_hundredth_of_a_voxel(prepare):
    image = _image()
    same, how = prepare.lesion_label_on_grid("case", _image(value=2), image)
    assert how == "same grid"
    nudged, how = prepare.lesion_label_on_grid("case", _image((0.7 * 0.005, 0.0, 0.0), value=2), image)
    assert how.startswith("nearest-neighbour") and geometry(nudged) == geometry(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nudged), sitk.GetArrayFromImage(same))
    with pytest.raises(RuntimeError, match="largest voxel-centre offset 0.5 voxels"):
        prepare.lesion_label_on_grid("case", _image((0.35, 0.0, 0.0), value=2), image)


def test_slicer_segments_are_read_from_the_seg_nrrd_header(prepare, tmp_path):
    layers = _image(value=3)
    layers[0:2, 0:2, 0:2] = 7
    fields = {"Segment0_ID": "Segment_1", "Segment0_Name": "left lung", "Segment0_LabelValue": "3",
              "Segment0_Layer": "0", "Segment1_ID": "Segment_2", "Segment1_Name": "Ribs",
              "Segment1_LabelValue": "7", "Segment1_Layer": "0"}
    for key, value in fields.items():
        layers.SetMetaData(key, value)
    path = tmp_path / "Segmentation.seg.nrrd"
    sitk.WriteImage(layers, str(path))
    image, segments = prepare.read_slicer_segments(path)
    assert geometry(image) == geometry(layers)
    assert [(s["name"], s["layer"], s["value"]) for s in segments] == [("left lung", 0, 3), ("Ribs", 0, 7)]
    assert prepare.snake_case(segments[0]["name"]) == "left_lung"
    plain = tmp_path / "plain.nrrd"
    sitk.WriteImage(_image(value=1), str(plain))
    with pytest.raises(RuntimeError, match="not a Slicer segmentation"):
        prepare.read_slicer_segments(plain)
