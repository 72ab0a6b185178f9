"""Bad input to encode/decode gets a clear ValueError naming the problem."""

from __future__ import annotations

import pytest
import torch

from medsam3d.errors import InputError
from medsam3d.models import build_model

from conftest import SMALL_SAM


@pytest.fixture(scope="module")
def model():
    return build_model("sam-med3d", **SMALL_SAM)


@pytest.fixture(scope="module")
def emb(model):
    with torch.no_grad():
        return model.encode(torch.randn(1, 1, 128, 128, 128)).embedding


@pytest.mark.parametrize(
    "image,message",
    [
        (torch.randn(1, 128, 128, 128), "must be 5D"),
        (torch.randn(1, 2, 128, 128, 128), "1 channel"),
        (torch.randn(1, 1, 64, 64, 64), "crop must be 128"),
        (torch.zeros(1, 1, 128, 128, 128, dtype=torch.int16), "floating point"),
        (torch.full((1, 1, 128, 128, 128), float("nan")), "NaN or infinite"),
        (torch.full((1, 1, 128, 128, 128), float("inf")), "NaN or infinite"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_images(model, image, message):
    with pytest.raises(ValueError, match=message):
        model.encode(image)


P = torch.tensor([[[64.0, 64, 64]]])
L = torch.tensor([[1]])


@pytest.mark.parametrize(
    "prompts,message",
    [
        (dict(points=torch.tensor([[[64.0, 64, 128]]]), labels=L), r"outside the 128\^3 crop"),
        (dict(points=torch.tensor([[[-1.0, 64, 64]]]), labels=L), "outside"),
        (dict(points=torch.tensor([[[float("nan"), 64, 64]]]), labels=L), "NaN"),
        (dict(points=P, labels=torch.tensor([[2]])), r"labels must be 1 \(positive\) or 0 \(negative\), got \[2\]"),
        (dict(points=P, labels=torch.tensor([[-1]])), "got \\[-1\\]"),
        (dict(points=P), "together"),
        (dict(points=torch.tensor([[64.0, 64]]), labels=L), r"points must be \(B, N, 3\)"),
        (dict(points=P, labels=torch.tensor([[1, 1]])), r"labels must be \(B, N\)"),
        (dict(points=P, labels=L, mask_input=torch.zeros(1, 1, 16, 16, 16)), "mask_input must be"),
        (dict(points=P, labels=L, boxes=torch.tensor([[1.0, 1, 1, 5, 5, 5]])), "takes no box prompts"),
        (dict(points=torch.cat([P, P]), labels=torch.cat([L, L]), mask_input=torch.zeros(3, 1, 32, 32, 32)),
         "disagree on batch"),
    ],
)
def test_bad_prompts(model, emb, prompts, message):
    with pytest.raises(InputError, match=message):
        model.decode(emb, **prompts)


def test_bad_embedding(model, emb):
    with pytest.raises(ValueError, match="embedding must be"):
        model.decode(emb[:, :10], points=P, labels=L)
    with pytest.raises(ValueError, match="embedding batch 2 must be 1 or the prompt batch 3"):
        model.decode(torch.cat([emb, emb]), points=P.expand(3, -1, -1), labels=L.expand(3, -1))


def test_bad_boxes_for_a_box_model():
    tiny = build_model("medsam3d-tiny", embed_dim=48, num_heads=2, out_chans=48)
    emb = torch.zeros(1, 48, 8, 8, 8)
    with pytest.raises(ValueError, match="first corner <= second"):
        tiny.decode(emb, boxes=torch.tensor([[50.0, 50, 50, 40, 60, 60]]))
    with pytest.raises(ValueError, match="inside the 128"):
        tiny.decode(emb, boxes=torch.tensor([[0.0, 0, 0, 200, 60, 60]]))
