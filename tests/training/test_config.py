"""Run configs (training.config): overrides, and unknown keys and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsam3d.training.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_config_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(REPO / "configs/smoke/train.yaml", ["train.steps=3", "model.config.embed_dim=32"])
    assert cfg.train.steps == 3 and cfg.model.config["embed_dim"] == 32
    assert cfg.train.clicks == 2 and cfg.distill.stage1_steps == 100  # file, then defaults
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        load_config(REPO / "configs/smoke/train.yaml", ["train.stepz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {steps: 3}\n")
    with pytest.raises(ValueError, match="unknown config key 'trian'"):
        load_config(bad)
    with pytest.raises(ValueError, match="train.follow must be best or predicted, not 'head'"):
        load_config(REPO / "configs/smoke/train.yaml", ["train.follow=head"])
