"""Tissue classes: what a structure's name says about how it looks, and the CT numbers each class takes.

Every region of a synthetic scene carries one tissue class. CT painting draws its mean from the class's Hounsfield
range (contrast phase shifts vessels and organs); MR painting gives each class a random contrast per scene.
"""

from __future__ import annotations

import numpy as np

TISSUES = ("air", "airway", "lung", "gas", "fat", "fluid", "soft", "muscle", "organ", "artery", "vein", "heart",
           "bone", "cortex", "marrow", "cartilage", "gm", "wm", "csf", "cord", "lesion", "rim", "necrosis")

# range of a structure's mean HU without contrast (class -> (low, high))
CT_HU = {
    "air": (-1010.0, -985.0), "airway": (-1000.0, -900.0), "lung": (-900.0, -780.0), "gas": (-1000.0, -650.0),
    "fat": (-130.0, -70.0), "fluid": (-5.0, 25.0), "soft": (20.0, 60.0), "muscle": (35.0, 65.0),
    "organ": (25.0, 75.0), "artery": (30.0, 55.0), "vein": (30.0, 55.0), "heart": (30.0, 55.0),
    "bone": (300.0, 1200.0), "cortex": (600.0, 1400.0), "marrow": (120.0, 400.0), "cartilage": (70.0, 140.0),
    "gm": (35.0, 45.0), "wm": (22.0, 32.0), "csf": (0.0, 15.0), "cord": (25.0, 45.0),
    "lesion": (-20.0, 120.0), "rim": (60.0, 200.0), "necrosis": (-5.0, 30.0),
}
# HU added per contrast phase ("none", "arterial", "venous"): (low, high) per class; classes not listed get none
CT_CONTRAST = {
    "arterial": {"artery": (150.0, 350.0), "heart": (100.0, 300.0), "organ": (10.0, 60.0), "vein": (0.0, 60.0),
                 "rim": (20.0, 100.0)},
    "venous": {"artery": (90.0, 180.0), "vein": (90.0, 180.0), "heart": (80.0, 160.0), "organ": (30.0, 90.0),
               "rim": (20.0, 80.0), "lesion": (0.0, 40.0)},
}
# standard deviation of the texture inside a structure, HU (lung: the vessels and septa of the parenchyma)
CT_TEXTURE = {"air": 2.0, "airway": 10.0, "lung": 45.0, "gas": 80.0, "fat": 10.0, "fluid": 4.0, "soft": 10.0,
              "muscle": 10.0, "organ": 12.0, "artery": 8.0, "vein": 8.0, "heart": 12.0, "bone": 90.0,
              "cortex": 120.0, "marrow": 60.0, "cartilage": 12.0, "gm": 3.0, "wm": 3.0, "csf": 3.0, "cord": 5.0,
              "lesion": 18.0, "rim": 20.0, "necrosis": 8.0}

# first match wins: (name fragments, class); order matters ("intervertebral_disc" before "vertebra", cysts first)
_KEYWORDS = (
    (("cyst", "bladder", "gallbladder"), "fluid"),
    (("lesion", "tumor", "tumour", "nodule", "metasta"), "lesion"),
    (("disc", "cartilage"), "cartilage"),
    (("lung",), "lung"),
    (("trachea", "airway", "bronch"), "airway"),
    (("vertebra", "sacrum", "rib", "skull", "femur", "hip", "humerus", "scapula", "clavicul", "sternum", "bone",
      "pelvi", "tibia", "fibula", "patella", "mandible"), "bone"),
    (("heart", "atrial", "ventricle", "myocard"), "heart"),
    (("aorta", "artery", "arterial", "trunk"), "artery"),
    (("vein", "vena", "portal", "sinus"), "vein"),
    (("gluteus", "autochthon", "iliopsoas", "muscle", "psoas"), "muscle"),
    (("white",), "wm"),
    (("csf", "ventric"), "csf"),
    (("grey", "gray", "brain", "cortex", "cerebel", "thalamus", "caudate", "putamen", "pallidum", "hippocamp",
      "amygdala"), "gm"),
    (("cord",), "cord"),
    (("fat", "adipose"), "fat"),
)


def tissue_of(name: str) -> str:
    """A structure's name ("kidney_cyst_left", "rib_left_3", "grey_matter") -> its tissue class (default organ)."""
    low = str(name).lower()
    for fragments, tissue in _KEYWORDS:
        if any(f in low for f in fragments):
            return tissue
    return "organ"


def ct_mean(tissue: str, phase: str, rng: np.random.Generator) -> float:
    """One structure's mean HU in a scan of contrast ``phase``."""
    lo, hi = CT_HU[tissue]
    value = rng.uniform(lo, hi)
    boost = CT_CONTRAST.get(phase, {}).get(tissue)
    return float(value + (rng.uniform(*boost) if boost else 0.0))
