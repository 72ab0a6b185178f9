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


def test_nsd_is_monais_number():
    from scipy import ndimage

    from medsam3d.evaluation.metrics import monai_nsd

    rng = np.random.default_rng(1)
    for trial in range(12):
        a = ndimage.gaussian_filter(rng.normal(size=(30, 34, 26)), 3) > 0
        b = ndimage.binary_dilation(a, iterations=2) if trial % 2 else \
            ndimage.gaussian_filter(rng.normal(size=(30, 34, 26)), 3) > 0
        spacing = [(1.0, 1.0, 1.0), (0.71484375, 0.71484375, 2.526315689086914), (0.977, 0.8, 2.0)][trial % 3]
        assert nsd(a, b, spacing, 2.0) == monai_nsd(a, b, spacing, 2.0)


class FlakyMethod:
    """Stands in for a method that fails on one target (the ``fail_on``-th) and finds the others perfectly."""

    def __init__(self, fail_on=2, error=ValueError("boom")):
        self.name, self.fail_on, self.error, self.starts = "flaky", fail_on, error, 0

    def reset(self, volume):
        pass

    def start_target(self):
        self.starts += 1

    def predict(self, points, labels):
        if self.starts == self.fail_on:
            raise self.error
        return self.answer


class Oracle(FlakyMethod):
    """Returns the target it is told about (so a run is quick and its numbers known)."""

    def __init__(self, targets, **kw):
        super().__init__(**kw)
        self.targets = targets

    def predict(self, points, labels):
        self.answer = self.targets[self.starts - 1]
        return super().predict(points, labels)


def dataset_targets(root):
    from medsam3d.io import read_volume

    labels = read_volume(root / "labelsTr" / "c0.nii.gz").array
    return [labels == 1, labels == 2]


def test_a_failing_structure_is_recorded_and_the_others_scored(tmp_path):
    root = write_dataset(tmp_path / "Dataset902_Boxes", n=1)
    targets = dataset_targets(root)
    methods = {"model": Oracle(targets, fail_on=0), "region_growing": RegionGrowing(),
               "flaky": Oracle(targets, fail_on=2, error=ValueError("no such thing"))}
    out = tmp_path / "results.json"
    returned = evaluate(root, methods, clicks=[1, 2], out=out, log=lambda m: None)
    results = json.loads(out.read_text())
    assert results["complete"] is True and results["n_structures"] == 2
    first, second = results["per_structure"]
    assert first["baselines"]["flaky"]["dice"] == {"1": 1.0, "2": 1.0}
    assert second["baselines"]["flaky"] == {"error": "ValueError: no such thing"}
    assert second["baselines"]["region_growing"]["dice"]["1"] > 0.8 and second["dice"]["1"] == 1.0
    assert results["baselines"]["flaky"]["n_failed"] == 1 and results["baselines"]["flaky"]["n_scored"] == 1
    assert results["baselines"]["flaky"]["mean_dice"]["1"] == 1.0  # over the scored structure, not 0 for the other
    assert results["n_failed"] == 0 and results["mean_dice"] == {"1": 1.0, "2": 1.0}
    assert returned["per_structure"] == results["per_structure"]


def test_results_are_written_after_each_structure_and_a_stopped_run_keeps_them(tmp_path):
    from medsam3d.evaluation.evaluate import Progress

    root = write_dataset(tmp_path / "Dataset903_Boxes", n=2)
    out = tmp_path / "results.json"
    seen = []

    class Reader(Progress):
        def structure_done(self):
            on_disk = json.loads(out.read_text())
            seen.append((on_disk["n_structures"], on_disk["complete"]))

    targets = dataset_targets(root)
    evaluate(root, {"model": Oracle(targets * 2, fail_on=0)}, clicks=[1], out=out, progress=Reader(),
             log=lambda m: None)
    assert seen == [(1, False), (2, False), (3, False), (4, False)]
    assert json.loads(out.read_text())["complete"] is True
    # stopped (Ctrl-C) during the second structure: the first one's results stay on disk
    with pytest.raises(KeyboardInterrupt):
        evaluate(root, {"model": Oracle(targets * 2, fail_on=2, error=KeyboardInterrupt())}, clicks=[1], out=out,
                 log=lambda m: None)
    kept = json.loads(out.read_text())
    assert kept["complete"] is False and kept["n_structures"] == 1 and kept["mean_dice"] == {"1": 1.0}


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


def test_evaluate_command_keeps_library_warnings_out_unless_debug(tmp_path, monkeypatch, capsys):
    import warnings

    root = write_dataset(tmp_path / "Dataset905_Boxes", n=1)

    def noisy(self, points, labels):  # what scikit-image's random walker says on a loose solve
        warnings.warn("The probability range is outside [0, 1] given the tolerance `prob_tol`.", UserWarning)
        return np.zeros(self.volume.shape, dtype=bool)

    monkeypatch.setattr(RandomWalker, "predict", noisy)
    for debug, expected in (([], 0), (["--debug"], 1)):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            code = main(debug + ["evaluate", str(root), "--no-model", "--clicks", "1",
                                 "--out", str(tmp_path / "r.json")])
        assert code == 0, capsys.readouterr().err
        assert sum("probability range" in str(w.message) for w in shown) >= expected
        if not debug:
            assert not any("probability range" in str(w.message) for w in shown)
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["model"] is None and set(results["baselines"]) == {"region_growing", "random_walker"}
    assert "mean Dice" in capsys.readouterr().err
