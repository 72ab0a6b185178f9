"""How masks are scored: from SAM's IoU token, or by the mask IoU head from what each mask covers; and weights that
still hold the token's IoU head loading strictly into a mask-head model."""

from __future__ import annotations

import pytest
import torch

from helpers import small_tiny


@pytest.mark.parametrize("mask_head", [False, True])
def test_masks_are_scored_from_the_iou_token_or_from_what_they_cover(mask_head):
    model = small_tiny(first_click_multimask=True, mask_iou_head=mask_head).eval()
    keys = set(model.state_dict())
    sam_keys = set(small_tiny(first_click_multimask=True).state_dict())
    # the mask head replaces SAM's IoU head (a checkpoint with SAM's head loads: its keys are skipped)
    assert keys - sam_keys == ({k for k in keys if k.startswith("mask_decoder.mask_iou_head.")} if mask_head else set())
    assert sam_keys - keys == (
        {k for k in sam_keys if k.startswith("mask_decoder.iou_prediction_head.")} if mask_head else set())
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


def test_weights_that_still_hold_the_token_iou_head_load_strictly_into_a_mask_head_model():
    from medsam3d.errors import InputError
    from medsam3d.models import build_model

    config = dict(img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96, decoder_heads=2,
                  iou_head_hidden_dim=32, mask_in_chans=8, mask_iou_head=True)
    model = small_tiny(mask_iou_head=True)
    both = {**small_tiny().state_dict(), **model.state_dict()}  # as saved before the unused head was left out
    loaded = build_model("medsam3d-tiny", checkpoint=both, **config).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="unexpected key.*mask_decoder.bogus"):  # every other key as strict as before
        build_model("medsam3d-tiny", checkpoint={**both, "mask_decoder.bogus": torch.zeros(1)}, **config)
