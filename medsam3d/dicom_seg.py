"""DICOM SEG output for DICOM input (optional extra: ``pip install medsam3d[dicom]``, which brings highdicom).

A label map on the input series' grid becomes one DICOM Segmentation object referencing the source slices, one
segment per label value, so PACS viewers and 3D Slicer show it over the original series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .errors import InputError
from .io import atomic_output, sitk_array_from_ijk


def write_dicom_seg(label_map: np.ndarray, source_files: Sequence[str], path: str | Path, model_name: str,
                    names: dict[int, str] | None = None) -> Path:
    """label_map (I, J, K) on the series grid, slice k = ``source_files[k]`` -> DICOM SEG at ``path`` (atomic)."""
    try:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes
    except ImportError:
        raise InputError("--output-type dicom-seg needs highdicom: pip install medsam3d[dicom]") from None
    values = [int(v) for v in np.unique(label_map) if v != 0]
    if not values:
        raise InputError("the segmentation is empty: nothing to write as DICOM SEG")
    datasets = [pydicom.dcmread(f) for f in source_files]
    if len(datasets) != label_map.shape[2]:
        raise InputError(f"the series has {len(datasets)} slices but the mask {label_map.shape[2]}")
    # frame k: rows along j, columns along i; segments numbered 1..n in label order
    numbered = np.zeros(label_map.shape, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        numbered[label_map == value] = number
    frames = sitk_array_from_ijk(numbered)
    algorithm = hd.AlgorithmIdentificationSequence(name="medsam3d", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=(names or {}).get(value, f"object {value}"),
            segmented_property_category=codes.cid7150.Tissue, segmented_property_type=codes.cid7166.ConnectiveTissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm)
        for number, value in enumerate(values, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medsam3d",
            manufacturer_model_name=model_name, software_versions=__version__, device_serial_number="none",
            omit_empty_frames=False,
        )
    except (ValueError, AttributeError) as exc:  # the source series lacks what a SEG must reference
        raise InputError(f"cannot make a DICOM SEG for this series: {exc}") from None
    path = Path(path)
    with atomic_output(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return path
