"""Shared test inputs: synthetic volumes with known geometry (spheres, a long rod, boxes, a box dataset, a DICOM
series), a stand-in model that thresholds intensity, small medsam3d-tiny models, click sessions on the bundled example
CT, and reading colours back from a preview PNG."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import json

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from medsam3d.io import Volume


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


GEOMETRIES = {
    # NIfTI's canonical RAS+ (index axes point to R, A, S), anisotropic
    "ras": dict(direction=np.diag([-1.0, -1.0, 1.0]), spacing=(0.8, 0.9, 2.5)),
    # ITK/DICOM LPS
    "lps": dict(direction=np.eye(3), spacing=(1.2, 0.9, 2.0)),
    # oblique and flipped
    "oblique": dict(direction=rotation("z", 25) @ rotation("x", -15) @ np.diag([1.0, -1.0, 1.0]),
                    spacing=(1.0, 1.3, 1.7)),
}

SPHERE_CENTER_LPS = np.array([-12.0, 30.0, 55.0])
SPHERE_RADIUS = 28.0


def sphere_volume(geometry: str, extent_mm: float = 150.0, radius: float = SPHERE_RADIUS) -> tuple[Volume, np.ndarray]:
    """A bright sphere (100) on a dim background (10), centred at SPHERE_CENTER_LPS -> (volume, true mask)."""
    g = GEOMETRIES[geometry]
    spacing = np.asarray(g["spacing"], dtype=np.float64)
    shape = tuple(int(round(extent_mm / s)) for s in spacing)
    direction = np.asarray(g["direction"], dtype=np.float64)
    # place the grid so that its centre is the sphere's centre shifted a little off-grid
    centre_ijk = (np.asarray(shape) - 1) / 2 + np.array([3.3, -4.6, 2.2])
    origin = SPHERE_CENTER_LPS - (direction * spacing) @ centre_ijk
    volume = Volume(np.zeros(shape, dtype=np.int16), spacing, origin, direction)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    inside = (np.linalg.norm(volume.ijk_to_lps(ijk) - SPHERE_CENTER_LPS, axis=1) <= radius).reshape(shape)
    volume.array = np.where(inside, 100, 10).astype(np.int16)
    return volume, inside


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


class ThresholdModel:
    """Stand-in for a trained model: the 'embedding' is the crop, the logits say 'brighter than halfway'."""

    name = "threshold-stand-in"
    is_trained = True

    def __init__(self, img_size: int = 128) -> None:
        self.config = SimpleNamespace(img_size=img_size, box_prompts=True)
        self.decode_calls = 0
        self.encode_calls = 0

    def multimask_for(self, lone_click: bool) -> bool:  # the Segmenter's decode policy: a threshold has one mask
        return False

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return image

    def decode(self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask_output=False,
               keep_best=False):  # keep_best ignored: the Segmenter must pick
        self.decode_calls += 1
        midway = (embedding.amax() + embedding.amin()) / 2
        logits = F.avg_pool3d(embedding - midway, 4) * 10.0
        return logits, torch.ones(embedding.shape[0], 1)


EXAMPLE_CT = Path(__file__).resolve().parents[1] / "data" / "example_ct_sm.nii.gz"  # 122 x 101 x 30 at 3 mm


def click_sequences(count: int = 50) -> dict[str, list[tuple[list[float], bool]]]:
    """Two objects far apart (liver, spleen), clicks alternating between them: positives around each organ's
    centre, every fourth click negative, all within the object's first window."""
    rng = np.random.default_rng(7)
    centres = {"liver": np.array([88.0, 50.0, 20.0]), "spleen": np.array([25.0, 32.0, 22.0])}
    sequences: dict[str, list] = {name: [] for name in centres}
    for n in range(count):
        name = "liver" if n % 2 == 0 else "spleen"
        k = len(sequences[name])
        negative = k % 4 == 3
        spread = np.array([14.0, 14.0, 5.0]) * (1.6 if negative else 1.0)
        point = np.clip(centres[name] + rng.uniform(-1, 1, 3) * spread, 0, [121, 100, 29])
        sequences[name].append((np.round(point, 1).tolist(), not negative))
    return sequences


# ------------------------------------------------------------------------------------------- more volumes
ROD_WINDOW = 64  # a stand-in's window for the long rod: 64 voxels of 1.5 mm = 96 mm
ROD_ENDS = ((20, 20, 14), (20, 20, 385))  # ijk, 371 voxels = 556 mm apart: more than five windows


def long_rod() -> tuple[Volume, np.ndarray]:
    """A bright rod 570 mm long (k 10..389) on a dim background, 1.5 mm voxels -> (volume, true mask)."""
    shape = (40, 40, 400)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    rod = ((i - 20) ** 2 + (j - 20) ** 2 <= 36) & (k >= 10) & (k < 390)
    array = np.where(rod, 200, 0).astype(np.int16)
    return Volume(array, np.array([1.5, 1.5, 1.5]), np.zeros(3), np.eye(3)), rod


def box(shape, lo, hi) -> np.ndarray:
    """A boolean array of ``shape``, True on the box [lo, hi)."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def write_dataset(root, n=2):
    """An nnU-Net v2 dataset of ``n`` cases at ``root``: two boxes (labels 1 and 2) of different brightness."""
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


def write_dicom_series(volume: Volume, folder: Path, uid: str) -> None:
    """``volume`` as a CT DICOM series in ``folder``, one file per slice k (instance number k + 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        tags = {
            "0020|000e": uid, "0020|000d": uid + ".0", "0008|0060": "CT", "0010|0010": "TEST^PHANTOM",
            "0020|0052": uid + ".9", "0010|0020": "PHANTOM1", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0020|0037": "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0013": str(z + 1), "0008|0018": f"{uid}.{z + 1}",
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{uid.split('.')[-1]}_{z:04d}.dcm"))
        writer.Execute(sl)


# ------------------------------------------------------------------------------------------- small models
def small_tiny(**overrides):
    """A small medsam3d-tiny (64^3 crops) in training mode, seeded: plumbing, not a segmentation."""
    from medsam3d.models import build_model

    torch.manual_seed(0)
    return build_model("medsam3d-tiny", img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96,
                       decoder_heads=2, iou_head_hidden_dim=32, mask_in_chans=8, **overrides).train()


# medsam3d-tiny with the mask head and multimask refinement, for fine_output (S/2 logits) on and off
FINE_SMALL = dict(img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96, decoder_heads=2,
                  iou_head_hidden_dim=32, mask_in_chans=8, first_click_multimask=True, mask_iou_head=True,
                  multimask_refine=True)


def fine_model(fine: bool, seed: int = 0):
    """FINE_SMALL with ``fine_output`` on or off, seeded, in eval mode."""
    from medsam3d.models import build_model

    torch.manual_seed(seed)
    return build_model("medsam3d-tiny", fine_output=fine, **FINE_SMALL).eval()


def open_read_out(model) -> None:
    """Give the fine head's zero-initialised read-out some weights, as training would."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for mlp in model.mask_decoder.fine_head.hypernetworks:
            mlp.layers[-1].weight.copy_(torch.randn(mlp.layers[-1].weight.shape, generator=gen))


def read_out_grad(model) -> float:
    """The summed absolute gradient on the fine head's read-out weights."""
    return sum(float(mlp.layers[-1].weight.grad.abs().sum()) for mlp in model.mask_decoder.fine_head.hypernetworks
               if mlp.layers[-1].weight.grad is not None)


def one_click() -> tuple[torch.Tensor, torch.Tensor]:
    """One positive click in a 64^3 crop -> (points (1, 1, 3), labels (1, 1))."""
    return torch.tensor([[[30.0, 28.0, 33.0]]]), torch.tensor([[1]])


def random_image(seed: int = 1) -> torch.Tensor:
    """A seeded (1, 1, 64, 64, 64) noise image, for the small models above."""
    return torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- previews
def colour_mask(png: np.ndarray, hex_colour: str, tol: float = 0.12) -> np.ndarray:
    """Where a PNG read back with matplotlib shows ``hex_colour`` ("#rrggbb"), within ``tol`` per channel."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return (np.abs(png[..., :3] - rgb) < tol).all(-1)
