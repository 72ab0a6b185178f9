"""The click protocol on hand-built volumes with known answers, the metrics, and `medsam3d evaluate` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3d.cli import main
from medsam3d.evaluation.evaluate import evaluate, run_protocol
from medsam3d.evaluation.methods import ModelMethod, RandomWalker, RegionGrowing
from medsam3d.evaluation.metrics import dice, nsd
from medsam3d.evaluation.protocol import deepest_point, next_click, targets_from_labels
from medsam3d.io import Volume
from medsam3d.segmenter import Segmenter

from helpers import ThresholdModel


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_first_click_is_the_deepest_interior_point():
    target = box((40, 40, 40), (10, 12, 14), (21, 23, 25))  # 11^3 cube: centre (15, 17, 19)
    assert deepest_point(target).tolist() == [15, 17, 19]
    # anisotropic voxels: the farthest point is measured in mm
    slab = box((40, 40, 40), (5, 5, 10), (35, 35, 14))
    assert deepest_point(slab, spacing=(1.0, 1.0, 5.0))[2] in (11, 12)


def test_next_click_goes_to_the_centre_of_the_largest_error_with_the_right_sign():
    target = box((40, 40, 40), (5, 5, 5), (25, 25, 25))
    missed = target.copy()
    missed[5:25, 5:25, 5:12] = False  # a 20x20x7 slab missed: positive click in its middle
    (point, label) = next_click(missed, target)
    assert label == 1 and missed[tuple(point)] == 0 and target[tuple(point)] == 1 and 7 <= point[2] <= 9
    extra = target | box((40, 40, 40), (28, 28, 28), (39, 39, 39))  # an 11^3 blob outside: negative click
    (point, label) = next_click(extra, target)
    assert label == 0 and point.tolist() == [33, 33, 33]
    assert next_click(target, target) is None


def test_metrics_known_values():
    a = box((30, 30, 30), (0, 0, 0), (10, 10, 10))
    b = box((30, 30, 30), (5, 0, 0), (15, 10, 10))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert nsd(a, a, (1, 1, 1)) == pytest.approx(1.0)
    shifted = box((30, 30, 30), (1, 0, 0), (11, 10, 10))
    assert nsd(a, shifted, (1, 1, 1), 2.0) == pytest.approx(1.0)  # 1 mm shift within 2 mm tolerance
    assert nsd(a, b, (1, 1, 1), 2.0) < 0.8  # 5 mm shift
    assert nsd(a, shifted, (3, 1, 1), 2.0) < 1.0  # the same shift is 3 mm along a 3 mm axis


def test_targets_are_largest_components_above_min_size():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[box(labels.shape, (2, 2, 2), (12, 12, 12))] = 1
    labels[box(labels.shape, (20, 20, 20), (22, 22, 22))] = 1  # small second component of label 1
    labels[box(labels.shape, (15, 2, 2), (17, 4, 4))] = 2  # 8 voxels: below 0.5 ml at 2 mm voxels? 8*8 ul
    targets = targets_from_labels(labels, (2.0, 2.0, 2.0), {1: "liver"}, min_size_ml=0.1)
    assert [(t.value, t.name, int(t.mask.sum())) for t in targets] == [(1, "liver", 1000)]


class RecordingMethod:
    """Returns a scripted sequence of predictions and records what it was given."""

    name = "recording"

    def __init__(self, predictions):
        self.predictions, self.calls, self.starts = list(predictions), [], 0

    def reset(self, volume):
        pass

    def start_target(self):
        self.starts += 1

    def predict(self, points, labels):
        self.calls.append((points.copy(), labels.copy()))
        return self.predictions.pop(0)


def test_protocol_accumulates_clicks_and_reports_dice_at_each_count():
    target = box((30, 30, 30), (5, 5, 5), (20, 20, 20))
    first = box((30, 30, 30), (5, 5, 5), (20, 20, 12))  # misses the top
    second = target | box((30, 30, 30), (22, 22, 22), (26, 26, 26))  # adds an extra blob
    method = RecordingMethod([first, second, target])
    out = run_protocol(method, target, (1.0, 1.0, 1.0), [1, 2, 3, 5], 2.0)
    assert method.starts == 1 and len(method.calls) == 3  # perfect after click 3: no further prediction
    assert [len(p) for p, _ in method.calls] == [1, 2, 3]  # clicks accumulate
    assert method.calls[1][1].tolist() == [1, 1] and method.calls[2][1].tolist() == [1, 1, 0]
    assert out["dice"]["1"] == pytest.approx(dice(first, target))
    assert out["dice"]["2"] == pytest.approx(dice(second, target))
    assert out["dice"]["3"] == out["dice"]["5"] == 1.0
    assert out["dice"]["2"] < out["dice"]["3"]


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


def write_dataset(root, n=2):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for c in range(n):
        labels = np.zeros((48, 48, 40), dtype=np.uint8)
        labels[box(labels.shape, (8, 8, 8), (22, 24, 20))] = 1
        labels[box(labels.shape, (28, 26, 20), (42, 40, 34))] = 2
        image = np.where(labels == 1, 200, np.where(labels == 2, 120, 20)) + rng.normal(0, 5, labels.shape)
        for array, path in ((image.astype(np.int16), root / "imagesTr" / f"c{c}_0000.nii.gz"),
                            (labels, root / "labelsTr" / f"c{c}.nii.gz")):
            img = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy())
            img.SetSpacing((2.0, 2.0, 2.5))
            sitk.WriteImage(img, str(path))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "bright": 1, "grey": 2}}))
    return root


def test_evaluate_dataset_with_model_and_baselines(tmp_path):
    root = write_dataset(tmp_path / "Dataset900_Boxes")
    methods = {"stand-in": ModelMethod(Segmenter(model=ThresholdModel()), "stand-in"),
               "region_growing": RegionGrowing(), "random_walker": RandomWalker()}
    results = evaluate(root, methods, clicks=[1, 3], min_size_ml=1.0, log=lambda m: None)
    assert results["n_structures"] == 4 and set(results["mean_dice"]) == {"1", "3"}
    assert set(results["baselines"]) == {"region_growing", "random_walker"}
    assert results["per_structure"][0]["name"] == "bright" and results["per_structure"][0]["modality"] == "CT"
    # boxes of uniform intensity: region growing and the random walker find them
    assert results["baselines"]["region_growing"]["mean_dice"]["1"] > 0.8
    assert results["baselines"]["random_walker"]["mean_dice"]["3"] > 0.8
    assert 0.0 <= results["mean_nsd"]["1"] <= 1.0


def test_evaluate_command_writes_results_and_plot(tmp_path, capsys):
    import torch
    import yaml

    from conftest import SMALL_SAM
    from medsam3d.models import build_model

    root = write_dataset(tmp_path / "Dataset901_Boxes", n=1)
    torch.save(build_model("sam-med3d", **SMALL_SAM).state_dict(), tmp_path / "w.pth")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"model": "sam-med3d", **SMALL_SAM}))
    code = main(["evaluate", str(root), "--model", str(tmp_path / "m.yaml"), "--checkpoint", str(tmp_path / "w.pth"),
                 "--clicks", "1,2", "--out", str(tmp_path / "results.json"), "--plot", str(tmp_path / "dice.png"),
                 "--threads", "2"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("model", "protocol", "mean_dice", "mean_nsd", "per_structure", "baselines"):
        assert key in results
    assert results["protocol"]["clicks"] == [1, 2] and len(results["checkpoint_sha256"]) == 64
    assert (tmp_path / "dice.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
