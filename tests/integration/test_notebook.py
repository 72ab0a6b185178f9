"""The fine-tuning notebook runs top to bottom on the smoke config (CI executes it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_finetune_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MEDSAM3D_REPO", str(REPO))
    monkeypatch.setenv("MEDSAM3D_NOTEBOOK_WORK", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    notebook = nbformat.read(REPO / "notebooks" / "finetune_your_data.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "Dice" in outputs and (tmp_path / "finetune" / "model.pt").is_file()
    assert os.path.exists(tmp_path / "finetune" / "metrics.csv")
