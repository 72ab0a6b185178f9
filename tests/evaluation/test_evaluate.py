"""`evaluate` on a dataset (evaluation.evaluate): the model and the baselines scored per structure, a failing
structure recorded while the others are scored, and results written after each structure. (The protocol, metrics
and methods: test_protocol.py, test_metrics.py, test_methods.py; the command: tests/integration/test_cli_evaluate.py.)"""

from __future__ import annotations

import json

import pytest

from medsam3d.evaluation.evaluate import evaluate
from medsam3d.evaluation.methods import ModelMethod, RandomWalker, RegionGrowing
from medsam3d.segmenter import Segmenter

from helpers import ThresholdModel, write_dataset


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
