"""`medsam3d evaluate` end to end: results and plot written, and library warnings kept out unless --debug."""

from __future__ import annotations

import json

import numpy as np

from medsam3d.cli import main
from medsam3d.evaluation.methods import RandomWalker

from helpers import write_dataset


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
