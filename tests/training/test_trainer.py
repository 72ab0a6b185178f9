"""Runs (training.trainer): loss falling on a tiny set, gradient accumulation, building a model with new parts
(train.reinit: the mask head, the fine head answering as the S/4 model it is added to), re-initialising a part, and
training only the named parts (train.only)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam3d.errors import InputError
from medsam3d.training.config import load_config

from helpers import FINE_SMALL, fine_model, one_click, random_image, small_tiny

REPO = Path(__file__).resolve().parents[2]


def test_loss_falls_on_a_tiny_set(toy, tmp_path):
    from medsam3d.training.trainer import run_interactive

    cfg = load_config(REPO / "configs/smoke/train.yaml", [
        f"data.roots=[{toy}]", "data.labels=[1]", "data.synthetic_fraction=0.0", "train.steps=24",
        "train.lr=0.003", "train.warmup=1", "train.log_every=1", "train.checkpoint_every=100", "train.box_prob=0.0",
    ])
    run_interactive(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv") as f:
        losses = [float(row["value"]) for row in csv.DictReader(f) if row["metric"] == "loss"]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "model.yaml").is_file()


def test_gradient_accumulation_steps_once_per_accumulated_batch(toy, tmp_path):
    from medsam3d.training.trainer import run_interactive

    cfg = load_config(REPO / "configs/smoke/train.yaml", [
        f"data.roots=[{toy}]", "train.steps=3", "train.grad_accum=2", "train.log_every=1",
        "train.checkpoint_every=1",
    ])
    run_interactive(cfg, tmp_path / "accum")
    state = torch.load(tmp_path / "accum" / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 3
    assert state["scheduler"]["last_epoch"] == 3  # one scheduler (and optimiser) step per 2 micro-batches
    assert all(s["step"] == 3 for s in state["optimizer"]["state"].values())


def test_reinitialise_gives_only_the_named_part_fresh_weights():
    from medsam3d.errors import InputError
    from medsam3d.training.trainer import reinitialise

    model = small_tiny(first_click_multimask=True)
    head = model.mask_decoder.iou_prediction_head
    for p in head.parameters():  # a collapsed head: every unit dead, a constant output
        p.data.fill_(-1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialise(model, ["mask_decoder.iou_prediction_head"])
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("mask_decoder.iou_prediction_head.")}
    hidden = F.relu(head.layers[0](torch.randn(64, head.layers[0].in_features)))
    assert int((hidden > 0).any(0).sum()) > head.layers[0].out_features // 2  # units alive again
    with pytest.raises(InputError, match="no submodule 'mask_decoder.nonsense'"):
        reinitialise(model, ["mask_decoder.nonsense"])


def test_a_run_can_add_the_mask_head_to_weights_without_it(tmp_path):
    from medsam3d.errors import InputError
    from medsam3d.training.trainer import build_from

    old = small_tiny(first_click_multimask=True)
    torch.save({"model": old.state_dict()}, tmp_path / "old.pt")
    config = dict(img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96, decoder_heads=2,
                  iou_head_hidden_dim=32, mask_in_chans=8, first_click_multimask=True, mask_iou_head=True)
    spec = {"name": "medsam3d-tiny", "config": config, "checkpoint": str(tmp_path / "old.pt")}
    new = build_from(spec, torch.device("cpu"), ["mask_decoder.mask_iou_head"])
    state = new.state_dict()
    kept = {k: v for k, v in old.state_dict().items() if not k.startswith("mask_decoder.iou_prediction_head.")}
    assert set(kept) == {k for k in state if not k.startswith("mask_decoder.mask_iou_head.")}
    assert all(torch.equal(v, state[k]) for k, v in kept.items())  # everything else is the old weights
    with pytest.raises(InputError, match="missing key.*mask_iou_head"):
        build_from(spec, torch.device("cpu"), [])  # without train.reinit naming it, a missing part is an error


def test_a_fresh_fine_head_answers_as_the_s4_model_it_was_added_to(tmp_path):
    """A run adds the head to trained S/4 weights (train.reinit); until training gives its read-out weights, the S/2
    logits are the S/4 logits upsampled, so the continuation starts where the S/4 model was. reinit resets the
    head's layers and then its own zero read-out, in that order."""
    from medsam3d.training.trainer import build_from, reinitialise

    coarse = fine_model(False)
    torch.save({"model": coarse.state_dict()}, tmp_path / "s4.pt")
    spec = {"name": "medsam3d-tiny", "config": dict(FINE_SMALL, fine_output=True), "checkpoint": str(tmp_path / "s4.pt")}
    fresh = ["image_encoder.fine_skip", "mask_decoder.fine_head"]
    fine = build_from(spec, torch.device("cpu"), fresh)
    reinitialise(fine, fresh)
    fine.eval()
    points, labels = one_click()
    with torch.no_grad():
        for multimask in (True, False):
            want, want_iou = coarse.decode(coarse.encode(random_image()), points=points, labels=labels,
                                           multimask_output=multimask)
            got, got_iou = fine.decode(fine.encode(random_image()), points=points, labels=labels,
                                       multimask_output=multimask)
            up = F.interpolate(want, scale_factor=2, mode="trilinear", align_corners=False)
            torch.testing.assert_close(got, up, rtol=0, atol=1e-5)
            torch.testing.assert_close(got_iou, want_iou)
    with pytest.raises(InputError, match="missing key"):
        build_from(spec, torch.device("cpu"), [])  # the new parts must be named to be left out of the checkpoint


def test_train_only_trains_the_named_parts_and_keeps_the_rest_fixed():
    from medsam3d.training.interactive import InteractiveStep
    from medsam3d.training.trainer import set_trainable

    model = fine_model(True).train()
    only = ["image_encoder.fine_skip", "mask_decoder.fine_head"]
    params = set_trainable(model, [], only)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(tuple(f"{o}." for o in only)) for n in names)
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n in names}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.SGD(params, lr=0.1)
    targets = torch.zeros(1, 1, 64, 64, 64)
    targets[..., 20:40, 18:38, 24:44] = 1
    loss, _ = InteractiveStep(model, clicks=2, loss_downsample=2)(random_image(), targets, seed=1)
    loss.backward()
    optimiser.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names
    with pytest.raises(InputError, match="train.only: medsam3d-tiny has no submodule 'mask_decoder.nope'"):
        set_trainable(model, [], ["mask_decoder.nope"])
