"""The `medsam3d segment` command: the happy path's files, DICOM input, and bad input -> exit 2, one line,
nothing written, input untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from medsam3d.cli import main
from medsam3d.io import Volume, read_volume, write_volume
from medsam3d.models import build_model

from conftest import SMALL_SAM
from helpers import SPHERE_CENTER_LPS, sphere_volume


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


def write_dicom_series(volume: Volume, folder: Path, uid: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        tags = {
            "0020|000e": uid, "0020|000d": uid + ".0", "0008|0060": "CT", "0010|0010": "TEST^PHANTOM",
            "0020|0052": uid + ".9", "0010|0020": "PHANTOM1", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0020|0037": "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0013": str(z + 1), "0008|0018": f"{uid}.{z + 1}",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{uid.split('.')[-1]}_{z:04d}.dcm"))
        writer.Execute(sl)


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
