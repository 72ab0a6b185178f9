"""The local model store: named weights under ``$MEDSAM3D_HOME`` (default ``~/.cache/medsam3d``).

``manifest.json`` records, per name: the architecture (``build_model`` name + config), the weight file, its
sha256 and size, where it came from, and (FastSAM3D) the store entry its decoder comes from. ``import`` copies
a local checkpoint in; ``pull`` downloads a published one (resumable, verified); both refuse a file that does not
load strictly into the named architecture. The default model ships inside the package (``medsam3d/weights``).

Nothing here runs at segmentation time except ``resolve``: the network is touched only by ``pull``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import InputError

PACKAGED = Path(__file__).parent / "weights"

# Published checkpoints `pull` knows. The publishers give no checksums; a sha256 of None means the first
# download's digest is recorded in the manifest (and printed) and every later use is checked against it.
# Pin one with `medsam3d models pull NAME --sha256 HEX`.
REMOTE: dict[str, dict[str, Any]] = {
    "sam-med3d-turbo": {
        "model": "sam-med3d",
        "url": "https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth",
        "sha256": None,
        "license": "Apache-2.0 (SAM-Med3D, uni-medical)",
        "about": "SAM-Med3D-turbo: ViT-B 3D teacher, 76-81% Dice with 1-10 clicks on its test sets",
    },
    "fastsam3d": {
        "model": "fastsam3d",
        "url": "https://drive.usercontent.google.com/download?id=1-rvRh1VYeBSWmAqNUS-9lKomtiaNXCL8"
               "&export=download&confirm=t",
        "sha256": None,
        "decoder": "sam-med3d-turbo",
        "license": "Apache-2.0 (FastSAM3D, arcadelab)",
        "about": "FastSAM3D's released 6-layer student encoder; prompt encoder and decoder from SAM-Med3D-turbo",
    },
}


def home() -> Path:
    return Path(os.environ.get("MEDSAM3D_HOME", "~/.cache/medsam3d")).expanduser()


@dataclass
class Resolved:
    """What ``build_model`` needs for a stored name."""

    model: str
    config: dict
    checkpoint: Path
    decoder_checkpoint: Optional[Path]
    sha256: str


# ---------------------------------------------------------------------------------------------- manifest
def load_manifest() -> dict[str, dict]:
    path = home() / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("models", {})
    except ValueError:
        raise InputError(f"the model store's manifest is corrupt: {path}") from None


def _save_manifest(models: dict[str, dict]) -> None:
    from .io import write_text_atomic

    home().mkdir(parents=True, exist_ok=True)
    write_text_atomic(home() / "manifest.json", json.dumps({"models": models}, indent=2, sort_keys=True))


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- queries
def default_model() -> Resolved:
    """The default model that ships inside the package (weights checked against their recorded sha256)."""
    card = PACKAGED / "default.json"
    if not card.is_file():
        raise InputError("no trained default model ships with this version of medsam3d yet; pass --model NAME "
                         "--checkpoint PATH, or pull a published model (medsam3d models pull sam-med3d-turbo)")
    info = json.loads(card.read_text())
    path = PACKAGED / info["file"]
    if not path.is_file() or sha256_of(path) != info["sha256"]:
        raise InputError(f"the packaged default weights {path} are missing or damaged; reinstall medsam3d")
    return Resolved(info["model"], info.get("config", {}), path, None, info["sha256"])


def list_models() -> list[dict[str, Any]]:
    """Every name ``--model`` can take from the store: installed entries, then known but not yet pulled."""
    installed = load_manifest()
    rows = [{"name": n, "installed": True, **e} for n, e in sorted(installed.items())]
    rows += [{"name": n, "installed": False, **e} for n, e in sorted(REMOTE.items()) if n not in installed]
    if (PACKAGED / "default.json").is_file():
        rows.insert(0, {"name": "default", "installed": True, **json.loads((PACKAGED / "default.json").read_text())})
    return rows


def info(name: str) -> dict[str, Any]:
    for row in list_models():
        if row["name"] == name:
            return row
    raise InputError(f"no model named {name!r} in the store ({home()}); known: "
                     f"{', '.join(r['name'] for r in list_models()) or 'none'}")


def resolve(name: str, verify: bool = True) -> Optional[Resolved]:
    """A stored name -> its checkpoint(s); None if ``name`` is not in the store. Checks size and checksum."""
    entry = load_manifest().get(name)
    if entry is None:
        return None
    path = home() / entry["file"]
    if not path.is_file():
        raise InputError(f"model {name}'s weights are missing from the store: {path} (pull or import it again)")
    if verify:
        if path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
            raise InputError(f"model {name}'s weights in {path} do not match their recorded sha256; "
                             "pull or import it again")
    decoder = None
    if entry.get("decoder"):
        dec = resolve(entry["decoder"], verify)
        if dec is None:
            raise InputError(f"model {name} takes its decoder from {entry['decoder']}, which is not in the store: "
                             f"medsam3d models pull {entry['decoder']}")
        decoder = dec.checkpoint
    return Resolved(entry["model"], entry.get("config", {}), path, decoder, entry["sha256"])


# ---------------------------------------------------------------------------------------------- adding
def _check_architecture(path: Path, model: str, config: dict, decoder: Optional[Path]) -> None:
    from .models import build_model

    build_model(model, checkpoint=path, decoder_checkpoint=decoder, **config)  # strict: raises InputError


def _register(name: str, staged: Path, model: str, config: dict, source: str, decoder: Optional[str],
              expected_sha: Optional[str]) -> dict:
    digest = sha256_of(staged)
    if expected_sha and digest != expected_sha.lower():
        staged.unlink(missing_ok=True)
        raise InputError(f"checksum mismatch for {name}: expected {expected_sha}, got {digest}; file discarded")
    dec_path = resolve(decoder).checkpoint if decoder else None
    try:
        _check_architecture(staged, model, config, dec_path)
    except InputError:
        staged.unlink(missing_ok=True)
        raise
    target = home() / "models" / f"{name}.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)
    entry = {"model": model, "config": config, "file": str(target.relative_to(home())), "sha256": digest,
             "size": target.stat().st_size, "source": source, "decoder": decoder,
             "added": time.strftime("%Y-%m-%dT%H:%M:%S")}
    models = load_manifest()
    models[name] = entry
    _save_manifest(models)
    return entry


def import_checkpoint(path: str | os.PathLike, name: str, model: str, config: Optional[dict] = None,
                      decoder: Optional[str] = None) -> dict:
    """Copy a local checkpoint into the store under ``name`` after checking it loads into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    if name == "default" or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InputError(f"invalid store name {name!r}: use letters, digits, '-', '_' or '.'")
    root = home() / "models"
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
    os.close(fd)
    shutil.copyfile(path, tmp)
    return _register(name, Path(tmp), model, config or {}, f"import:{path.resolve()}", decoder, None)


def pull(name: str, url: Optional[str] = None, sha256: Optional[str] = None,
         progress: Optional[Callable[[int, Optional[int]], None]] = None, timeout: float = 60.0) -> dict:
    """Download a published checkpoint into the store (resuming a partial download), verify and register it."""
    if name not in REMOTE:
        raise InputError(f"pull knows {', '.join(REMOTE)}; for other weights use: medsam3d models import PATH "
                         f"--name {name} --model ARCH")
    spec = REMOTE[name]
    if spec.get("decoder") and resolve(spec["decoder"], verify=False) is None:
        pull(spec["decoder"], progress=progress, timeout=timeout)
    url = url or spec["url"]
    part = home() / "models" / f"{name}.pth.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    download(url, part, progress, timeout)
    return _register(name, part, spec["model"], spec.get("config", {}), url, spec.get("decoder"),
                     sha256 or spec.get("sha256"))


def download(url: str, part: Path, progress: Optional[Callable[[int, Optional[int]], None]] = None,
             timeout: float = 60.0, attempts: int = 5) -> None:
    """HTTP(S) GET into ``part``, continuing from its current size with Range requests after interruptions."""
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "medsam3d", **({"Range": f"bytes={have}-"}
                                                                                      if have else {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if "text/html" in response.headers.get("Content-Type", ""):
                    raise InputError(f"{url} returned a web page instead of the weights (a login or confirmation "
                                     "page?); download it by hand and use: medsam3d models import")
                resumed = response.status == 206
                length = response.headers.get("Content-Length")
                total = (int(length) + (have if resumed else 0)) if length else None
                mode = "ab" if resumed else "wb"
                done = have if resumed else 0
                with open(part, mode) as f:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        f.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                if total is not None and done < total:
                    raise ConnectionError(f"connection closed at {done} of {total} bytes")
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # asked for bytes past the end: the part file is already complete
                return
            raise InputError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
            if attempt == attempts - 1:
                reason = getattr(exc, "reason", exc)
                raise InputError(f"cannot download {url}: {reason} (the partial file is kept; pull again to "
                                 "resume)") from None
            time.sleep(min(2**attempt, 10) * 0.1)
