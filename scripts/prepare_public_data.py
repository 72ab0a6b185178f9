#!/usr/bin/env python
"""Build nnU-Net v2 datasets from the public scans that scripts/fetch_public_data.sh downloads (it runs this).

    python scripts/prepare_public_data.py [--downloads data/downloads] [--out data/public]

What is read and written, and how: ``medsam3d.public_data`` (``--help`` prints it).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout's medsam3d, installed or not (PYTHON=...)

from medsam3d.public_data.build import main  # noqa: E402

if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a check on the data failed: say which, without a traceback
        sys.exit(f"error: {exc}")
