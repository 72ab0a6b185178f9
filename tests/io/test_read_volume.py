"""Reading volumes (medsam3d.io.read_volume): a DICOM series (folder or zip) keeps its geometry, a folder of two
series needs a choice, and a NIfTI cut short is caught."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3d.io import read_volume

from helpers import sphere_volume, write_dicom_series


def test_dicom_series_round_trips_geometry(tmp_path):
    volume, _ = sphere_volume("lps", extent_mm=60.0)
    write_dicom_series(volume, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.1")
    loaded = read_volume(tmp_path / "series")
    assert loaded.shape == volume.shape
    np.testing.assert_array_equal(loaded.array, volume.array)
    np.testing.assert_allclose(loaded.spacing, volume.spacing, atol=1e-5)
    np.testing.assert_allclose(loaded.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(loaded.direction, volume.direction, atol=1e-6)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "series").iterdir():
            z.write(f, f"export/{f.name}")
    np.testing.assert_array_equal(read_volume(archive).array, volume.array)


def test_dicom_folder_with_two_series_needs_a_choice(tmp_path, capsys):
    volume, _ = sphere_volume("lps", extent_mm=40.0)
    write_dicom_series(volume, tmp_path / "both", "1.2.826.0.1.3680043.2.1125.11")
    write_dicom_series(volume.with_array(volume.array // 2), tmp_path / "both", "1.2.826.0.1.3680043.2.1125.22")
    with pytest.raises(ValueError, match=r"holds 2 DICOM series; choose one with --series: .*\.11.*\.22|\.22.*\.11"):
        read_volume(tmp_path / "both")
    half = read_volume(tmp_path / "both", series_uid="1.2.826.0.1.3680043.2.1125.22")
    np.testing.assert_array_equal(half.array, volume.array // 2)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_itk_written_nifti_cut_short_is_caught(tmp_path, suffix):
    """ITK writes vox_offset 0 (meaning 352) and reads missing data as zeros: the size check must use the real
    offset, so that even the last 100 voxels missing is an error, while the intact file passes the quick check."""
    array = np.arange(20 * 24 * 28, dtype=np.int16).reshape(28, 24, 20)
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(whole))
    np.testing.assert_array_equal(read_volume(whole).array, array.transpose(2, 1, 0))
    raw = gzip.decompress(whole.read_bytes()) if suffix == ".nii.gz" else whole.read_bytes()
    cut = raw[:-200]  # the last 100 int16 voxels
    short = tmp_path / f"short{suffix}"
    short.write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    with pytest.raises(ValueError, match="truncated"):
        read_volume(short)
