"""medsam3d-tiny's ``fine_output``: S/2 logits (64^3 for a 128^3 window) from the stem's S/2 map.

What must hold in the model: the shapes where the logits travel (decode, mask prompts), keep_best returning the very
mask a full decode ranks first, and a detail path that really reads the S/2 features. (Elsewhere: a fresh head
answering as the S/4 model it is added to, and train.only, in tests/training/test_trainer.py; training steps in
test_interactive_step.py and test_distill.py; the Segmenter carrying S/2 logits in tests/test_segmenter.py.)"""

from __future__ import annotations

import pytest
import torch

from medsam3d.errors import InputError

from helpers import fine_model, one_click, open_read_out, random_image


def test_fine_output_decodes_s2_logits_and_takes_them_back_as_the_mask_prompt():
    model = fine_model(True)
    assert model.low_res_size == 32 and fine_model(False).low_res_size == 16
    points, labels = one_click()
    with torch.no_grad():
        features = model.encode(random_image())
        assert [tuple(s.shape[1:]) for s in features.skips] == [(64, 8, 8, 8), (32, 16, 16, 16), (3, 32, 32, 32)]
        low, iou = model.decode(features, points=points, labels=labels, multimask_output=True)
        assert low.shape == (1, 3, 32, 32, 32) and iou.shape == (1, 3)
        again, _ = model.decode(features, points=points, labels=labels, mask_input=low[:, :1])
        assert again.shape == (1, 1, 32, 32, 32)
        with pytest.raises(InputError, match=r"mask_input must be \(B, 1, 32, 32, 32\)"):
            model.decode(features, points=points, labels=labels, mask_input=torch.zeros(1, 1, 16, 16, 16))


@pytest.mark.parametrize("fine", [True, False])
def test_keep_best_returns_exactly_the_best_scored_mask_of_a_full_multimask_decode(fine):
    """Inference keeps one mask, so the fine head corrects only that one; it must be the very mask (values
    included) that a full decode ranks first, per sample, whatever token it came from."""
    model = fine_model(fine)
    if fine:
        open_read_out(model)
    points = torch.tensor([[[30.0, 28.0, 33.0]], [[12.0, 50.0, 20.0]], [[45.0, 10.0, 40.0]]])
    labels = torch.ones(3, 1, dtype=torch.long)
    # scores (B, 4) over the 4 mask tokens, so that the 3 samples pick tokens 1, 3 and 2
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.1, 0.2, 0.3, 0.8], [0.9, 0.1, 0.7, 0.3]])
    model.mask_decoder._score_masks = lambda masks, upscaled: scores.clone()
    with torch.no_grad():
        features = model.encode(random_image())
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
    model = fine_model(True)
    open_read_out(model)
    points, labels = one_click()
    with torch.no_grad():
        features = model.encode(random_image())
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
