"""The GPU burst script end to end on CPU: pack a toy cohort, train two steps from packed data, evaluate, and
bring back what the device tool can carry; and the training path never imports SimpleITK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from medsam3d.models import build_model, config_dict
from medsam3d.training.synthetic import write_toy_dataset

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96, decoder_heads=2,
             stem_chans=[8, 16, 24], first_click_multimask=True, mask_iou_head=True)


def test_training_imports_no_simpleitk():
    code = ("import sys, medsam3d.training.trainer, medsam3d.training.validate; "
            "print('SimpleITK' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pack_then_run_two_steps_on_cpu(tmp_path):
    data = write_toy_dataset(tmp_path / "Dataset001_Toy", n_cases=3, shape=(48, 48, 40))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"heldout": ["toy_002"]}))
    gate = tmp_path / "gate.yaml"
    gate.write_text(yaml.safe_dump({"split": str(split), "clicks": [1, 5], "tolerance": 0.01, "improve_at": [1],
                                    "suites": {"toy": {"dataset": str(data), "cases": ["toy_002"]}}}))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"roots": [str(data)], "holdout": ["toy_002"], "min_voxels": 50,
                                               "anatomy_fraction": 0.5},
                                      "train": {"batch_size": 1, "clicks": 2, "checkpoint_every": 1}}))
    torch.manual_seed(0)
    model = build_model("medsam3d-tiny", **SMALL)
    start = tmp_path / "start"
    start.mkdir()
    torch.save({"model": model.state_dict()}, start / "model.pt")
    (start / "model.yaml").write_text(yaml.safe_dump({"model": "medsam3d-tiny", **config_dict(model.config)}))
    pack = tmp_path / "burst"
    script = [sys.executable, str(REPO / "scripts" / "burst.py")]
    subprocess.run(script + ["pack", "--config", str(config), "--gate", str(gate), "--start", str(start),
                             "--out", str(pack), "--workers", "0", "--no-wheels", "--set", f"data.cache={tmp_path / 'cache'}"],
                   check=True, capture_output=True, text=True)
    cases = json.loads((pack / "data" / "cases.json").read_text())
    assert {c["case_id"] for c in cases} == {"toy_000", "toy_001"}  # the held-out case is not trained on
    assert [c["case_id"] for c in json.loads((pack / "heldout" / "cases.json").read_text())] == ["toy_002"]
    assert (pack / "data" / "shapes_v2.npz").is_file()
    out = tmp_path / "out"
    done = subprocess.run(script + ["run", "--pack", str(pack), "--out", str(out), "--work", str(tmp_path / "work"),
                                    "--steps", "2", "--batch-size", "1", "--workers", "0", "--min-voxels", "50",
                                    "--minutes", "5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.yaml", "metrics.csv", "model.pt", "model.yaml", "summary.json"]
    assert all(p.stat().st_size < 16e6 for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["device"] == "cpu"
    preview = summary["heldout_preview"]
    assert preview["n_structures"] >= 1 and set(preview["mean_dice"]) == {"1", "5"}
    spec = yaml.safe_load((out / "model.yaml").read_text())
    build_model(spec.pop("model"), checkpoint=out / "model.pt", **spec)  # loads strictly
