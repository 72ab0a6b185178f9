"""`medsam3d models import | list | info` and `segment --model NAME` with a model in the store (fixtures home and
checkpoint_bytes: tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json

from medsam3d import store
from medsam3d.cli import main

from conftest import SMALL_SAM


def test_models_commands(home, tmp_path, checkpoint_bytes, capsys):
    import yaml

    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(checkpoint_bytes)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({"model": "sam-med3d", **SMALL_SAM}))
    assert main(["models", "import", str(ckpt), "--name", "mine", "--model", "sam-med3d", "--config", str(cfg)]) == 0
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "installed" in out and "sam-med3d-turbo" in out and "not pulled" in out
    assert main(["models", "info", "mine"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert main(["models", "info", "nope"]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err


def test_segment_with_a_stored_model_name(home, tmp_path, checkpoint_bytes, capsys):
    from helpers import sphere_volume
    from medsam3d.io import read_volume, write_volume

    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(checkpoint_bytes)
    store.import_checkpoint(ckpt, "mine", "sam-med3d", SMALL_SAM)
    scan = write_volume(sphere_volume("ras", extent_mm=80.0)[0], tmp_path / "scan.nrrd")
    out, report = tmp_path / "mask.nrrd", tmp_path / "run.json"
    code = main(["segment", str(scan), "--point", "40,40,10", "-o", str(out), "--model", "mine",
                 "--report", str(report), "-q"])
    assert code == 0, capsys.readouterr().err
    assert read_volume(out).shape == read_volume(scan).shape
    assert json.loads(report.read_text())["checkpoint_sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
