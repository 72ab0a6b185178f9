"""The training step (training.interactive.InteractiveStep): multimask first clicks training every mask token and
the IoU head, the ranking loss, following the chosen mask into the next click, multimask refinement, loss_clicks,
the fine output, and a sample actually learnt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import fine_model, random_image, read_out_grad, small_tiny


def _grad_norms(model) -> list[float]:
    hyper = model.mask_decoder.output_hypernetworks_mlps
    return [sum(float(p.grad.abs().sum()) for p in mlp.parameters() if p.grad is not None) for mlp in hyper]


def test_multimask_first_click_trains_every_mask_token_and_the_iou_head():
    from medsam3d.training.interactive import InteractiveStep

    image = torch.randn(1, 1, 64, 64, 64)
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 20:44, 18:40, 22:46] = 1

    model = small_tiny(first_click_multimask=True)
    loss, _ = InteractiveStep(model, clicks=1, loss_downsample=2)(image, target, seed=0)
    loss.backward()
    grads = _grad_norms(model)
    # token 0 (the single-mask output) is unused for a lone click; of tokens 1..3 only the best mask gets the mask loss
    assert grads[0] == 0 and sum(g > 0 for g in grads[1:]) == 1
    # ... but the IoU head learns to score all three
    iou_rows = model.mask_decoder.iou_prediction_head.layers[-1].bias.grad
    assert iou_rows[0] == 0 and bool((iou_rows[1:] != 0).all())

    single = small_tiny()  # medsam3d-tiny's code default: one mask (token 0), as SAM-Med3D and distilled students
    loss, _ = InteractiveStep(single, clicks=1, loss_downsample=2)(image, target, seed=0)
    loss.backward()
    grads = _grad_norms(single)
    assert grads[0] > 0 and all(g == 0 for g in grads[1:])
    assert bool((single.mask_decoder.iou_prediction_head.layers[-1].bias.grad[1:] == 0).all())


def test_rank_loss_is_zero_at_calibration_and_prefers_the_right_order():
    from medsam3d.training.interactive import InteractiveStep

    step = InteractiveStep(small_tiny(first_click_multimask=True), clicks=1, rank_weight=1.0)
    true = torch.tensor([[0.1, 0.3, 0.6], [0.7, 0.2, 0.4]])
    assert float(step._rank_loss(true.clone(), true)) == pytest.approx(0.0, abs=1e-6)
    right = torch.tensor([[0.2, 0.3, 0.4], [0.4, 0.3, 0.2]])  # right order, poorly calibrated
    wrong = torch.tensor([[0.4, 0.3, 0.2], [0.2, 0.3, 0.4]])  # the order reversed
    assert float(step._rank_loss(right, true)) < float(step._rank_loss(wrong, true))
    # its gradient raises the truly best mask's score and lowers the others'
    pred = torch.full((1, 3), 0.5, requires_grad=True)
    step._rank_loss(pred, true[:1]).backward()
    assert pred.grad[0, 2] < 0 and pred.grad[0, 0] > 0


def test_rank_weight_adds_to_the_loss_only_for_the_multimask_click():
    from medsam3d.training.interactive import InteractiveStep

    image = torch.randn(1, 1, 64, 64, 64)
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 20:44, 18:40, 22:46] = 1
    model = small_tiny(first_click_multimask=True).eval()
    plain, info = InteractiveStep(model, clicks=2, loss_downsample=2)(image, target, seed=0)
    ranked, info_ranked = InteractiveStep(model, clicks=2, loss_downsample=2, rank_weight=2.0)(image, target, seed=0)
    assert float(ranked.detach()) > float(plain.detach())
    assert info["rank_acc"] in (0.0, 1.0) and info_ranked["rank_acc"] == info["rank_acc"]
    _, single_info = InteractiveStep(small_tiny().eval(), clicks=1, loss_downsample=2)(image, target, seed=0)
    assert np.isnan(single_info["rank_acc"])  # no multimask click, nothing ranked


@pytest.mark.parametrize("follow", ["best", "predicted"])
def test_interactive_step_follows_the_chosen_mask_into_the_next_click(follow):
    """With two clicks the second decode gets, as its mask prompt, the first's lowest-loss mask ("best") or the
    one its IoU head scored highest ("predicted")."""
    from medsam3d.training.interactive import InteractiveStep

    model = small_tiny(first_click_multimask=True)
    image = torch.randn(1, 1, 64, 64, 64)
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 10:30, 10:30, 10:30] = 1
    soft = F.avg_pool3d(target, 2)
    step = InteractiveStep(model, clicks=2, loss_downsample=2, follow=follow)
    seen = []
    decode = model.decode

    def spy(*args, **kwargs):
        low_res, iou = decode(*args, **kwargs)
        if kwargs.get("mask_input") is None:  # the first click: a head that scores the worst mask highest
            logits = F.interpolate(low_res.detach(), size=(32,) * 3, mode="trilinear", align_corners=False)
            iou = step._mask_losses(logits, soft)
        seen.append((kwargs.get("mask_input"), low_res.detach(), iou.detach()))
        return low_res, iou

    model.decode = spy
    step(image, target, seed=3)
    first_masks, losses = seen[0][1], seen[0][2]  # (1, 3, 16, 16, 16), (1, 3)
    best, worst = int(losses.argmin(1)), int(losses.argmax(1))
    assert first_masks.shape[1] == 3 and best != worst
    kept = best if follow == "best" else worst
    assert torch.equal(seen[1][0], first_masks[:, kept:kept + 1])


@pytest.mark.parametrize("refine", [False, True])
def test_interactive_step_decodes_multimask_at_every_click_with_multimask_refine(refine):
    from medsam3d.training.interactive import InteractiveStep

    model = small_tiny(first_click_multimask=True, multimask_refine=refine)
    calls = []
    decode = model.decode

    def spy(*args, **kwargs):
        low_res, iou = decode(*args, **kwargs)
        calls.append((kwargs["multimask_output"], low_res.shape[1], iou.shape[1]))
        return low_res, iou

    model.decode = spy
    image = torch.randn(1, 1, 64, 64, 64)
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 10:30, 10:30, 10:30] = 1
    _, info = InteractiveStep(model, clicks=3, loss_downsample=2, rank_weight=1.0)(image, target, seed=1)
    expected = [(True, 3, 3)] * 3 if refine else [(True, 3, 3), (False, 1, 1), (False, 1, 1)]
    assert calls == expected
    assert 0.0 <= info["rank_acc"] <= 1.0  # averaged over every multimask decode of the step


def test_loss_clicks_trains_the_first_click_and_a_draw_of_the_others_and_decodes_them_all():
    from medsam3d.training.interactive import InteractiveStep

    model = small_tiny(first_click_multimask=True, multimask_refine=True)
    calls = []
    decode = model.decode

    def spy(*args, **kwargs):
        low_res, iou = decode(*args, **kwargs)
        calls.append((low_res.requires_grad, kwargs["points"].shape[1]))
        return low_res, iou

    model.decode = spy
    image = torch.randn(1, 1, 64, 64, 64)
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 10:30, 10:30, 10:30] = 1
    step = InteractiveStep(model, clicks=6, loss_downsample=2, loss_clicks=3)
    loss, _ = step(image, target, seed=5)
    assert [n for _, n in calls] == [1, 2, 3, 4, 5, 6]  # every click decoded, with every click so far
    graded = [i for i, (grad, _) in enumerate(calls) if grad]
    assert graded[0] == 0 and len(graded) == 3  # the first click and two others carry the loss
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_encoder.parameters())
    draws = set()
    for seed in range(6):  # a fresh draw per step, always including the first click
        calls.clear()
        InteractiveStep(model, clicks=6, loss_downsample=2, loss_clicks=3)(image, target, seed=seed)
        draws.add(tuple(i for i, (grad, _) in enumerate(calls) if grad))
    assert len(draws) > 1 and all(d[0] == 0 and len(d) == 3 for d in draws)
    calls.clear()
    InteractiveStep(model, clicks=3, loss_downsample=2)(image, target, seed=5)
    assert all(grad for grad, _ in calls) and len(calls) == 3  # without loss_clicks, every click is trained


def test_interactive_step_learns_to_segment_a_sample():
    """Not only the loss: after a few dozen steps on one sample, the clicked object is actually segmented."""
    from medsam3d.models import build_model
    from medsam3d.training.interactive import InteractiveStep

    torch.manual_seed(0)
    model = build_model("medsam3d-tiny", img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96,
                        decoder_heads=2, iou_head_hidden_dim=32, mask_in_chans=8).train()
    image = torch.randn(1, 1, 64, 64, 64) * 0.3
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 20:44, 18:40, 22:46] = 1
    image = image + 2 * target
    step = InteractiveStep(model, clicks=1, loss_downsample=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dices = []
    for i in range(70):
        loss, info = step(image, target, seed=i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dices.append(info["dice"])
    assert max(dices[-5:]) > 0.6 and dices[-1] > dices[0]


def test_training_steps_through_the_fine_output_and_reach_its_zero_read_out():
    from medsam3d.training.interactive import InteractiveStep

    model = fine_model(True).train()
    step = InteractiveStep(model, clicks=3, box_prob=0.0, loss_downsample=2)
    images = random_image()
    targets = torch.zeros(1, 1, 64, 64, 64)
    targets[..., 20:40, 18:38, 24:44] = 1
    loss, metrics = step(images, targets, seed=3)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= metrics["dice"] <= 1.0
    assert read_out_grad(model) > 0  # a zero read-out still learns: its gradient is the S/2 features times the error
