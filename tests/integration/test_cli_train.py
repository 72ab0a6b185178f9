"""Training through the command line: whole runs as users start them (torchrun with 2 processes (gloo), and a run
killed mid-way then resumed), and `train` with no usable data exiting 2 (fixture toy: tests/conftest.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medsam3d", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def medsam3d(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medsam3d", *map(str, args)], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def last_checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def metric(out: Path, name: str) -> dict[int, float]:
    """{step: value} of one metric (a step re-run after a resume: its last value)."""
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == name}


def test_torchrun_distill_two_ranks_stay_identical(toy, tmp_path):
    out = tmp_path / "distill"
    result = torchrun(["distill", "--config", "configs/smoke/distill.yaml", "--out", out,
                       "--set", f"data.roots=[{toy}]"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = last_checkpoint(out)
    assert state["stage"] == 2 and len(state["rank_digests"]) == 2
    assert len(set(state["rank_digests"])) == 1
    layers = metric(out, "layers")
    assert [layers[s] for s in sorted(layers)] == [1, 1, 2, 2, 3, 3]  # the schedule advanced as configured (every 2 steps, 3 blocks)
    assert (out / "model.pt").is_file() and len(list((out / "teacher_cache").glob("*.pt"))) >= 2


def test_torchrun_finetune_two_ranks_stay_identical(toy, tmp_path):
    start = tmp_path / "start"
    run = medsam3d(["train", "--config", "configs/smoke/train.yaml", "--out", start, "--set", f"data.roots=[{toy}]",
                    "--set", "train.steps=2"])
    assert run.wait(timeout=300) == 0, run.stdout.read()
    out = tmp_path / "finetune"
    result = torchrun(["finetune", "--config", "configs/smoke/finetune.yaml", "--out", out,
                       "--set", f"data.roots=[{toy}]", "--set", f"model.checkpoint={start / 'model.pt'}",
                       "--set", "train.steps=4", "--set", "train.checkpoint_every=1",
                       "--set", "train.reinit=[mask_decoder.iou_prediction_head]"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = last_checkpoint(out)
    # ranks stay identical, fresh IoU head included (DDP broadcasts rank 0's weights when it wraps the model)
    assert state["step"] == 4 and len(state["rank_digests"]) == 2 and len(set(state["rank_digests"])) == 1
    # the frozen encoder did not move; the decoder did
    before = torch.load(start / "model.pt", weights_only=False)["model"]
    after = torch.load(out / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))


def test_killed_run_resumes_to_the_same_result(toy, tmp_path):
    args = ["train", "--config", "configs/smoke/train.yaml", "--set", f"data.roots=[{toy}]", "--set",
            "train.steps=14", "--set", "train.checkpoint_every=1", "--set", "train.log_every=1"]
    whole = medsam3d([*args, "--out", tmp_path / "whole"])
    assert whole.wait(timeout=300) == 0, whole.stdout.read()

    killed_out = tmp_path / "killed"
    victim = medsam3d([*args, "--out", killed_out])
    deadline = time.time() + 240
    while time.time() < deadline:
        ckpt = killed_out / "checkpoints" / "last.pt"
        if ckpt.exists():
            try:
                if last_checkpoint(killed_out)["step"] >= 5:
                    break
            except Exception:  # caught between write and rename: try again
                pass
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    stopped_at = last_checkpoint(killed_out)["step"]
    assert 5 <= stopped_at < 14, "the run finished before it could be killed"
    again = medsam3d([*args, "--out", killed_out])  # without --resume: refuses to overwrite
    assert again.wait(timeout=120) == 2 and "--resume" in again.stdout.read()
    resumed = medsam3d([*args, "--out", killed_out, "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()

    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)["model"]
    b = torch.load(killed_out / "model.pt", weights_only=False)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    la, lb = metric(tmp_path / "whole", "loss"), metric(killed_out, "loss")
    assert sorted(la) == sorted(lb) == list(range(1, 15))
    assert max(abs(la[s] - lb[s]) for s in la) <= 1e-5


def test_cli_training_with_no_usable_data_exits_2(tmp_path, capsys):
    from medsam3d.cli import main

    empty = tmp_path / "Dataset009_Empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    (empty / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                    "file_ending": ".nii.gz"}))
    code = main(["train", "--config", str(REPO / "configs/smoke/train.yaml"), "--out", str(tmp_path / "run"),
                 "--set", f"data.roots=[{empty}]"])
    err = capsys.readouterr().err
    assert code == 2 and "imagesTr holds no" in err and "Traceback" not in err
