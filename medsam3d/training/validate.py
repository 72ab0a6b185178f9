"""The click protocol in model space, on crops of preprocessed cases: a quick check a training job can run where
the full evaluator (which reads scans with SimpleITK) cannot, such as the end of a GPU burst.

Each structure gets one 128^3 crop centred on its deepest point; clicks follow ``evaluation.protocol`` (deepest
point, then the centre of the largest error), decoded as the Segmenter decodes them (every prompt set with the
model's multimask rule, the best-scored mask kept, the previous logits fed back). Dice is measured inside the crop
only, so objects larger than a window score differently from the real evaluator: a preview, never the gate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.protocol import deepest_point, next_click
from ..intensity import modality_of, normalise
from .data import structures
from .dataset import _crop


@torch.no_grad()
def crop_protocol(model, image: np.ndarray, target: np.ndarray, clicks: list[int],
                  device: torch.device) -> dict[str, float]:
    """image (S, S, S) normalised, target (S, S, S) bool -> {"k": Dice after k clicks} for k in ``clicks``."""
    size = image.shape[0]
    features = model.encode(torch.from_numpy(image)[None, None].to(device))
    points, labels, previous, out = [deepest_point(target)], [1], None, {}
    pred = np.zeros_like(target)
    for k in range(1, max(clicks) + 1):
        if k > 1:
            click = next_click(pred, target)
            if click is None:
                out.update({str(c): 1.0 for c in clicks if c >= k})
                break
            points.append(click[0])
            labels.append(click[1])
        logits, iou = model.decode(
            features, points=torch.tensor(np.array(points), dtype=torch.float32, device=device)[None],
            labels=torch.tensor(labels, device=device)[None], mask_input=previous,
            multimask_output=model.multimask_for(lone_click=k == 1), keep_best=True)  # (1, M, L, L, L), (1, M)
        best = int(iou[0].argmax())
        previous = logits[:, best:best + 1].float()
        pred = (F.interpolate(previous, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0] > 0)
        pred = pred.cpu().numpy()
        if k in clicks:
            total = pred.sum() + target.sum()
            out[str(k)] = 1.0 if total == 0 else float(2 * np.logical_and(pred, target).sum() / total)
    return out


def validate(model, folder: str | Path, records: list[dict], clicks: list[int], device: torch.device,
             min_voxels: int = 200, log=print) -> dict:
    """Every structure of the packed/preprocessed cases in ``records`` -> per-structure and mean Dice per click."""
    folder = Path(folder)
    size = int(model.config.img_size)
    rows = []
    model.eval()
    for s in structures(records, folder, None, min_voxels):
        data = np.load(folder / records[s.case]["file"])
        image, label = data["image"].astype(np.float32), data["label"]
        mask = label == s.value
        centre = deepest_point(mask)
        crop = normalise(_crop(image, centre, size, float(image.min())),
                         modality_of(records[s.case].get("modality", "unknown")))
        target = _crop(mask, centre, size, False)
        dice = crop_protocol(model, crop, target, clicks, device)
        rows.append({"case": records[s.case]["case_id"], "label": s.value, "dice": dice})
    means = {str(k): float(np.mean([r["dice"][str(k)] for r in rows])) for k in clicks} if rows else {}
    log("model-space preview: " + " ".join(f"@{k} {v:.3f}" for k, v in means.items()) + f" ({len(rows)} structures)")
    return {"mean_dice": means, "n_structures": len(rows), "per_structure": rows,
            "note": "model-space crops, Dice inside the crop: a preview of the held-out gate, not the gate"}
