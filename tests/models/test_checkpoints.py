"""Published key layouts, checkpoint wrappers, and the errors a wrong checkpoint gives."""

from __future__ import annotations

import json

import pytest
import torch

from medsam3d.models import build_model, read_state_dict
from medsam3d.models.checkpoint import summarize

from conftest import REFERENCE, SMALL_SAM, as_float32


def reference_keys(name: str) -> dict:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def test_full_size_sam_med3d_has_exactly_the_published_keys():
    expected = reference_keys("sam_med3d_vit_b_ori.keys.json")
    assert summarize(build_model("sam-med3d").state_dict()) == expected


def test_full_size_fastsam3d_encoder_has_exactly_the_published_keys():
    expected = reference_keys("fastsam3d_student_encoder.keys.json")
    model = build_model("fastsam3d")
    assert summarize(model.image_encoder.state_dict()) == expected
    # and its prompt encoder/decoder are SAM-Med3D-turbo's, so a turbo checkpoint's decoder keys fit
    sam_keys = reference_keys("sam_med3d_vit_b_ori.keys.json")
    ours = summarize(model.state_dict())
    decoder = {k: v for k, v in sam_keys.items() if not k.startswith("image_encoder.")}
    assert {k: ours[k] for k in decoder} == decoder


@pytest.mark.parametrize("wrap", ["raw", "model_state_dict", "module-prefix", "path"])
def test_checkpoint_layouts_load(tmp_path, sam_fixture, wrap):
    state = as_float32(sam_fixture["state_dict"])
    if wrap == "model_state_dict":  # SAM-Med3D's training checkpoints
        source = {"model_state_dict": state, "epoch": 3, "best_dice": 0.5}
    elif wrap == "module-prefix":  # saved from DDP
        source = {"module." + k: v for k, v in state.items()}
    elif wrap == "path":
        import argparse

        source = tmp_path / "sam_med3d_turbo.pth"
        torch.save({"model_state_dict": state, "args": argparse.Namespace(lr=1e-4)}, source)
    else:
        source = state
    model = build_model("sam-med3d", checkpoint=source, **sam_fixture["config"])
    assert model.is_trained
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_checkpoint_of_another_architecture_is_named(student_fixture, sam_fixture):
    with pytest.raises(ValueError) as err:
        build_model("sam-med3d", checkpoint=as_float32(student_fixture["state_dict"]), **sam_fixture["config"])
    message = str(err.value)
    assert "missing key" in message and "unexpected key" in message
    assert "FastSAM3D student encoder" in message and "embed_dim=96" in message
    assert "\n" not in message


def test_checkpoint_of_another_size_names_shapes(sam_fixture):
    with pytest.raises(ValueError, match=r"shape mismatch.*looks like a SAM-Med3D ViT encoder with embed_dim=96"):
        build_model("sam-med3d", checkpoint=as_float32(sam_fixture["state_dict"]), embed_dim=192, depth=4,
                    num_heads=4, global_attn_indexes=[1, 3], out_chans=96)


def test_non_strict_load_reports_what_is_missing(sam_fixture):
    state = as_float32(sam_fixture["state_dict"])
    encoder_only = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    with pytest.raises(ValueError, match="missing key"):
        build_model("sam-med3d", checkpoint=encoder_only, **sam_fixture["config"])
    model = build_model("sam-med3d", checkpoint=encoder_only, strict=False, **sam_fixture["config"])
    assert model.weight_sources == {"image_encoder": "checkpoint", "prompt_encoder": "random", "mask_decoder": "random"}
    assert not model.is_trained


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(corrupt)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_state_dict(truncated)
    with pytest.raises(ValueError, match="not a tensor"):
        read_state_dict({"w": [1, 2, 3]})


def test_model_configs_and_names():
    with pytest.raises(ValueError, match="unknown config key.*bogus"):
        build_model("sam-med3d", bogus=1, **SMALL_SAM)
    with pytest.raises(ValueError, match="unknown model 'sam-2d'"):
        build_model("sam-2d")
    assert build_model("sam_med3d", **SMALL_SAM).name == "sam-med3d"


@pytest.mark.parametrize("name", ["sam-med3d", "fastsam3d", "medsam3d-tiny"])
def test_yaml_configs_match_the_named_defaults(name):
    from medsam3d.models.config import config_dict, make_config
    from conftest import REPO
    import yaml

    path = REPO / "configs" / "models" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    assert data.pop("model") == name
    assert data == config_dict(make_config(name, {}))
    small = build_model(str(path), embed_dim=48, num_heads=2 if name == "medsam3d-tiny" else 4, out_chans=48)
    assert small.name == name and small.config.embed_dim == 48
