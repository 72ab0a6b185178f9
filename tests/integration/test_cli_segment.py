"""The `medsam3d segment` command: the happy path's files, batches, DICOM input and DICOM SEG output, an object longer
than two windows, and bad input -> exit 2, one line, nothing written, input untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

import medsam3d.segmenter as segmenter_module
from medsam3d.cli import main
from medsam3d.io import read_volume, write_volume
from medsam3d.models import build_model

from conftest import SMALL_SAM
from helpers import (ROD_ENDS, ROD_WINDOW, SPHERE_CENTER_LPS, ThresholdModel, long_rod, sphere_volume,
                     write_dicom_series)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> tuple[Path, Path]:
    """A small SAM-Med3D-architecture model saved as YAML config + checkpoint (plumbing, not segmentation)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_model("sam-med3d", **SMALL_SAM)
    ckpt = folder / "small.pth"
    torch.save({"model_state_dict": model.state_dict()}, ckpt)
    cfg = folder / "small.yaml"
    cfg.write_text(yaml.safe_dump({"model": "sam-med3d", **SMALL_SAM}))
    return cfg, ckpt


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    volume, _ = sphere_volume("oblique", extent_mm=120.0)
    return write_volume(volume, tmp_path_factory.mktemp("scan") / "scan.nii.gz")


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_segment_writes_mask_probabilities_and_report(tmp_path, small_model, scan, capsys):
    cfg, ckpt = small_model
    out, prob, report = tmp_path / "mask.nrrd", tmp_path / "prob.nii.gz", tmp_path / "run.json"
    centre = read_volume(scan).lps_to_ijk(SPHERE_CENTER_LPS).round().astype(int)
    code, err = run(["segment", scan, "--point", ",".join(map(str, centre)), "--negative", "2,2,2", "-o", out,
                     "--model", cfg, "--checkpoint", ckpt, "--probabilities", prob, "--report", report,
                     "--threads", 2], capsys)
    assert code == 0, err
    assert "positive point: voxel" in err and "RAS" in err
    src, mask, p = read_volume(scan), read_volume(out), read_volume(prob)
    for written in (mask, p):
        assert written.shape == src.shape
        np.testing.assert_allclose(written.spacing, src.spacing, rtol=0, atol=1e-6)
        np.testing.assert_allclose(written.direction, src.direction, rtol=0, atol=1e-6)
        np.testing.assert_allclose(written.origin, src.origin, rtol=0, atol=1e-4)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= {0, 1}
    assert p.array.dtype == np.float32 and 0 <= p.array.min() and p.array.max() <= 1
    info = json.loads(report.read_text())
    assert info["model"] == "sam-med3d" and len(info["checkpoint_sha256"]) == 64
    run_info = info["runs"][0]
    assert run_info["objects"][0]["windows"] >= 1 and "encode" in run_info["objects"][0]["timings_s"]
    assert run_info["shape"] == list(src.shape)
    assert run_info["modality"] == "mr" and "intensity handling: MR" in err  # the sphere holds no air in HU


def test_batch_jobs_are_shared_out_by_rank(tmp_path, small_model, scan, capsys, monkeypatch):
    cfg, ckpt = small_model
    (tmp_path / "in").mkdir()
    jobs = []
    for n in range(5):
        src = tmp_path / "in" / f"scan{n}.nii.gz"
        src.write_bytes(scan.read_bytes())
        job = {"input": f"in/{src.name}", "output": f"mask{n}.nii.gz", "point": [[20, 20, 20]]}
        if n == 3:
            job = {"input": "in/missing.nii.gz", "output": "mask3.nii.gz", "point": [[1, 1, 1]]}
        if n == 4:  # several objects -> one label map
            job = {"input": f"in/{src.name}", "output": "mask4.nii.gz",
                   "prompts": [{"point": [[20, 20, 20]], "label": 3}, {"point": ["30,30,20"], "label": 7}]}
        jobs.append(json.dumps(job))
    batch = tmp_path / "jobs.jsonl"
    batch.write_text("\n".join(jobs) + "\n")
    done = set()
    for rank in (0, 1):  # what two torchrun processes see
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, err = run(["segment", "--batch", batch, "--model", cfg, "--checkpoint", ckpt, "--report",
                         tmp_path / "run.json", "-q"], capsys)
        info = json.loads((tmp_path / f"run.rank{rank}.json").read_text())
        done |= {Path(r["output"]).name for r in info["runs"]}
        if rank == 1:  # jobs 1 and 3: job 3's scan is missing
            assert code == 2 and "missing.nii.gz" in err and info["failed"] == 1
        else:  # jobs 0, 2, 4
            assert code == 0 and info["failed"] == 0 and len(info["runs"]) == 3
    assert done == {"mask0.nii.gz", "mask1.nii.gz", "mask2.nii.gz", "mask4.nii.gz"}
    assert set(np.unique(read_volume(tmp_path / "mask4.nii.gz").array)) <= {0, 3, 7}
    assert not (tmp_path / "mask3.nii.gz").exists()


def test_python_dash_m_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "medsam3d", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("medsam3d ")


_AS_A_PROCESS = """
import atexit, sys
atexit.register(lambda: print("exit handlers ran"))
from medsam3d.cli import run
sys.argv = ["medsam3d", *sys.argv[1:]]
try:
    run()
finally:
    print("interpreter teardown")  # reached on sys.exit; os._exit skips it
"""


def test_segment_process_ends_fast_once_its_outputs_are_closed(tmp_path, small_model, scan):
    """cli.run skips the interpreter's teardown after segment (scripts/bench_segment.py times the gain): the exit
    code, every output and every message must be exactly those of a normal exit, and exit handlers still run."""
    cfg, ckpt = small_model
    shutil.copy(scan, tmp_path / "scan.nii.gz")
    jobs = [{"input": "scan.nii.gz", "output": "mask.nii.gz", "point": [[20, 20, 20]]},
            {"input": "missing.nii.gz", "output": "other.nii.gz", "point": [[1, 1, 1]]}]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    seen = {}
    for fast in (True, False):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MEDSAM3D_NO_FAST_EXIT")}
        if not fast:
            env["MEDSAM3D_NO_FAST_EXIT"] = "1"
        result = subprocess.run([sys.executable, "-c", _AS_A_PROCESS, "segment", "--batch", "jobs.jsonl", "--model",
                                 str(cfg), "--checkpoint", str(ckpt), "--report", "run.json", "--threads", "1"],
                                capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert result.returncode == 2, result.stderr  # one job of two failed
        assert "missing.nii.gz" in result.stderr and "1 done, 1 failed" in result.stderr
        assert "exit handlers ran" in result.stdout
        assert ("interpreter teardown" in result.stdout) == (not fast)
        report = json.loads((tmp_path / "run.json").read_text())
        assert report["failed"] == 1 and len(report["runs"]) == 1
        seen[fast] = read_volume(tmp_path / "mask.nii.gz").array
        assert not (tmp_path / "other.nii.gz").exists()
    assert seen[True].any()
    np.testing.assert_array_equal(seen[True], seen[False])


def test_default_model_without_trained_weights_exits_2(tmp_path, scan, capsys, monkeypatch):
    from medsam3d import store

    monkeypatch.setattr(store, "PACKAGED", tmp_path / "no_weights")  # an install without the packaged default
    code, err = run(["segment", scan, "--point", "5,5,5", "-o", tmp_path / "m.nii.gz"], capsys)
    assert code == 2 and "no trained default model" in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_random_weights_are_refused(tmp_path, scan, capsys):
    code, err = run(["segment", scan, "--point", "5,5,5", "-o", tmp_path / "m.nii.gz", "--model", "medsam3d-tiny"],
                    capsys)
    assert code == 2 and "no trained weights" in err


def test_segment_command_takes_clicks_at_both_ends(tmp_path, monkeypatch, capsys):
    volume, rod = long_rod()
    scan = write_volume(volume, tmp_path / "rod.nii.gz")
    monkeypatch.setattr("medsam3d.backends.torch_backend.load_model", lambda *a, **k: (ThresholdModel(ROD_WINDOW), None))
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(scan), "--point", ",".join(map(str, ROD_ENDS[0])), "--point",
                 ",".join(map(str, ROD_ENDS[1])), "-o", str(out), "--max-windows", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    mask = read_volume(out).array > 0
    assert all(mask[p] for p in ROD_ENDS) and not (mask & ~rod).any()


# ------------------------------------------------------------------------------------------- bad input
def _bad_files(tmp: Path, scan: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp / "empty.nii.gz"
    files["empty"].write_bytes(b"")
    files["truncated"] = tmp / "truncated.nii.gz"
    files["truncated"].write_bytes(scan.read_bytes()[:300])
    files["corrupt"] = tmp / "corrupt.nrrd"
    files["corrupt"].write_bytes(b"NRRD0004\nthis is not a header\n")
    two_d = sitk.Image(32, 32, sitk.sitkInt16)
    files["2d"] = tmp / "slice.nii.gz"
    sitk.WriteImage(two_d, str(files["2d"]))
    four_d = sitk.Image([8, 8, 8, 3], sitk.sitkInt16)
    files["4d"] = tmp / "series4d.nii.gz"
    sitk.WriteImage(four_d, str(files["4d"]))
    import nibabel as nib

    values = np.zeros((8, 8, 8), dtype=np.float32)
    values[3, 4, 5] = np.nan  # ITK's NIfTI reader turns NaN into 0: this must still be caught
    files["nan"] = tmp / "nan.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), files["nan"])
    inf = sitk.GetImageFromArray(np.full((8, 8, 8), np.inf, dtype=np.float32))
    files["inf"] = tmp / "inf.mha"
    sitk.WriteImage(inf, str(files["inf"]))
    files["empty_dicom"] = tmp / "empty_dicom"
    files["empty_dicom"].mkdir()
    return files


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "input not found"),
        ("empty", "input file is empty"),
        ("truncated", "truncated or corrupt"),
        ("corrupt", "cannot read"),
        ("2d", "2D image"),
        ("4d", "4D image"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("empty_dicom", "no DICOM series"),
        ("outside", "outside the image"),
        ("negative", "negative voxel index"),
        ("malformed", "3 comma-separated numbers"),
        ("zero_box", "zero size"),
        ("frame", "unknown coordinate frame 'xyz'"),
        ("modality", "unknown --modality 'pet'"),
        ("model", "unknown model 'nonsense'"),
        ("no_dir", "output folder does not exist"),
        ("unwritable", "not writable"),
        ("same", "is the input"),
        ("format", "cannot tell the output format"),
        ("no_prompt", "no prompt given"),
        ("missing_checkpoint", "checkpoint not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, scan, small_model, capsys, case, message):
    cfg, ckpt = small_model
    files = _bad_files(tmp_path, scan)
    before = hashlib.sha256(scan.read_bytes()).hexdigest()
    out = tmp_path / "out" / "mask.nii.gz"
    out.parent.mkdir()
    args = {"input": scan, "point": ["10,10,10"], "out": out, "extra": []}
    if case in files:
        args["input"] = files[case]
    elif case == "missing":
        args["input"] = tmp_path / "nope.nii.gz"
    elif case == "outside":
        args["point"] = ["10,10,5000"]
    elif case == "negative":
        args["point"] = ["-1,10,10"]
    elif case == "malformed":
        args["point"] = ["10,10"]
    elif case == "zero_box":
        args["point"], args["extra"] = [], ["--box", "10,10,10,10,30,30"]
    elif case == "frame":
        args["extra"] = ["--coords", "xyz"]
    elif case == "modality":
        args["extra"] = ["--modality", "pet"]
    elif case == "model":
        args["extra"] = ["--model", "nonsense"]
    elif case == "no_dir":
        args["out"] = tmp_path / "missing" / "mask.nii.gz"
    elif case == "unwritable":
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        args["out"] = locked / "mask.nii.gz"
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
    elif case == "same":
        args["out"] = scan
    elif case == "format":
        args["out"] = tmp_path / "out" / "mask.png"
    elif case == "no_prompt":
        args["point"] = []
    elif case == "missing_checkpoint":
        args["extra"] = ["--checkpoint", tmp_path / "none.pth"]
    model_args = [] if case in ("model", "missing_checkpoint") else ["--model", cfg, "--checkpoint", ckpt]
    argv = ["segment", args["input"], "-o", args["out"], *model_args, *args["extra"]]
    for p in args["point"]:
        argv += ["--point", p]
    code, err = run(argv, capsys)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("medsam3d: error:") and message in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(".mask*"))
    assert hashlib.sha256(scan.read_bytes()).hexdigest() == before


def test_dicom_input_to_dicom_seg_output(tmp_path, small_model, capsys):
    pytest.importorskip("highdicom")
    import highdicom as hd

    cfg, ckpt = small_model
    volume, _ = sphere_volume("lps", extent_mm=60.0)
    uid = "1.2.826.0.1.3680043.2.1125.7"
    write_dicom_series(volume, tmp_path / "series", uid)
    base = ["segment", tmp_path / "series", "--point", "20,30,12", "--model", cfg, "--checkpoint", ckpt, "-q"]
    code, err = run([*base, "-o", tmp_path / "mask.nii.gz"], capsys)
    assert code == 0, err
    expected = read_volume(tmp_path / "mask.nii.gz").array
    code, err = run([*base, "-o", tmp_path / "mask.dcm", "--output-type", "dicom-seg"], capsys)
    if not expected.any():
        assert code == 2 and "empty" in err
        return
    assert code == 0, err
    seg = hd.seg.segread(tmp_path / "mask.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    assert frames.shape == (volume.shape[2], volume.shape[1], volume.shape[0])  # one frame per source slice
    for frame, info in zip(frames, seg.PerFrameFunctionalGroupsSequence):  # frames say which slice they cover
        source = info.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = int(source.rsplit(".", 1)[1]) - 1  # write_dicom_series numbers slice z as instance z + 1
        np.testing.assert_array_equal(frame.T > 0, expected[:, :, z] > 0)
    code, err = run([*base, "-o", tmp_path / "mask2.nii.gz", "--output-type", "dicom-seg"], capsys)
    assert code == 2 and ".dcm" in err
