"""The first click: protocol-like simulated clicks, multimask training with a supervised IoU head, the
Segmenter's choice among the masks, and size-aware structure sampling."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam3d.evaluation.protocol import deepest_point, next_click
from medsam3d.training.clicks import error_clicks, first_clicks
from medsam3d.training.dataset import StepBatchSampler, size_repeats


def _box_target(size: int = 32) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size, size)
    target[..., 4:20, 6:26, 8:16] = 1
    return target


def test_central_clicks_are_the_protocols_clicks():
    target = _box_target()
    gen = torch.Generator().manual_seed(0)
    points, labels = first_clicks(target, gen, central_prob=1.0)
    assert labels.tolist() == [[1]]
    assert points[0, 0].tolist() == deepest_point(target[0, 0].numpy() > 0).tolist()

    pred = torch.zeros_like(target)
    pred[..., 4:20, 6:26, 8:12] = 1  # the target's far half in z is missed
    pred[..., 25:28, 25:28, 25:28] = 1  # and a small extra blob
    points, labels = error_clicks(pred, target, gen, central_prob=1.0)
    where, sign = next_click(pred[0, 0].numpy() > 0, target[0, 0].numpy() > 0)
    assert labels.tolist() == [[sign]] == [[1]]
    assert points[0, 0].tolist() == where.tolist()


def test_random_clicks_still_vary_when_central_prob_is_zero():
    target = _box_target()
    clicks = {tuple(first_clicks(target, torch.Generator().manual_seed(s))[0][0, 0].tolist()) for s in range(8)}
    assert len(clicks) > 4  # uniformly random voxels of the target, not one fixed point
    for c in clicks:
        assert target[(0, 0, *map(int, c))] == 1


def _small_tiny(**overrides):
    from medsam3d.models import build_model

    torch.manual_seed(0)
    return build_model("medsam3d-tiny", img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96,
                       decoder_heads=2, iou_head_hidden_dim=32, mask_in_chans=8, **overrides).train()


def _grad_norms(model) -> list[float]:
    hyper = model.mask_decoder.output_hypernetworks_mlps
    return [sum(float(p.grad.abs().sum()) for p in mlp.parameters() if p.grad is not None) for mlp in hyper]


def test_multimask_first_click_trains_every_mask_token_and_the_iou_head():
    from medsam3d.training.interactive import InteractiveStep

    image = torch.randn(1, 1, 64, 64, 64)
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 20:44, 18:40, 22:46] = 1

    model = _small_tiny(first_click_multimask=True)
    loss, _ = InteractiveStep(model, clicks=1, loss_downsample=2)(image, target, seed=0)
    loss.backward()
    grads = _grad_norms(model)
    # token 0 (the single-mask output) is unused for a lone click; of tokens 1..3 only the best mask gets the mask loss
    assert grads[0] == 0 and sum(g > 0 for g in grads[1:]) == 1
    # ... but the IoU head learns to score all three
    iou_rows = model.mask_decoder.iou_prediction_head.layers[-1].bias.grad
    assert iou_rows[0] == 0 and bool((iou_rows[1:] != 0).all())

    single = _small_tiny()  # medsam3d-tiny's code default: one mask (token 0), as SAM-Med3D and distilled students
    loss, _ = InteractiveStep(single, clicks=1, loss_downsample=2)(image, target, seed=0)
    loss.backward()
    grads = _grad_norms(single)
    assert grads[0] > 0 and all(g == 0 for g in grads[1:])
    assert bool((single.mask_decoder.iou_prediction_head.layers[-1].bias.grad[1:] == 0).all())


def test_rank_loss_is_zero_at_calibration_and_prefers_the_right_order():
    from medsam3d.training.interactive import InteractiveStep

    step = InteractiveStep(_small_tiny(first_click_multimask=True), clicks=1, rank_weight=1.0)
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
    model = _small_tiny(first_click_multimask=True).eval()
    plain, info = InteractiveStep(model, clicks=2, loss_downsample=2)(image, target, seed=0)
    ranked, info_ranked = InteractiveStep(model, clicks=2, loss_downsample=2, rank_weight=2.0)(image, target, seed=0)
    assert float(ranked.detach()) > float(plain.detach())
    assert info["rank_acc"] in (0.0, 1.0) and info_ranked["rank_acc"] == info["rank_acc"]
    _, single_info = InteractiveStep(_small_tiny().eval(), clicks=1, loss_downsample=2)(image, target, seed=0)
    assert np.isnan(single_info["rank_acc"])  # no multimask click, nothing ranked


@pytest.mark.parametrize("follow", ["best", "predicted"])
def test_interactive_step_follows_the_chosen_mask_into_the_next_click(follow):
    """With two clicks the second decode gets, as its mask prompt, the first's lowest-loss mask ("best") or the
    one its IoU head scored highest ("predicted")."""
    from medsam3d.training.interactive import InteractiveStep

    model = _small_tiny(first_click_multimask=True)
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

    model = _small_tiny(first_click_multimask=True, multimask_refine=refine)
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


class _ThreeMaskModel:
    """Decoder stand-in offering three different masks with IoU scores 0.2, 0.9, 0.5 for a lone click."""

    name = "three-masks"
    is_trained = True

    def __init__(self) -> None:
        self.config = SimpleNamespace(img_size=64, box_prompts=False, first_click_multimask=True)
        self.multimask_calls: list[bool] = []

    def encode(self, image):
        return image

    def decode(self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask_output=False,
               keep_best=False):  # keep_best ignored: the Segmenter must pick
        self.multimask_calls.append(multimask_output)
        low = torch.full((1, 3, 16, 16, 16), -10.0)
        low[0, 0, 6:10, 6:10, 6:10] = 10  # small
        low[0, 1, 4:12, 4:12, 4:12] = 10  # medium: the highest IoU score
        low[0, 2, 2:14, 2:14, 2:14] = 10  # large
        iou = torch.tensor([[0.2, 0.9, 0.5]])
        if not multimask_output:
            return low[:, :1], iou[:, :1]
        return low, iou


def test_segmenter_keeps_the_mask_with_the_highest_predicted_iou_for_a_lone_click():
    from medsam3d.io import Volume
    from medsam3d.segmenter import Segmenter

    image = np.random.default_rng(0).uniform(10, 100, (64, 64, 64)).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    model = _ThreeMaskModel()
    seg = Segmenter(model=model)
    seg.set_volume(volume, modality="mr")
    result = seg.predict(points=[[32, 32, 32]], labels=[1])
    assert model.multimask_calls == [True]
    assert result.iou == pytest.approx([0.9])
    # the medium cube: 8 low-res voxels = 32 full voxels a side, 1.5 mm voxels on both grids
    assert abs(int(result.mask.array.sum()) - 32**3) < 0.1 * 32**3
    seg.predict(points=[[32, 32, 32], [40, 40, 40]], labels=[1, 0], refine=True)
    assert model.multimask_calls[-1] is False  # more than one click: no ambiguity left to resolve


def test_segmenter_with_multimask_refine_keeps_the_best_scored_mask_at_every_click():
    from medsam3d.io import Volume
    from medsam3d.segmenter import Segmenter

    image = np.random.default_rng(0).uniform(10, 100, (64, 64, 64)).astype(np.float32)
    volume = Volume(image, (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    model = _ThreeMaskModel()
    model.config.multimask_refine = True
    seg = Segmenter(model=model)
    seg.set_volume(volume, modality="mr")
    seg.predict(points=[[32, 32, 32]], labels=[1])
    result = seg.predict(points=[[32, 32, 32], [40, 40, 40]], labels=[1, 0], refine=True)
    assert model.multimask_calls == [True, True]
    assert result.iou == pytest.approx([0.9])
    assert abs(int(result.mask.array.sum()) - 32**3) < 0.1 * 32**3  # the medium cube again, not token 0's small one
    seg.predict(box=[20, 20, 20, 44, 44, 44])
    assert model.multimask_calls[-1] is True  # a box too


def test_size_repeats_favour_large_structures_within_a_cap():
    voxels = np.array([100, 1_000, 10_000, 100_000, 1_000_000])
    assert size_repeats(voxels, 0.0).tolist() == [1, 1, 1, 1, 1]
    assert size_repeats(voxels, 0.5).tolist() == [1, 1, 1, 3, 4]


def test_sampler_with_repeats_draws_each_structure_that_often_per_epoch_as_different_crops():
    repeats = np.array([1, 3, 2])
    sampler = StepBatchSampler(3, batch_size=2, rank=0, world=1, seed=0, repeats=repeats)
    keys = [key for batch, _ in zip(sampler, range(6)) for key in batch]  # 12 samples = two epochs
    epoch0, epoch1 = keys[:6], keys[6:]
    assert sorted(i for i, _ in epoch0) == sorted(i for i, _ in epoch1) == [0, 1, 1, 1, 2, 2]
    assert len(set(keys)) == 12  # every (structure, draw) once: a repeated structure is a new crop each time
    assert {d for _, d in epoch0} <= {0, 1, 2} and {d for _, d in epoch1} <= {3, 4, 5}
    resumed = StepBatchSampler(3, batch_size=2, rank=0, world=1, seed=0, repeats=repeats, start=4)
    assert next(iter(resumed)) == keys[8:10]
    # without repeats, the draw is the epoch, as before size-aware sampling existed
    plain = StepBatchSampler(3, batch_size=3, rank=0, world=1, seed=0)
    assert [sorted(b) for b, _ in zip(plain, range(2))] == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (1, 1), (2, 1)]]


def test_reinitialise_gives_only_the_named_part_fresh_weights():
    from medsam3d.errors import InputError
    from medsam3d.training.trainer import reinitialise

    model = _small_tiny(first_click_multimask=True)
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


@pytest.mark.parametrize("mask_head", [False, True])
def test_masks_are_scored_from_the_iou_token_or_from_what_they_cover(mask_head):
    model = _small_tiny(first_click_multimask=True, mask_iou_head=mask_head).eval()
    keys = set(model.state_dict())
    sam_keys = set(_small_tiny(first_click_multimask=True).state_dict())
    assert keys - sam_keys == ({k for k in keys if k.startswith("mask_decoder.mask_iou_head.")} if mask_head else set())
    assert sam_keys <= keys  # a checkpoint without the mask head loads with train.reinit naming it
    transformer = model.mask_decoder.transformer
    run = transformer.forward
    scramble = {"on": False}

    def forward(*args):
        hs, src = run(*args)
        if scramble["on"]:  # replace the IoU token's output with noise
            hs = torch.cat([torch.randn_like(hs[:, :1]) * 10, hs[:, 1:]], 1)
        return hs, src

    transformer.forward = forward
    with torch.no_grad():
        emb = model.encode(torch.randn(1, 1, 64, 64, 64))
        prompt = {"points": torch.tensor([[[30.0, 31.0, 29.0]]]), "labels": torch.ones(1, 1, dtype=torch.long)}
        masks, iou = model.decode(emb, multimask_output=True, **prompt)
        scramble["on"] = True
        masks_scrambled, iou_scrambled = model.decode(emb, multimask_output=True, **prompt)
    assert torch.equal(masks, masks_scrambled)  # the masks never read the IoU token's output
    assert torch.allclose(iou, iou_scrambled) == mask_head
    if mask_head:  # the score follows the mask: an empty mask and a full one score differently
        upscaled = torch.randn(1, 6, 16, 16, 16)
        extremes = torch.stack([torch.full((16, 16, 16), -20.0), torch.full((16, 16, 16), 20.0)])[None]
        scores = model.mask_decoder._score_masks(extremes, upscaled)
        assert scores.shape == (1, 2) and not torch.isclose(scores[0, 0], scores[0, 1])


def test_a_run_can_add_the_mask_head_to_weights_without_it(tmp_path):
    from medsam3d.errors import InputError
    from medsam3d.training.trainer import build_from

    old = _small_tiny(first_click_multimask=True)
    torch.save({"model": old.state_dict()}, tmp_path / "old.pt")
    config = dict(img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96, decoder_heads=2,
                  iou_head_hidden_dim=32, mask_in_chans=8, first_click_multimask=True, mask_iou_head=True)
    spec = {"name": "medsam3d-tiny", "config": config, "checkpoint": str(tmp_path / "old.pt")}
    new = build_from(spec, torch.device("cpu"), ["mask_decoder.mask_iou_head"])
    state = new.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in old.state_dict().items())  # everything else is the old weights
    with pytest.raises(InputError, match="missing key.*mask_iou_head"):
        build_from(spec, torch.device("cpu"), [])  # without train.reinit naming it, a missing part is an error



def test_loss_clicks_trains_the_first_click_and_a_draw_of_the_others_and_decodes_them_all():
    from medsam3d.training.interactive import InteractiveStep

    model = _small_tiny(first_click_multimask=True, multimask_refine=True)
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
