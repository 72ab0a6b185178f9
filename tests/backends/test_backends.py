"""The two backends: ``torch`` and ``onnxruntime`` (the packaged default's ONNX bundle).

Checks: the onnxruntime path never imports torch (a subprocess's sys.modules); both backends give the same masks on
a real scan and logits within a small difference; prompt tokens are built the same in numpy and in torch; threads
are honoured; a missing extra, an unknown backend, a PyTorch checkpoint or a GPU with onnxruntime are one-line
errors with exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import EXAMPLE_CT, dice

pytest.importorskip("onnxruntime")

LIVER_CLICK = [91, 52, 18]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_onnxruntime_segment_never_imports_torch(tmp_path):
    out = tmp_path / "liver.nii.gz"
    code = (
        "import sys\n"
        "from medsam3d.cli import main\n"
        f"rc = main(['segment', {str(EXAMPLE_CT)!r}, '--point', '91,52,18', '-o', {str(out)!r},"
        " '--backend', 'onnxruntime', '--threads', '2', '-q'])\n"
        "print('rc', rc, 'torch' in sys.modules)\n")
    done = run_python(code)
    assert done.stdout.strip().splitlines()[-1] == "rc 0 False", done.stderr[-2000:]
    assert out.is_file()


def test_onnxruntime_serve_hello_and_click_never_import_torch():
    code = (
        "import sys, json\n"
        "from medsam3d.serve.worker import Worker\n"
        "w = Worker.for_model('default', threads=2, backend='onnxruntime')\n"
        "hello = w.handle({'cmd': 'hello', 'id': 1})\n"
        f"s = w.handle({{'cmd': 'load', 'id': 2, 'path': {str(EXAMPLE_CT)!r}}})['session']\n"
        "r = w.handle({'cmd': 'add_point', 'id': 3, 'session': s, 'object': 'liver', 'point': [91, 52, 18]})\n"
        "print(json.dumps([hello['backend'], r['ok'], 'torch' in sys.modules]))\n")
    done = run_python(code)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["onnxruntime", True, False], done.stderr[-2000:]


@pytest.fixture(scope="module")
def both_segmenters():
    from medsam3d.segmenter import Segmenter

    return {kind: Segmenter(backend=kind, threads=2) for kind in ("torch", "onnxruntime")}


@pytest.mark.parametrize("prompts", [
    {"points": [LIVER_CLICK]},
    {"points": [LIVER_CLICK, [100, 45, 15]], "labels": [1, 0]},
    {"points": [[25, 32, 22]], "box": [15, 20, 15, 40, 45, 28]},  # spleen, click + box
])
def test_backends_give_the_same_mask_on_a_real_scan(both_segmenters, prompts):
    results = {}
    for kind, seg in both_segmenters.items():
        seg.set_volume(str(EXAMPLE_CT))
        results[kind] = seg.predict(**prompts)
    torch_result, onnx_result = results["torch"], results["onnxruntime"]
    assert dice(torch_result.mask.array, onnx_result.mask.array) >= 0.98
    assert [w.center_lps for w in torch_result.windows] == [w.center_lps for w in onnx_result.windows]
    for center, logits in torch_result.low_res.items():
        assert np.abs(logits - onnx_result.low_res[center]).max() < 1e-2


def test_refinement_with_a_mask_prompt_matches_across_backends(both_segmenters):
    masks = {}
    for kind, seg in both_segmenters.items():
        seg.set_volume(str(EXAMPLE_CT))
        seg.predict(points=[LIVER_CLICK])
        masks[kind] = seg.predict(points=[LIVER_CLICK, [80, 60, 20]], refine=True).mask.array
    assert dice(masks["torch"], masks["onnxruntime"]) >= 0.98


def test_numpy_prompt_tokens_equal_the_torch_ones():
    import torch

    from medsam3d.backends import prompt_tokens
    from medsam3d.models.prompt_encoder import prompt_tokens as torch_tokens

    points, labels, box = np.array([[1.0, 2, 3], [4, 5, 6]]), np.array([1, 0]), np.array([0.0, 1, 2, 9, 8, 7])
    for p, lab, b in [(points, labels, None), (points, labels, box), (None, None, box)]:
        coords, token_labels = prompt_tokens(p, lab, b)
        ref_coords, ref_labels = torch_tokens(None if p is None else torch.tensor(p)[None],
                                              None if lab is None else torch.tensor(lab)[None],
                                              None if b is None else torch.tensor(b)[None], 1)
        np.testing.assert_array_equal(coords, ref_coords[0].numpy())
        np.testing.assert_array_equal(token_labels, ref_labels[0].numpy())


def test_threads_are_honoured_by_both_backends():
    import torch

    from medsam3d.backends import open_backend

    onnx, _ = open_backend("onnxruntime", "default", threads=1)
    assert onnx.encoder.get_session_options().intra_op_num_threads == 1
    assert onnx.decoder.get_session_options().intra_op_num_threads == 1
    torch_backend, _ = open_backend("torch", "default")
    before = torch.get_num_threads()
    with torch_backend.using_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    (["--backend", "onnxruntime", "--checkpoint", "README.md"], "export it first"),
    (["--backend", "onnxruntime", "--device", "cuda"], "runs on the CPU"),
    (["--backend", "onnxruntime", "--model", "sam-med3d"], "is not an ONNX bundle"),
])
def test_backend_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    from medsam3d.cli import main

    rc = main(["segment", str(EXAMPLE_CT), "--point", "91,52,18", "-o", str(tmp_path / "m.nii.gz"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.nii.gz").exists()


def test_missing_onnx_extra_says_which_extra_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # as if medsam3d[onnx] were not installed\n"
        "from medsam3d.cli import main\n"
        f"sys.exit(main(['segment', {str(EXAMPLE_CT)!r}, '--point', '91,52,18', '-o',"
        f" {str(tmp_path / 'm.nii.gz')!r}, '--backend', 'onnxruntime']))\n")
    done = run_python(code)
    assert done.returncode == 2
    assert "pip install 'medsam3d[onnx]'" in done.stderr and "Traceback" not in done.stderr


def test_auto_takes_onnxruntime_where_it_can_run_the_model(monkeypatch, tmp_path):
    from medsam3d.backends import onnxruntime_can_run

    assert onnxruntime_can_run("default", None, "cpu")
    assert not onnxruntime_can_run("default", tmp_path / "w.pt", "cpu")  # PyTorch weights: torch
    assert not onnxruntime_can_run("default", None, "cuda")
    assert not onnxruntime_can_run("sam-med3d", None, "cpu")  # a registry name, not a bundle
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # as if the extra were missing
    assert not onnxruntime_can_run("default", None, "cpu")


def test_serve_auto_reports_its_backend():
    from medsam3d.serve.worker import Worker

    hello = Worker.for_model("default", threads=1, backend="auto", incremental=True).handle({"cmd": "hello", "id": 1})
    assert hello["ok"] and hello["backend"] == "onnxruntime" and hello["incremental"] is True


def test_auto_is_decided_before_the_device():
    """--backend auto with --device auto picks the CPU path only for a model onnxruntime can run; PyTorch weights
    keep torch (and so a GPU where there is one)."""
    from medsam3d.backends import choose_backend
    from medsam3d.errors import InputError

    assert choose_backend("auto", "default", None, "auto") == "onnxruntime"
    assert choose_backend("auto", "default", "weights.pt", "auto") == "torch"
    assert choose_backend("auto", "default", None, "cuda") == "torch"
    assert choose_backend("torch", "default", None, "auto") == "torch"
    with pytest.raises(InputError, match="unknown backend"):
        choose_backend("tensorrt", "default", None, "cpu")
