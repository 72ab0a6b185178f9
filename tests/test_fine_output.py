"""medsam3d-tiny's ``fine_output``: S/2 logits (64^3 for a 128^3 window) from the stem's S/2 map.

What must hold: the shapes everywhere the logits travel (decode, mask prompts, training, Segmenter), a fresh head
that answers exactly as the S/4 model it is added to, and a detail path that really reads the S/2 features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam3d.errors import InputError

SMALL = dict(img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96, decoder_heads=2,
             iou_head_hidden_dim=32, mask_in_chans=8, first_click_multimask=True, mask_iou_head=True,
             multimask_refine=True)


def _model(fine: bool, seed: int = 0):
    from medsam3d.models import build_model

    torch.manual_seed(seed)
    return build_model("medsam3d-tiny", fine_output=fine, **SMALL).eval()


def _open_read_out(model) -> None:
    """Give the fine head's zero-initialised read-out some weights, as training would."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for mlp in model.mask_decoder.fine_head.hypernetworks:
            mlp.layers[-1].weight.copy_(torch.randn(mlp.layers[-1].weight.shape, generator=gen))


def _read_out_grad(model) -> float:
    return sum(float(mlp.layers[-1].weight.grad.abs().sum()) for mlp in model.mask_decoder.fine_head.hypernetworks
               if mlp.layers[-1].weight.grad is not None)


def _click():
    return torch.tensor([[[30.0, 28.0, 33.0]]]), torch.tensor([[1]])


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_fine_output_decodes_s2_logits_and_takes_them_back_as_the_mask_prompt():
    model = _model(True)
    assert model.low_res_size == 32 and _model(False).low_res_size == 16
    points, labels = _click()
    with torch.no_grad():
        features = model.encode(_image())
        assert [tuple(s.shape[1:]) for s in features.skips] == [(64, 8, 8, 8), (32, 16, 16, 16), (3, 32, 32, 32)]
        low, iou = model.decode(features, points=points, labels=labels, multimask_output=True)
        assert low.shape == (1, 3, 32, 32, 32) and iou.shape == (1, 3)
        again, _ = model.decode(features, points=points, labels=labels, mask_input=low[:, :1])
        assert again.shape == (1, 1, 32, 32, 32)
        with pytest.raises(InputError, match=r"mask_input must be \(B, 1, 32, 32, 32\)"):
            model.decode(features, points=points, labels=labels, mask_input=torch.zeros(1, 1, 16, 16, 16))


def test_a_fresh_fine_head_answers_as_the_s4_model_it_was_added_to(tmp_path):
    """A run adds the head to trained S/4 weights (train.reinit); until training gives its read-out weights, the S/2
    logits are the S/4 logits upsampled, so the continuation starts where the S/4 model was. reinit resets the
    head's layers and then its own zero read-out, in that order."""
    from medsam3d.training.trainer import build_from, reinitialise

    coarse = _model(False)
    torch.save({"model": coarse.state_dict()}, tmp_path / "s4.pt")
    spec = {"name": "medsam3d-tiny", "config": dict(SMALL, fine_output=True), "checkpoint": str(tmp_path / "s4.pt")}
    fresh = ["image_encoder.fine_skip", "mask_decoder.fine_head"]
    fine = build_from(spec, torch.device("cpu"), fresh)
    reinitialise(fine, fresh)
    fine.eval()
    points, labels = _click()
    with torch.no_grad():
        for multimask in (True, False):
            want, want_iou = coarse.decode(coarse.encode(_image()), points=points, labels=labels,
                                           multimask_output=multimask)
            got, got_iou = fine.decode(fine.encode(_image()), points=points, labels=labels,
                                       multimask_output=multimask)
            up = F.interpolate(want, scale_factor=2, mode="trilinear", align_corners=False)
            torch.testing.assert_close(got, up, rtol=0, atol=1e-5)
            torch.testing.assert_close(got_iou, want_iou)
    with pytest.raises(InputError, match="missing key"):
        build_from(spec, torch.device("cpu"), [])  # the new parts must be named to be left out of the checkpoint


@pytest.mark.parametrize("fine", [True, False])
def test_keep_best_returns_exactly_the_best_scored_mask_of_a_full_multimask_decode(fine):
    """Inference keeps one mask, so the fine head corrects only that one; it must be the very mask (values
    included) that a full decode ranks first, per sample, whatever token it came from."""
    model = _model(fine)
    if fine:
        _open_read_out(model)
    points = torch.tensor([[[30.0, 28.0, 33.0]], [[12.0, 50.0, 20.0]], [[45.0, 10.0, 40.0]]])
    labels = torch.ones(3, 1, dtype=torch.long)
    # scores (B, 4) over the 4 mask tokens, so that the 3 samples pick tokens 1, 3 and 2
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.1, 0.2, 0.3, 0.8], [0.9, 0.1, 0.7, 0.3]])
    model.mask_decoder._score_masks = lambda masks, upscaled: scores.clone()
    with torch.no_grad():
        features = model.encode(_image())
        every, every_iou = model.decode(features, points=points, labels=labels, multimask_output=True)
        best, best_iou = model.decode(features, points=points, labels=labels, multimask_output=True, keep_best=True)
        single, _ = model.decode(features, points=points, labels=labels, keep_best=True)
        plain, _ = model.decode(features, points=points, labels=labels)
    picks = every_iou.argmax(1)
    assert picks.tolist() == [0, 2, 1]  # of the multimask outputs (tokens 1-3)
    assert best.shape == (3, 1, *every.shape[2:]) and best_iou.shape == (3, 1)
    for b, pick in enumerate(picks.tolist()):
        torch.testing.assert_close(best[b, 0], every[b, pick], rtol=0, atol=1e-5)
        assert float(best_iou[b, 0]) == float(every_iou[b, pick])
    torch.testing.assert_close(single, plain)  # one mask asked for: keep_best changes nothing


def test_a_trained_read_out_adds_detail_read_from_the_s2_features():
    model = _model(True)
    _open_read_out(model)
    points, labels = _click()
    with torch.no_grad():
        features = model.encode(_image())
        low, _ = model.decode(features, points=points, labels=labels)
        s8, s4, s2 = features.skips
        flipped = features._replace(skips=(s8, s4, s2.flip(2)))
        other, _ = model.decode(flipped, points=points, labels=labels)
    assert not torch.allclose(low, other, atol=1e-4)  # the S/2 map shapes the answer
    # and only through the read-out: zeroed, the S/2 map no longer matters
    model.mask_decoder.fine_head.reset_parameters()
    with torch.no_grad():
        closed_a, _ = model.decode(features, points=points, labels=labels)
        closed_b, _ = model.decode(flipped, points=points, labels=labels)
    torch.testing.assert_close(closed_a, closed_b)


def test_training_steps_through_the_fine_output_and_reach_its_zero_read_out():
    from medsam3d.training.interactive import InteractiveStep

    model = _model(True).train()
    step = InteractiveStep(model, clicks=3, box_prob=0.0, loss_downsample=2)
    images = _image()
    targets = torch.zeros(1, 1, 64, 64, 64)
    targets[..., 20:40, 18:38, 24:44] = 1
    loss, metrics = step(images, targets, seed=3)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= metrics["dice"] <= 1.0
    assert _read_out_grad(model) > 0  # a zero read-out still learns: its gradient is the S/2 features times the error


def test_segmenter_refines_and_carries_s2_logits_across_windows():
    from medsam3d.io import Volume
    from medsam3d.segmenter import Segmenter

    model = _model(True)
    _open_read_out(model)
    rng = np.random.default_rng(0)
    volume = Volume(rng.uniform(10, 100, (120, 64, 64)).astype(np.float32), (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    seg = Segmenter(model=model)
    seg.set_volume(volume, modality="mr")
    first = seg.predict(points=[[30, 32, 32]], labels=[1])
    assert first.mask.array.shape == volume.shape
    assert all(t.shape == (1, 1, 32, 32, 32) for t in seg._last_logits.values())
    # a second click far along axis 0 no longer fits the first window: the refinement moves, carrying the answer
    moved = seg.predict(points=[[30, 32, 32], [100, 32, 32]], labels=[1, 1], refine=True)
    assert moved.mask.array.shape == volume.shape
    assert all(t.shape == (1, 1, 32, 32, 32) for t in seg._last_logits.values())
    # the carry shifts S/2 logits: a known blob, seen from a window 16 voxels (8 low-res voxels) along axis 0
    from medsam3d.preprocess import Window

    old = Window(next(iter(seg._last_logits)), seg.size)
    blob = torch.full((1, 1, 32, 32, 32), -20.0)
    blob[..., 10:20, 12:20, 12:20] = 20.0
    seg._last_logits = {old.center_lps: blob}
    new = Window(tuple(old.voxel_to_lps(np.full(3, (seg.size - 1) / 2) + [16, 0, 0])), seg.size)
    carried = seg._carried_over(new)
    assert carried.shape == (1, 1, 32, 32, 32)
    assert (carried[0, 0, 3:11, 13:19, 13:19] > 0).all()
    inside = torch.zeros(32, 32, 32, dtype=torch.bool)
    inside[1:13, 11:21, 11:21] = True
    assert (carried[0, 0][~inside] < 0).all()


def test_holistic_distillation_takes_a_fine_student_under_an_s4_teacher():
    """The teacher's S/4 masks are upsampled to the student's S/2 grid for the output loss."""
    from medsam3d.training.interactive import HolisticDistillationStep

    student, teacher = _model(True).train(), _model(False, seed=1).eval()
    step = HolisticDistillationStep(student, teacher, clicks=2, weights={"feature": 1.0, "output": 1.0, "truth": 1.0})
    targets = torch.zeros(1, 1, 64, 64, 64)
    targets[..., 20:40, 18:38, 24:44] = 1
    loss, metrics = step(_image(), targets, seed=0)
    loss.backward()
    assert torch.isfinite(loss) and metrics["output_loss"] > 0
    assert _read_out_grad(student) > 0


def test_train_only_trains_the_named_parts_and_keeps_the_rest_fixed():
    from medsam3d.training.interactive import InteractiveStep
    from medsam3d.training.trainer import set_trainable

    model = _model(True).train()
    only = ["image_encoder.fine_skip", "mask_decoder.fine_head"]
    params = set_trainable(model, [], only)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(tuple(f"{o}." for o in only)) for n in names)
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n in names}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.SGD(params, lr=0.1)
    targets = torch.zeros(1, 1, 64, 64, 64)
    targets[..., 20:40, 18:38, 24:44] = 1
    loss, _ = InteractiveStep(model, clicks=2, loss_downsample=2)(_image(), targets, seed=1)
    loss.backward()
    optimiser.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= names
    with pytest.raises(InputError, match="train.only: medsam3d-tiny has no submodule 'mask_decoder.nope'"):
        set_trainable(model, [], ["mask_decoder.nope"])
