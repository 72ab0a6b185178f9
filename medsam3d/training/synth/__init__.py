"""Synthetic training volumes composed from a bank of real label-map shapes and procedural objects
(SynthSeg, SynthMorph, anatomix): ``compose(index, SynthConfig(...))``."""

from .bank import ShapeBank, bank_for, build_bank, split_heldout
from .composer import KINDS, SynthConfig, Synthetic, compose

__all__ = ["KINDS", "ShapeBank", "SynthConfig", "Synthetic", "bank_for", "build_bank", "compose", "split_heldout"]
