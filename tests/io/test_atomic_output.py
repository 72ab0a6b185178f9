"""Atomic writes: nothing half-written on failure, and the result has the permissions a plain write would give."""

from __future__ import annotations

import os

import pytest

from medsam3d.io import atomic_output, write_text_atomic


def test_atomic_output_gives_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600


def test_atomic_output_leaves_nothing_when_the_writer_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "mask.nii.gz") as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
