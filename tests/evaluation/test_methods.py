"""The methods the protocol drives (evaluation.methods): the model's (previous logits passed back) and the baselines'
(a negative click removes a leak; more clicks never make them worse)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3d.evaluation.evaluate import evaluate, run_protocol
from medsam3d.evaluation.methods import ModelMethod, RandomWalker, RegionGrowing
from medsam3d.evaluation.metrics import dice
from medsam3d.evaluation.protocol import deepest_point
from medsam3d.io import Volume
from medsam3d.segmenter import Segmenter

from helpers import ThresholdModel, box


def test_model_method_passes_previous_logits_back():
    volume = Volume(np.where(box((64, 64, 64), (20, 20, 20), (44, 44, 44)), 100, 10).astype(np.int16),
                    (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3))
    model = ThresholdModel()
    calls = []
    original = model.decode

    def spy(embedding, **kw):
        calls.append(kw.get("mask_input") is not None)
        return original(embedding, **kw)

    model.decode = spy
    method = ModelMethod(Segmenter(model=model), "stand-in")
    method.reset(volume)
    out = run_protocol(method, volume.array > 50, volume.spacing, [1, 3], 2.0)
    assert calls[0] is False and all(calls[1:]) and len(calls) >= 2
    assert out["dice"]["1"] > 0.9


def bridged_boxes():
    """Two boxes of one intensity joined by a bridge (a leak waiting to happen), on 3 mm voxels ->
    (volume, labels)."""
    labels = np.zeros((22, 22, 14), dtype=np.uint8)
    labels[box(labels.shape, (2, 3, 3), (9, 15, 11))] = 1
    labels[box(labels.shape, (12, 3, 3), (19, 15, 11))] = 2
    image = np.where(labels > 0, 100.0, 40.0)
    image[box(labels.shape, (9, 7, 5), (12, 10, 8))] = 100.0  # the bridge: 3 x 3 voxels across, unlabelled
    rng = np.random.default_rng(0)
    image = image + rng.normal(0, 4, labels.shape)
    return Volume(image.astype(np.float32), (3.0, 3.0, 3.0), (0, 0, 0), np.eye(3)), labels


@pytest.mark.parametrize("method", [RegionGrowing, RandomWalker])
def test_a_negative_click_removes_a_leak(method):
    volume, labels = bridged_boxes()
    target, other = labels == 1, labels == 2
    inside, beyond = deepest_point(target), deepest_point(other)
    baseline = method()
    baseline.reset(volume)
    leaked = baseline.predict(inside[None].astype(float), np.array([1]))
    assert leaked[other].mean() > 0.3  # through the bridge into the other box
    fixed = baseline.predict(np.stack([inside, beyond]).astype(float), np.array([1, 0]))
    assert fixed[other].mean() < 0.05 and dice(fixed, target) > 0.9 > dice(leaked, target)


def test_baselines_do_not_get_worse_with_clicks(tmp_path):
    root = tmp_path / "Dataset904_Bridged"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    volume, labels = bridged_boxes()
    labels[box(labels.shape, (2, 17, 3), (19, 21, 11))] = 3  # a slab: a bright half and a dim half
    image = volume.array.copy()
    image[box(labels.shape, (2, 17, 3), (10, 21, 11))] += 60
    image[box(labels.shape, (10, 17, 3), (19, 21, 11))] += 25
    for array, path in ((image, root / "imagesTr" / "b_0000.nii.gz"), (labels, root / "labelsTr" / "b.nii.gz")):
        img = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
        img.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(img, str(path))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "a": 1, "b": 2, "slab": 3}}))
    results = evaluate(root, {"region_growing": RegionGrowing(), "random_walker": RandomWalker()},
                       clicks=[1, 2, 3, 5], model=None, log=lambda m: None)
    assert results["model"] is None and results["mean_dice"] is None and results["n_structures"] == 3
    for name in ("region_growing", "random_walker"):
        means = [results["baselines"][name]["mean_dice"][k] for k in ("1", "2", "3", "5")]
        # never lower than before, up to 0.02: once near 0.99 the next click lands on a voxel-wide boundary error
        assert all(b >= a - 0.02 for a, b in zip(means, means[1:])), (name, means)
        assert means[-1] > means[0] + 0.1 and means[-1] > 0.9, (name, means)
