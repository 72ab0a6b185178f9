"""`segment --preview`: the PNG's plumbing through segment / --batch / --report, every input format, bad paths ->
exit 2, and matplotlib imported only for a preview. (The PNG itself: tests/test_preview.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from medsam3d import preview
from medsam3d.cli import main
from medsam3d.io import read_volume, write_volume

from helpers import SPHERE_CENTER_LPS, ThresholdModel, colour_mask, sphere_volume, write_dicom_series


@pytest.fixture
def stand_in(monkeypatch):
    """segment's model is the intensity-threshold stand-in (plumbing, quickly): any --model loads it."""
    import medsam3d.segmenter

    monkeypatch.setattr("medsam3d.backends.torch_backend.load_model", lambda *a, **k: (ThresholdModel(), None))


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    volume, _ = sphere_volume("oblique", extent_mm=100.0)
    return write_volume(volume, tmp_path_factory.mktemp("scan") / "scan.nii.gz")


def run(args: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_segment_preview_and_report(tmp_path, stand_in, scan, capsys):
    centre = read_volume(scan).lps_to_ijk(SPHERE_CENTER_LPS).round().astype(int)
    out, png, report = tmp_path / "mask.nii.gz", tmp_path / "mask.png", tmp_path / "run.json"
    code, err = run(["segment", scan, "--point", ",".join(map(str, centre)), "-o", out, "--preview", png,
                     "--report", report, "--modality", "ct", "--threads", 2], capsys)
    assert code == 0, err
    assert f"wrote {png}" in err and out.exists()
    info = json.loads(report.read_text())["runs"][0]
    assert info["preview"] == str(png) and info["modality"] == "ct"
    image = imread(png)
    assert image.shape[1] == preview.WIDTH_IN * preview.DPI
    assert colour_mask(image, preview.COLOURS[0]).sum() > 100  # the sphere's outline
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("fmt", ["nrrd", "mha", "dicom", "zip"])
def test_every_input_format(tmp_path, stand_in, capsys, fmt):
    volume, _ = sphere_volume("lps", extent_mm=80.0)
    if fmt in ("dicom", "zip"):
        write_dicom_series(volume, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.7")
        src = tmp_path / "series"
        if fmt == "zip":
            shutil.make_archive(str(tmp_path / "series"), "zip", tmp_path / "series")
            src = tmp_path / "series.zip"
    else:
        src = write_volume(volume, tmp_path / f"scan.{fmt}")
    centre = volume.lps_to_ijk(SPHERE_CENTER_LPS).round().astype(int)
    png = tmp_path / "p.png"
    code, err = run(["segment", src, "--point", ",".join(map(str, centre)), "-o", tmp_path / "m.nii.gz",
                     "--preview", png], capsys)
    assert code == 0, err
    assert colour_mask(imread(png), preview.COLOURS[0]).sum() > 100


def test_batch_job_preview_key(tmp_path, stand_in, scan, capsys):
    (tmp_path / "scan.nii.gz").write_bytes(scan.read_bytes())
    jobs = [{"input": "scan.nii.gz", "output": "a.nii.gz", "point": [[20, 20, 20]], "preview": "a.png"},
            {"input": "scan.nii.gz", "output": "b.nii.gz", "point": [[20, 20, 20]], "preview": "no/such/b.png"}]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(j) for j in jobs))
    code, err = run(["segment", "--batch", tmp_path / "jobs.jsonl", "-q"], capsys)
    assert code == 2 and "preview folder does not exist" in err  # the second job, before its work
    assert (tmp_path / "a.png").exists() and (tmp_path / "a.nii.gz").exists()
    assert not (tmp_path / "b.nii.gz").exists()


@pytest.mark.parametrize("name, message", [
    ("missing/p.png", "preview folder does not exist"),
    ("p.jpg", "give a .png path"),
    ("folder.png", "preview path is a folder"),
])
def test_bad_preview_path_exits_2_with_one_line_and_writes_nothing(tmp_path, scan, capsys, name, message):
    (tmp_path / "folder.png").mkdir()
    out = tmp_path / "mask.nii.gz"
    code, err = run(["segment", scan, "--point", "20,20,20", "-o", out, "--preview", tmp_path / name], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


def test_preview_in_batch_mode_is_per_job(tmp_path, capsys):
    code, err = run(["segment", "--batch", tmp_path / "jobs.jsonl", "--preview", tmp_path / "p.png"], capsys)
    assert code == 2 and "--preview" in err


def test_matplotlib_is_imported_only_for_a_preview():
    code = "import sys, medsam3d.cli, medsam3d.jobs, medsam3d.preview; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
