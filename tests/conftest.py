"""Shared test fixtures: the reference fixtures in ../shared/reference, small model configs, a toy nnU-Net dataset,
and a model store with a small checkpoint to put in it. They apply to every folder under tests/."""

from __future__ import annotations

import io
import os
from pathlib import Path

# before numpy loads OpenBLAS: the random walker's solver makes thousands of tiny BLAS calls, which two BLAS threads
# on a busy 2-core machine run about 8x slower than one
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("MEDSAM3D_REFERENCE", REPO.parent / "shared" / "reference"))

# A SAM-Med3D-architecture model small enough for unit tests (the fixture's sizes, depth 2).
SMALL_SAM = dict(embed_dim=96, depth=2, num_heads=4, global_attn_indexes=[1], out_chans=96)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_reference(name: str) -> dict:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference fixture {path} not present (expected ../shared/reference beside the repo)")
    return torch.load(path, weights_only=False)


def as_float32(state: dict) -> dict:
    return {k: v.float() for k, v in state.items()}


@pytest.fixture(scope="session")
def sam_fixture() -> dict:
    return load_reference("sam_med3d_e96_d4_s11.pt")


@pytest.fixture(scope="session")
def student_fixture() -> dict:
    return load_reference("fastsam3d_student_e96_d4_s11.pt")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A toy nnU-Net v2 dataset of three cases (training.synthetic.write_toy_dataset), one per test module."""
    from medsam3d.training.synthetic import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Toy", n_cases=3)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty model store (MEDSAM3D_HOME) for one test."""
    monkeypatch.setenv("MEDSAM3D_HOME", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A small SAM-Med3D-architecture checkpoint (SMALL_SAM, seeded), as the bytes of its file."""
    from medsam3d.models import build_model

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"model_state_dict": build_model("sam-med3d", **SMALL_SAM).state_dict()}, buffer)
    return buffer.getvalue()
