#!/usr/bin/env bash
# Held-out evaluation of a model with the click protocol, against both baselines, into docs/.
#   bash scripts/evaluate_default.sh [MODEL_YAML_OR_NAME] [CHECKPOINT]
# Defaults to the packaged default model. Held-out subjects: configs/data/public_split.json
# (ts_ct_dicom: CT, 31 TotalSegmentator structures; colin27: brain MR, every 4th AAL region + none of GM/WM;
# lung1: a 1.4 ml lung nodule on CT; brain1, brain2: brain MR lesions).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-default}
ckpt=${2:-}
extra=()
[ -n "$ckpt" ] && extra=(--checkpoint "$ckpt")
[ -f data/public/Dataset206_ChestCT/dataset.json ] || bash scripts/fetch_public_data.sh  # absent or an older build
mkdir -p docs
medsam3d evaluate data/public/Dataset201_TotalSegCT --cases ts_ct_dicom --model "$model" "${extra[@]}" \
    --clicks 1,3,5,10 --out docs/heldout_ct.json --plot docs/heldout_ct.png --threads 2
aal=$(python -c "print(','.join(str(v) for v in range(4, 120, 4)))")
medsam3d evaluate data/public/Dataset203_BrainMR --cases colin27 --labels "$aal" --model "$model" "${extra[@]}" \
    --clicks 1,3,5,10 --out docs/heldout_brain.json --plot docs/heldout_brain.png --threads 2
medsam3d evaluate data/public/Dataset204_LesionCT --cases lung1 --model "$model" "${extra[@]}" \
    --clicks 1,3,5,10 --out docs/heldout_lesion_ct.json --plot docs/heldout_lesion_ct.png --threads 2
medsam3d evaluate data/public/Dataset205_LesionMR --cases brain1,brain2 --model "$model" "${extra[@]}" \
    --clicks 1,3,5,10 --out docs/heldout_lesion_mr.json --plot docs/heldout_lesion_mr.png --threads 2
