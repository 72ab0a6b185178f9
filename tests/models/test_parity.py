"""Parity with the public reference implementations (fixtures in ../shared/reference), to <= 1e-4."""

from __future__ import annotations

import pytest
import torch

from medsam3d.models import build_model

from conftest import as_float32

TOL = 1e-4


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def sam(sam_fixture):
    return build_model("sam-med3d", checkpoint=as_float32(sam_fixture["state_dict"]), **sam_fixture["config"])


@torch.no_grad()
@pytest.mark.parametrize("padded_reference", [False, True], ids=["exact", "padded-baseline"])
def test_sam_med3d_image_embedding(sam, sam_fixture, padded_reference):
    sam.image_encoder.padded_reference = padded_reference
    try:
        emb = sam.encode(sam_fixture["image"].float()).embedding
    finally:
        sam.image_encoder.padded_reference = False
    assert max_err(emb, sam_fixture["image_embeddings"]) <= TOL


@torch.no_grad()
def test_sam_med3d_dense_positional_encoding(sam, sam_fixture):
    assert max_err(sam.prompt_encoder.get_dense_pe(), sam_fixture["dense_pe"]) <= TOL


@torch.no_grad()
@pytest.mark.parametrize("case", range(4))
def test_sam_med3d_decoder_cases(sam, sam_fixture, case):
    c = sam_fixture["cases"][case]
    sparse, dense = sam.prompt_encoder(c["points"], c["labels"], None, c["mask_input"], c["points"].shape[0])
    assert max_err(sparse, c["sparse_embeddings"]) <= TOL
    assert max_err(dense, c["dense_embeddings"]) <= TOL
    low_res, iou = sam.decode(sam_fixture["image_embeddings"], points=c["points"], labels=c["labels"],
                              mask_input=c["mask_input"], multimask_output=c["multimask_output"])
    assert max_err(low_res, c["low_res_masks"]) <= TOL
    assert max_err(iou, c["iou_predictions"]) <= TOL


@torch.no_grad()
def test_sam_med3d_end_to_end_from_image(sam, sam_fixture):
    c = sam_fixture["cases"][1]
    low_res, iou = sam(sam_fixture["image"].float(), points=c["points"], labels=c["labels"], multimask_output=True)
    assert max_err(low_res, c["low_res_masks"]) <= TOL


@torch.no_grad()
def test_fastsam3d_student_outputs(student_fixture):
    cfg = student_fixture["config"]
    student = build_model("fastsam3d", checkpoint=as_float32(student_fixture["state_dict"]), **cfg)
    image = student_fixture["image"].float()
    features = student.image_encoder.forward_features(image)
    assert len(features) == len(student_fixture["outputs"])
    for ours, ref in zip(features, student_fixture["outputs"]):
        assert max_err(ours, ref) <= TOL
    assert max_err(student.encode(image).embedding, student_fixture["outputs"][-1]) <= TOL
    # the released checkpoint holds only the encoder: the rest is random and the model says so
    assert student.weight_sources["image_encoder"] == "checkpoint"
    assert not student.is_trained


@torch.no_grad()
def test_fastsam3d_takes_decoder_from_sam_med3d_checkpoint(student_fixture, sam_fixture):
    student = build_model("fastsam3d", checkpoint=as_float32(student_fixture["state_dict"]),
                          decoder_checkpoint={"model_state_dict": as_float32(sam_fixture["state_dict"])},
                          **student_fixture["config"])
    assert student.is_trained
    c = sam_fixture["cases"][2]  # with a mask prompt: exercises the prompt encoder's convolutions too
    low_res, iou = student.decode(sam_fixture["image_embeddings"], points=c["points"], labels=c["labels"],
                                  mask_input=c["mask_input"], multimask_output=c["multimask_output"])
    assert max_err(low_res, c["low_res_masks"]) <= TOL
    assert max_err(iou, c["iou_predictions"]) <= TOL
