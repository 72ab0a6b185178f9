#!/usr/bin/env python
"""Write the toy nnU-Net v2 dataset the smoke configs train on (synthetic CT-like scans, 3 labels).

    python scripts/make_toy_dataset.py data/smoke/Dataset001_Toy [--cases 4]
"""

import argparse

from medsam3d.training.synthetic import write_toy_dataset

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("root")
parser.add_argument("--cases", type=int, default=4)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
print(write_toy_dataset(args.root, args.cases, seed=args.seed))
