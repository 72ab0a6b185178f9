"""medsam3d export onnx: bundles of small random-weight models answer in ONNX Runtime as the models do in PyTorch
(every prompt-token count), a failed check leaves nothing behind, the command line, int8, and the packaged
default's bundle."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import medsam3d.export as export_module  # noqa: E402
from medsam3d.cli import main  # noqa: E402
from medsam3d.errors import InputError  # noqa: E402
from medsam3d.export import check_bundle, export_onnx  # noqa: E402
from medsam3d.models import build_model  # noqa: E402

from helpers import open_read_out  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "medsam3d" / "weights"
SMALL = dict(img_size=64, embed_dim=48, out_chans=48, num_heads=2, decoder_mlp_dim=96, decoder_heads=2,
             iou_head_hidden_dim=32, mask_in_chans=8)
CONFIGS = {
    "sam-med3d": dict(SMALL, depth=2, global_attn_indexes=[1], window_size=2),
    "fastsam3d": dict(SMALL, depth=2, skip_layer=1),
    "medsam3d-tiny": dict(SMALL, first_click_multimask=True, mask_iou_head=True, multimask_refine=True,
                          fine_output=True),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for torch and ONNX Runtime (check_bundle follows torch): on a busy machine a second thread that
    waits for a core slows a small model's decode tens of times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(name: str):
    torch.manual_seed(0)
    model = build_model(name, **CONFIGS[name]).eval()
    if model.mask_decoder.fine_head is not None:
        open_read_out(model)  # the fine head's read-out starts at zero: give it weights so its path counts
    return model


def sessions(folder: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return [ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
            for name in ("encoder.onnx", "decoder.onnx")]


@pytest.fixture(scope="module")
def cli_bundle(tmp_path_factory):
    """The small medsam3d-tiny exported by the command line -> (model, bundle folder, exit code, stdout, checkpoint)."""
    folder = tmp_path_factory.mktemp("cli")
    model = small_model("medsam3d-tiny")
    checkpoint = folder / "tiny.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": "medsam3d-tiny", **CONFIGS["medsam3d-tiny"]}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["export", "onnx", "--model", str(config), "--checkpoint", str(checkpoint),
                     "-o", str(folder / "bundle")])
    return model, folder / "bundle", code, out.getvalue(), checkpoint


def test_cli_writes_a_checked_bundle(cli_bundle):
    _, folder, code, stdout, checkpoint = cli_bundle
    assert code == 0
    assert "max abs difference from PyTorch: embedding" in stdout and "logits" in stdout
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", "model.json"]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["quantize"] is None and meta["check"]["logits_max_abs_diff"] <= 1e-3
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "medsam3d-tiny"], "no trained weights"),  # random weights are refused
    (["--model", "default", "--quantize", "int4"], "--quantize"),
])
def test_cli_refuses_in_one_line(args, message, tmp_path, capsys):
    assert main(["export", "onnx", *args, "-o", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bundle_answers_as_pytorch(name, tmp_path, cli_bundle):
    if name == "medsam3d-tiny":
        model, folder = cli_bundle[:2]  # exported through the command line above
    else:
        model, folder = small_model(name), tmp_path / "bundle"
        export_onnx(model, folder)
    meta = json.loads((folder / "model.json").read_text())
    size, low = model.config.img_size, model.low_res_size
    image = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(3))  # not the check's crop
    with torch.no_grad():
        features = model.encode(image)
    assert (meta["format"], meta["model"], meta["img_size"], meta["low_res_size"], meta["skips"]) == (
        "medsam3d-onnx", name, size, low, len(features.skips))
    assert meta["min_tokens"] == 0  # a mask prompt alone (no tokens) exports too
    encoder, decoder = sessions(folder)
    assert [o.name for o in encoder.get_outputs()] == ["embedding"] + [f"skip{i}" for i in range(meta["skips"])]
    got = encoder.run(None, {"image": image.numpy()})
    for g, want in zip(got, (features.embedding, *features.skips), strict=True):
        assert g.shape == tuple(want.shape) and np.abs(g - want.numpy()).max() <= 1e-3

    gen = torch.Generator().manual_seed(4)
    mask = torch.randn(1, 1, low, low, low, generator=gen)
    cases = []  # (coords (1, T, 3), labels (1, T), has_mask): every token count 0..16, every token kind
    kinds = torch.tensor([1, 0, -1] + ([2, 3] if model.config.box_prompts else []))
    for t in range(17):
        labels = kinds[torch.randint(len(kinds), (1, t), generator=gen)]
        cases.append((torch.rand(1, t, 3, generator=gen) * size, labels, t % 2 == 0))
    for coords, labels, has_mask in cases:
        for multimask in (False, True):
            with torch.no_grad():
                want = model.decode_tensors(features.embedding, features.skips, coords, labels, mask,
                                            torch.tensor([has_mask]), multimask, keep_best=True)
            feeds = {"embedding": features.embedding.numpy(), "coords": coords.numpy(), "labels": labels.numpy(),
                     "mask_input": mask.numpy(), "has_mask": np.array([has_mask]),
                     "multimask": np.array([multimask])}
            feeds.update({f"skip{i}": s.numpy() for i, s in enumerate(features.skips)})
            logits, iou = decoder.run(["low_res_logits", "iou"], feeds)
            assert logits.shape == (1, 1, low, low, low) and iou.shape == (1, 1)
            assert np.abs(logits - want[0].numpy()).max() <= 1e-3, (coords.shape[1], multimask)
            assert np.abs(iou - want[1].numpy()).max() <= 1e-3
    if not model.config.box_prompts:  # the graph would take box tokens; the runtime refuses them as torch does
        from medsam3d.backends.onnx_backend import OnnxBackend

        backend = OnnxBackend(folder)
        with pytest.raises(InputError, match="takes no box prompts"):
            backend.decode(backend.encode(image.numpy()[0, 0]), None, None, np.array([2.0, 2, 2, 9, 9, 9]), None,
                           False)


def test_tolerance_is_enforced_and_a_failure_leaves_nothing(cli_bundle, tmp_path, monkeypatch):
    model, folder = cli_bundle[:2]
    with pytest.raises(InputError, match=r"^encoder\.onnx: the image features differ from PyTorch's by .+, past "
                                         r"the tolerance 0$"):
        check_bundle(model, folder, tolerance=0.0)

    def copy_graphs(model, features, target):  # the exported graphs, without exporting again
        for name in ("encoder.onnx", "decoder.onnx"):
            shutil.copy(folder / name, target / name)
        return "dynamo"

    monkeypatch.setattr(export_module, "_export_graphs", copy_graphs)
    out = tmp_path / "bundle"
    with pytest.raises(InputError, match="past the tolerance 0"):
        export_onnx(model, out, tolerance=0.0)
    assert list(tmp_path.iterdir()) == []  # neither a bundle nor a temporary folder
    export_onnx(model, out, weights_sha256="old")
    with pytest.raises(InputError, match="past the tolerance"):
        export_onnx(model, out, tolerance=0.0)
    assert json.loads((out / "model.json").read_text())["weights_sha256"] == "old"  # the old bundle is kept
    assert export_onnx(model, out, weights_sha256="new")["weights_sha256"] == "new"  # a bundle is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an ONNX bundle; refusing"):
        export_onnx(model, tmp_path / "other")


def test_int8_quantizes_and_reports(cli_bundle, tmp_path):
    import onnx

    model, folder = cli_bundle[:2]
    shutil.copytree(folder, tmp_path / "int8")
    export_module._quantize_int8(tmp_path / "int8")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "encoder.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    check = check_bundle(model, tmp_path / "int8", None, min_tokens=0)  # measured, not held to a tolerance
    assert 0 < check["logits_max_abs_diff"] < np.inf and check["embedding_max_abs_diff"] > 0


def test_packaged_bundle_is_the_default():
    from medsam3d.backends.torch_backend import load_model

    folder = WEIGHTS / "default_onnx"
    meta = json.loads((folder / "model.json").read_text())
    sha = hashlib.sha256((WEIGHTS / "default.pt").read_bytes()).hexdigest()
    assert meta["weights_sha256"] == sha == json.loads((WEIGHTS / "default.json").read_text())["sha256"]
    assert (meta["format"], meta["format_version"], meta["quantize"]) == ("medsam3d-onnx", 1, None)
    model, _ = load_model("default", None, "cpu")
    model.eval()
    assert meta["model"] == model.name and meta["low_res_size"] == model.low_res_size
    image = export_module.example_image(model)
    encoder, decoder = sessions(folder)
    with torch.no_grad():
        features = model.encode(image)
        c = model.config.img_size / 2
        want, want_iou = model.decode(features, points=torch.tensor([[[c, c, c]]]), labels=torch.tensor([[1]]),
                                      multimask_output=model.multimask_for(True), keep_best=True)
    got = encoder.run(None, {"image": image.numpy()})
    assert max(np.abs(g - f.numpy()).max() for g, f in zip(got, (features.embedding, *features.skips))) <= 1e-3
    feeds = {o.name: f.numpy() for o, f in zip(encoder.get_outputs(), (features.embedding, *features.skips))}
    feeds.update(coords=np.array([[[c, c, c], [0, 0, 0]]], np.float32), labels=np.array([[1, -1]]),
                 mask_input=np.zeros((1, 1, *(model.low_res_size,) * 3), np.float32), has_mask=np.array([False]),
                 multimask=np.array([model.multimask_for(True)]))
    logits, iou = decoder.run(["low_res_logits", "iou"], feeds)
    assert np.abs(logits - want.numpy()).max() <= 1e-3 and np.abs(iou - want_iou.numpy()).max() <= 1e-3
    assert (logits > 0).sum() > 0  # a mask, not an empty answer
