#!/usr/bin/env bash
# Regenerate the packaged default's ONNX bundle, medsam3d/weights/default_onnx (fp32), from medsam3d/weights/default.pt.
# A promotion (scripts/promote.py) already does this; run it by hand only after changing medsam3d/export.py or the
# models' graphs. Needs the onnx extra: pip install -e '.[onnx]'.
# The export checks the graphs against PyTorch (max abs difference 1e-3) before it replaces the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m medsam3d export onnx --model default -o medsam3d/weights/default_onnx "$@"
