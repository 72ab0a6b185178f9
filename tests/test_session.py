"""`Session`: several objects on one scan, each with its own prompts, memory and undo (the packaged default on the
bundled example CT)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import EXAMPLE_CT, click_sequences
from medsam3d.errors import InputError
from medsam3d.segmenter import Segmenter
from medsam3d.session import EXACT_UNDO, Session

LIVER = [(91, 52, 18), (75, 40, 20, False), (100, 60, 15)]
SPLEEN = [(25, 32, 22), (30, 40, 24)]


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(threads=2)


def click(session, name, spec):
    *point, positive = spec if len(spec) == 4 else (*spec, True)
    return session.add_point(name, point, positive)


def full_box(old, new):
    diff = np.argwhere(old != new)
    return None if not len(diff) else (tuple(diff.min(0)), tuple(diff.max(0)))


def test_objects_refine_independently_of_each_other(segmenter):
    alone = Session(segmenter, EXAMPLE_CT)
    for spec in LIVER:
        click(alone, "liver", spec)
    expected = alone.mask("liver").copy()

    mixed = Session(segmenter, EXAMPLE_CT)
    click(mixed, "liver", LIVER[0])
    click(mixed, "spleen", SPLEEN[0])
    click(mixed, "liver", LIVER[1])
    click(mixed, "spleen", SPLEEN[1])
    click(mixed, "liver", LIVER[2])
    np.testing.assert_array_equal(mixed.mask("liver"), expected)
    assert mixed.mask("spleen").any() and not (mixed.mask("spleen") & mixed.mask("liver")).all()


def test_changes_report_exactly_the_voxels_that_changed(segmenter):
    session = Session(segmenter, EXAMPLE_CT)
    before = session.mask("liver") if "liver" in session.objects else np.zeros(session.volume.shape, np.uint8)
    boxes = []
    for spec in LIVER:
        change = click(session, "liver", spec)
        after = session.mask("liver").copy()
        assert change.box == full_box(before, after)
        assert change.voxels == int(after.sum())
        boxes.append(change.box)
        before = after
    lo = tuple(min(b[0][a] for b in boxes if b) for a in range(3))
    hi = tuple(max(b[1][a] for b in boxes if b) for a in range(3))
    assert session.take_changes("liver") == (lo, hi)  # everything since the object began
    assert session.take_changes("liver") is None  # and nothing since


def test_incremental_changes_report_exactly_the_voxels_that_changed(segmenter):
    """With incremental refinement a click keeps some windows' answers, and the session diffs and counts only where
    the others lie: the same boxes and voxel counts as diffing the whole masks, and undo still exact."""
    session = Session(Segmenter(model=segmenter.model, threads=2, incremental=True), EXAMPLE_CT)
    before = np.zeros(session.volume.shape, np.uint8)
    masks, shared = [], 0
    for point, positive in click_sequences(24)["liver"]:
        memory = session.objects["liver"].state.memory if "liver" in session.objects else None
        change = session.add_point("liver", point, positive)
        after = session.mask("liver").copy()
        assert change.box == full_box(before, after)
        assert change.voxels == int(after.sum())
        now = session.objects["liver"].state.memory
        shared += bool(memory) and any(answer is memory.get(c) for c, answer in now.items())
        masks.append(before)
        before = after
    assert shared >= 2  # clicks that kept a window's answer
    for expected in reversed(masks[-EXACT_UNDO:]):
        session.undo("liver")
        np.testing.assert_array_equal(session.mask("liver"), expected)


def test_undo_is_exact_and_the_next_click_answers_as_if_the_undone_one_never_was(segmenter):
    session = Session(segmenter, EXAMPLE_CT)
    click(session, "liver", LIVER[0])
    first = session.mask("liver").copy()
    click(session, "liver", LIVER[1])
    session.undo("liver")
    np.testing.assert_array_equal(session.mask("liver"), first)
    click(session, "liver", LIVER[2])

    direct = Session(segmenter, EXAMPLE_CT)
    click(direct, "liver", LIVER[0])
    click(direct, "liver", LIVER[2])
    np.testing.assert_array_equal(session.mask("liver"), direct.mask("liver"))


def test_long_undo_history_restores_every_mask(segmenter):
    session = Session(segmenter, EXAMPLE_CT)
    masks = []
    rng = np.random.default_rng(3)
    click(session, "liver", LIVER[0])
    for n in range(EXACT_UNDO + 3):
        masks.append(session.mask("liver").copy())
        point = np.round(rng.uniform([75, 40, 12], [100, 62, 24]), 1)
        session.add_point("liver", point, positive=bool(n % 3))
    for expected in reversed(masks):
        session.undo("liver")
        np.testing.assert_array_equal(session.mask("liver"), expected)
    # an old step kept its mask but not the model's memory: a click refines that mask as a mask prompt
    assert session.objects["liver"].state.mask_prompt is not None
    assert click(session, "liver", LIVER[2]).voxels > 0


def test_set_mask_reset_and_errors(segmenter):
    session = Session(segmenter, EXAMPLE_CT)
    edited = np.zeros(session.volume.shape, np.uint8)
    edited[80:95, 45:60, 12:20] = 1
    change = session.set_mask("liver", edited)
    assert change.voxels == int(edited.sum()) and change.box == ((80, 45, 12), (94, 59, 19))
    assert click(session, "liver", LIVER[0]).voxels > 0
    clicked = session.mask("liver").copy()
    assert session.reset("liver").voxels == 0
    session.undo("liver")  # history keeps only the voxels each change touched: undo rebuilds whole masks exactly
    np.testing.assert_array_equal(session.mask("liver"), clicked)
    session.undo("liver")
    np.testing.assert_array_equal(session.mask("liver"), edited)
    session.undo("liver")
    assert not session.mask("liver").any() and session.objects["liver"].state.mask is None
    with pytest.raises(InputError, match="outside the image"):
        session.add_point("liver", (500, 0, 0))
    with pytest.raises(InputError, match="first click on an object must be positive"):
        session.add_point("other", LIVER[0], positive=False)
    with pytest.raises(InputError, match="unknown object"):
        session.undo("nobody")
    with pytest.raises(InputError, match="mask has shape"):
        session.set_mask("liver", np.zeros((3, 3, 3)))
