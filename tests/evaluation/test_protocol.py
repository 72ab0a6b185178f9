"""The click protocol (evaluation.protocol, evaluate.run_protocol) on hand-built volumes with known answers: the first
click, the next click, the targets, clicks accumulating, and a structure longer than two windows followed to the end
without aborting."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3d.evaluation.evaluate import run_protocol
from medsam3d.evaluation.methods import ModelMethod
from medsam3d.evaluation.metrics import dice
from medsam3d.evaluation.protocol import deepest_point, next_click, targets_from_labels
from medsam3d.segmenter import Segmenter

from helpers import ROD_WINDOW, ThresholdModel, box, long_rod


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


@pytest.mark.parametrize("max_windows", [1, 2])
def test_the_protocol_follows_a_long_structure_without_aborting(max_windows):
    """The protocol's corrective clicks land all along the rod, windows apart; every one is answered and the
    mask only grows (one window's worth per click at most)."""
    volume, rod = long_rod()
    method = ModelMethod(Segmenter(model=ThresholdModel(ROD_WINDOW), max_windows=max_windows), "stand-in")
    method.reset(volume)
    scores = run_protocol(method, rod, volume.spacing, clicks=[1, 3, 5, 10], tolerance_mm=2.0)["dice"]
    values = [scores[str(k)] for k in (1, 3, 5, 10)]
    assert values == sorted(values) and values[-1] > values[0] + 0.3
    assert dice(method.last_result.mask.array, rod) == pytest.approx(values[-1])
