"""Volumes on disk and in memory: ``Volume`` (voxels + geometry), reading any supported format, atomic writes.

Conventions (the only place they are decided):

* ``Volume.array`` is indexed ``array[i, j, k]`` in the file's own index order, as 3D Slicer ("IJK") and
  ITK-SNAP show voxel coordinates. SimpleITK's numpy arrays are ``[k, j, i]``; ``ijk_from_sitk_array`` and
  ``sitk_array_from_ijk`` are the one conversion.
* Geometry is ITK's: ``origin`` is the LPS position (mm) of voxel (0, 0, 0), ``spacing`` the voxel size along
  i, j, k, and column ``a`` of ``direction`` the LPS direction of index axis ``a``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_output, write_text_atomic  # noqa: F401 (part of io's API)
from .errors import InputError

WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray  # (I, J, K)
    spacing: np.ndarray  # (3,) mm
    origin: np.ndarray  # (3,) LPS mm of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3) LPS; column a = direction of index axis a
    # NIfTI header of the file this came from: NIfTI outputs copy its sform/qform verbatim (bit-for-bit geometry;
    # a round trip through direction cosines would re-quantise oblique affines)
    nifti_header: Optional[Any] = None

    def __post_init__(self) -> None:
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    # ---- coordinates: points are (..., 3) arrays
    def ijk_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        return np.asarray(ijk, dtype=np.float64) @ (self.direction * self.spacing).T + self.origin

    def lps_to_ijk(self, lps: np.ndarray) -> np.ndarray:
        return (np.asarray(lps, dtype=np.float64) - self.origin) @ np.linalg.inv(self.direction * self.spacing).T

    def ijk_to_ras(self, ijk: np.ndarray) -> np.ndarray:
        return self.ijk_to_lps(ijk) @ LPS_TO_RAS

    def ras_to_ijk(self, ras: np.ndarray) -> np.ndarray:
        return self.lps_to_ijk(np.asarray(ras, dtype=np.float64) @ LPS_TO_RAS)

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume with this one's geometry and another voxel array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array, self.spacing.copy(), self.origin.copy(), self.direction.copy(), self.nifti_header)

    # ---- SimpleITK
    @classmethod
    def from_sitk(cls, image: sitk.Image, copy: bool = True) -> "Volume":
        """``copy=False`` shares SimpleITK's buffer (no 2x memory): the caller must keep ``image`` alive."""
        array = sitk.GetArrayFromImage(image) if copy else sitk.GetArrayViewFromImage(image)
        return cls(ijk_from_sitk_array(array), image.GetSpacing(), image.GetOrigin(),
                   np.array(image.GetDirection()).reshape(3, 3))

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(sitk_array_from_ijk(self.array))
        self.copy_geometry_to(image)
        return image

    def copy_geometry_to(self, image: sitk.Image) -> None:
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction.reshape(-1)))


def ijk_from_sitk_array(array: np.ndarray) -> np.ndarray:
    """SimpleITK's [k, j, i] numpy view -> our [i, j, k] (a view, no copy)."""
    return array.transpose(2, 1, 0)


def sitk_array_from_ijk(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 1, 0))


def zeros_ijk(shape: tuple[int, int, int], dtype) -> np.ndarray:
    """Zeros [i, j, k] in the memory layout volumes are read in (Fortran order, i.e. SimpleITK's C-ordered
    [k, j, i]): pasting read-in pieces stays sequential, and writing (SimpleITK or NIfTI, both i-fastest) needs no
    transposing copy (scripts/bench_segment.py times a mask write in both layouts)."""
    return np.zeros(shape, dtype=dtype, order="F")


# ---------------------------------------------------------------------------------------------- reading
def read_volume(path: str | os.PathLike, series_uid: Optional[str] = None) -> Volume:
    """Read a 3D scalar image: NIfTI, NRRD, MHA/MHD, or a DICOM series (folder or .zip)."""
    image = read_sitk(path, series_uid)
    volume = Volume.from_sitk(image)
    volume.nifti_header = nifti_header(path)
    return volume


def nifti_header(path: str | os.PathLike) -> Optional[Any]:
    """The NIfTI header of ``path`` (nibabel, header only), or None for other formats."""
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        return nib.load(str(path)).header.copy()
    except Exception:  # SimpleITK read it; geometry then comes from SimpleITK alone
        return None


def read_sitk(path: str | os.PathLike, series_uid: Optional[str] = None) -> sitk.Image:
    """Like ``read_volume`` but returns the checked SimpleITK image (no array copy)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        image = _read_dicom_folder(path, series_uid)
    elif path.suffix.lower() == ".zip":
        with _unzipped(path) as folder:
            image = _read_dicom_folder(folder, series_uid, shown_as=path)
    else:
        if path.stat().st_size == 0:
            raise InputError(f"input file is empty: {path}")
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_file(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot read {path}: {_first_line(exc)}") from None
    return _check_image(image, path)


def _check_nifti_file(path: Path) -> None:
    """What ITK's NIfTI reader lets through silently: truncated data (read as zeros) and NaN/inf (read as 0)."""
    import gzip

    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as exc:
        raise InputError(f"cannot read {path}: {_first_line(exc)}") from None
    header = image.header
    # the offset nibabel reads the data from: ITK writes vox_offset 0 in single-file NIfTI, which means 352
    expected = int(image.dataobj.offset) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:  # gzip's trailer holds the uncompressed size (mod 2^32)
            f.seek(-4, os.SEEK_END)
            stored = int.from_bytes(f.read(4), "little")
        if stored != expected % 2**32:  # not conclusive (multi-member gzip): decompress to be sure
            try:
                with gzip.open(path, "rb") as f:
                    size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 24), b""))
            except (EOFError, OSError, gzip.BadGzipFile):
                size = -1
            if size < expected:
                raise InputError(f"{path} is truncated or corrupt: its data end before the {expected} bytes "
                                 "its header announces")
    elif path.stat().st_size < expected:
        raise InputError(f"{path} is truncated: {path.stat().st_size} bytes, its header announces {expected}")
    if np.issubdtype(header.get_data_dtype(), np.floating):
        try:
            finite = np.isfinite(np.asanyarray(image.dataobj)).all()
        except Exception as exc:
            raise InputError(f"cannot read {path}: {_first_line(exc)}") from None
        if not finite:
            raise InputError(f"{path} contains NaN or infinite voxel values")


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "ERROR" not in ln.upper()[:6] and len(ln) > 10), lines[-1] if lines else "")
    return (detail or "unreadable or unsupported format")[:200]


def _check_image(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image {image.GetSize()}; medsam3d segments 3D volumes")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "medsam3d needs a scalar (single-channel) image")
    if min(image.GetSize()) < 2:
        raise InputError(f"{path} is a single slice {image.GetSize()}; medsam3d segments 3D volumes")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{path} contains NaN or infinite voxel values")
    return image


def dicom_series_files(folder: Path, series_uid: Optional[str], shown_as: Optional[Path] = None
                       ) -> tuple[str, list[str]]:
    """(series UID, its files in slice order) of a DICOM folder (or its first sub-folder holding a series)."""
    shown = shown_as or folder
    reader = sitk.ImageSeriesReader()
    uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not uids:  # look one level down (a zip or an export often wraps the series in a folder)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            uids = list(reader.GetGDCMSeriesIDs(str(sub)))
            if uids:
                folder = sub
                break
    if not uids:
        raise InputError(f"no DICOM series found in {shown}")
    if series_uid is None:
        if len(uids) > 1:
            raise InputError(f"{shown} holds {len(uids)} DICOM series; choose one with --series: {', '.join(uids)}")
        series_uid = uids[0]
    elif series_uid not in uids:
        raise InputError(f"series {series_uid} is not in {shown}; it holds: {', '.join(uids)}")
    return series_uid, list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))


def _read_dicom_folder(folder: Path, series_uid: Optional[str], shown_as: Optional[Path] = None) -> sitk.Image:
    shown = shown_as or folder
    series_uid, files = dicom_series_files(folder, series_uid, shown_as)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series {series_uid} in {shown}: {_first_line(exc)}") from None


@contextmanager
def _unzipped(path: Path) -> Iterator[Path]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputError(f"{path} is not a valid zip archive") from None
    with archive, tempfile.TemporaryDirectory(prefix="medsam3d-dicom-") as tmp:
        root = Path(tmp).resolve()
        for member in archive.namelist():  # refuse members that would escape the folder
            if not (root / member).resolve().is_relative_to(root):
                raise InputError(f"{path} contains an unsafe path: {member}")
        archive.extractall(root)
        yield root


# ---------------------------------------------------------------------------------------------- writing
def output_extension(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for ext in WRITE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise InputError(f"cannot tell the output format of {path}; use one of {', '.join(WRITE_EXTENSIONS)}")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any work) if ``path`` cannot be written: format, folder, permissions."""
    path = Path(path)
    output_extension(path)
    return check_output_place(path, "output")


def check_output_place(path: Path, what: str) -> Path:
    """``path``'s folder exists and is writable, and ``path`` is no folder; errors name the file as ``what``."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{what} folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{what} folder is not writable: {folder}")
    if path.is_dir():
        raise InputError(f"{what} path is a folder: {path}")
    return path


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write atomically: to a temporary file in the same folder, then rename over ``path``."""
    path = check_writable(path)
    ext = output_extension(path)
    if ext == ".mhd":  # header + raw pair: not atomic as one rename; write a single-file .mha instead
        raise InputError("write .mha rather than .mhd (a single file can be written atomically)")
    with atomic_output(path, suffix=f".tmp{ext}") as tmp:  # the extension tells SimpleITK the format
        if ext in (".nii", ".nii.gz") and volume.nifti_header is not None:
            _write_nifti_with_header(volume, tmp)
        else:
            sitk.WriteImage(volume.to_sitk(), tmp, useCompression=ext in (".nii.gz", ".nrrd", ".mha"))
    return path


def _write_nifti_with_header(volume: Volume, path: str) -> None:
    """NIfTI output on the input's own header: same sform, qform and codes; new data type, no scaling."""
    import nibabel as nib

    header = volume.nifti_header.copy()
    header.set_data_dtype(volume.array.dtype)
    header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(np.asarray(volume.array), None, header)
    image.set_sform(header.get_sform(), int(header["sform_code"]))
    image.set_qform(header.get_qform(), int(header["qform_code"]))
    if path.endswith(".gz"):  # masks compress well at level 1, several times faster than nibabel's default 6
        import gzip

        with open(path, "wb") as f:
            f.write(gzip.compress(image.to_bytes(), compresslevel=1))
    else:
        nib.save(image, path)
