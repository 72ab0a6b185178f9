"""Writing what was built: an nnU-Net v2 folder per dataset, the Unlabelled folder, their manifest entries, and the
bundled example CT with its liver mask."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.affines import apply_affine

from .cases import LabelledCase
from .sources import TOTALSEG, TS_REF, display
from .unlabelled import UnlabelledCase


def write_dataset(root: Path, name: str, description: str, channel: str, labels: dict[str, int],
                  cases: list[LabelledCase], heldout: set[str], downloads: Path) -> list[dict]:
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
            "source": case.source.manifest_entry(downloads, case.files),
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


def write_unlabelled(root: Path, items: list[UnlabelledCase], heldout: set[str], downloads: Path) -> list[dict]:
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
            "source": item.source.manifest_entry(downloads, {"image": item.file}),
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

