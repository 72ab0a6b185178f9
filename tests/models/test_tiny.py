"""medsam3d-tiny: our student keeps the common encode/decode interface and takes native 3D boxes."""

from __future__ import annotations

import pytest
import torch

from medsam3d.models import build_model
from medsam3d.models.promptable import ImageFeatures


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("medsam3d-tiny")


@torch.no_grad()
def test_tiny_encode_decode_shapes(tiny):
    image = torch.randn(2, 1, 128, 128, 128)
    emb = tiny.encode(image)
    assert emb.embedding.shape == (2, tiny.config.out_chans, 8, 8, 8)
    # the conv stem's S/8 and S/4 maps travel with the embedding, for the decoder's skip connections
    assert [tuple(s.shape) for s in emb.skips] == [(2, 64, 16, 16, 16), (2, 32, 32, 32, 32)]
    points = torch.tensor([[[64.0, 60, 70]], [[10.0, 20, 30]]])
    labels = torch.tensor([[1], [1]])
    low_res, iou = tiny.decode(emb, points=points, labels=labels)
    assert low_res.shape == (2, 1, 32, 32, 32) and iou.shape == (2, 1)
    low_res, iou = tiny.decode(ImageFeatures(emb.embedding[:1], tuple(s[:1] for s in emb.skips)), points=points, labels=labels, multimask_output=True)
    assert low_res.shape == (2, 3, 32, 32, 32) and iou.shape == (2, 3)


@torch.no_grad()
def test_tiny_box_prompt_is_two_corner_tokens(tiny):
    emb = tiny.encode(torch.randn(1, 1, 128, 128, 128))
    box = torch.tensor([[40.0, 40, 40, 80, 90, 70]])
    sparse, _ = tiny.prompt_encoder(None, None, box, None, 1)
    assert sparse.shape == (1, 2, tiny.config.out_chans)
    with_box, _ = tiny.decode(emb, boxes=box)
    other_box, _ = tiny.decode(emb, boxes=torch.tensor([[0.0, 0, 0, 20, 20, 20]]))
    assert not torch.allclose(with_box, other_box)
    point_and_box, _ = tiny.decode(emb, points=torch.tensor([[[60.0, 60, 60]]]), labels=torch.tensor([[1]]), boxes=box)
    assert point_and_box.shape == (1, 1, 32, 32, 32)


@torch.no_grad()
def test_tiny_encoder_handles_larger_grids(tiny):
    # the encoder itself runs on any cube of whole patches (position table resized), e.g. 256^3 -> 16^3 tokens
    out, s8, s4 = tiny.image_encoder(torch.randn(1, 1, 256, 256, 256))
    assert out.shape == (1, tiny.config.out_chans, 16, 16, 16)
    assert s8.shape[2:] == (32, 32, 32) and s4.shape[2:] == (64, 64, 64)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_tiny_decoder_needs_the_skips_and_sees_the_clicks_densely(tiny, monkeypatch):
    emb = tiny.encode(torch.randn(1, 1, 128, 128, 128))
    points, labels = torch.tensor([[[64.0, 60, 70]]]), torch.tensor([[1]])
    with pytest.raises(ValueError, match="needs the 2 skip map"):
        tiny.decode(emb.embedding, points=points, labels=labels)
    # the guidance maps reach the output: blanking them (sparse tokens unchanged) changes the logits
    with_maps, _ = tiny.decode(emb, points=points, labels=labels)
    blank = lambda *args: torch.zeros(1, 3, 32, 32, 32)  # noqa: E731
    monkeypatch.setattr("medsam3d.models.guidance.guidance_maps", blank)
    without_maps, _ = tiny.decode(emb, points=points, labels=labels)
    assert with_maps.shape == without_maps.shape == (1, 1, 32, 32, 32)
    assert (with_maps - without_maps).abs().max() > 1e-4


def test_guidance_maps_mark_clicks_and_previous_mask():
    from medsam3d.models.guidance import guidance_maps

    points = torch.tensor([[[0.0, 0, 0], [127.0, 127, 127], [64.0, 64, 64]]])
    labels = torch.tensor([[1, 1, 0]])
    previous = torch.full((1, 1, 32, 32, 32), -10.0)
    maps = guidance_maps(points, labels, previous, 1, 128, 32, torch.device("cpu"), torch.float32)
    assert maps.shape == (1, 3, 32, 32, 32)
    # crop voxel 0 and 127 fall at the centre of low-res voxels 0 and 31 (4 crop voxels each, centred at +1.5)
    assert maps[0, 0, 0, 0, 0] > 0.8 and maps[0, 0, 31, 31, 31] > 0.8 and maps[0, 0, 16, 16, 16] < 0.05
    assert maps[0, 1, 16, 16, 16] > 0.8 and maps[0, 1, 0, 0, 0] < 1e-6
    assert torch.allclose(maps[0, 2], torch.sigmoid(torch.tensor(-10.0)).expand(32, 32, 32))
    empty = guidance_maps(None, None, None, 2, 128, 32, torch.device("cpu"), torch.float32)
    assert empty.shape == (2, 3, 32, 32, 32) and empty.abs().sum() == 0


def test_tiny_trains(tiny):
    model = build_model("medsam3d-tiny", embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=64)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    image = torch.randn(1, 1, 128, 128, 128)
    target = torch.zeros(1, 1, 32, 32, 32)
    target[..., 10:20, 10:20, 10:20] = 1
    points, labels = torch.tensor([[[60.0, 60, 60]]]), torch.tensor([[1]])
    losses = []
    for _ in range(4):
        logits, _ = model(image, points=points, labels=labels)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.image_encoder.parameters())


def test_similarity_maps_find_what_looks_like_the_clicked_voxel():
    from medsam3d.models.guidance import similarity_maps

    # two "tissues" on an 8^3 feature grid: x < 4 has features (1, 0), x >= 4 has (0, 1)
    features = torch.zeros(1, 2, 8, 8, 8)
    features[:, 0, :4] = 1.0
    features[:, 1, 4:] = 1.0
    # crop 16^3 -> grid 8^3: crop voxel 2 is grid voxel 1 (tissue A), crop voxel 13 is grid voxel 6 (tissue B)
    points, labels = torch.tensor([[[2.0, 5, 5], [13.0, 5, 5]]]), torch.tensor([[1, 0]])
    maps = similarity_maps(features, points, labels, 1, 16)
    assert maps.shape == (1, 2, 8, 8, 8)
    assert torch.allclose(maps[0, 0, :4], torch.ones(4, 8, 8)) and torch.allclose(maps[0, 0, 4:], torch.zeros(4, 8, 8))
    assert torch.allclose(maps[0, 1, 4:], torch.ones(4, 8, 8)) and torch.allclose(maps[0, 1, :4], torch.zeros(4, 8, 8))
    # no negative click: its map is all zeros; a batch of 2 shares one feature map (batch 1 expands)
    maps = similarity_maps(features, points[:, :1].expand(2, -1, -1), labels[:, :1].expand(2, -1), 2, 16)
    assert maps.shape == (2, 2, 8, 8, 8) and maps[:, 1].abs().sum() == 0


def test_widening_the_guidance_path_keeps_what_the_model_computes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from medsam3d.models.guidance import GUIDANCE_CHANNELS

    torch.manual_seed(0)
    model = build_model("medsam3d-tiny", embed_dim=48, num_heads=2, out_chans=48)
    key = "mask_decoder.skip_fusion.guidance_in.weight"
    state = model.state_dict()
    state[key][:, 3:] = 0.0  # a model whose similarity channels do nothing: what a 3-channel model computes
    model.load_state_dict(state)
    old = {**state, key: state[key][:, :3].clone()}  # the same weights as a 3-channel checkpoint
    torch.save({"model": old}, tmp_path / "old.pt")
    script = Path(__file__).resolve().parents[2] / "experiments" / "widen_guidance.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "old.pt"), str(tmp_path / "new.pt")], check=True)
    widened = build_model("medsam3d-tiny", embed_dim=48, num_heads=2, out_chans=48, checkpoint=tmp_path / "new.pt")
    assert widened.state_dict()[key].shape[1] == GUIDANCE_CHANNELS
    image = torch.randn(1, 1, 128, 128, 128)
    prompts = dict(points=torch.tensor([[[64.0, 60, 70]]]), labels=torch.tensor([[1]]))
    with torch.no_grad():
        expected, _ = model(image, **prompts)
        got, _ = widened(image, **prompts)
    assert torch.allclose(expected, got, atol=1e-6)
