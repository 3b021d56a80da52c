"""Real photos for the toy models from Debian packages: ``python -m training.toy_sources``.

Offline-installable photos (no root install): ``apt-get download`` fetches each package of
``PACKAGES`` into ``<cache>/debs``, ``dpkg -x`` unpacks it into ``<cache>/unpacked/<pkg>``, and
every selected image is decoded once, downscaled to ``GATHER_SIDE`` px on its longer side
(INTER_AREA) and written as PNG into ``<out>/train/`` or ``<out>/heldout/``.

Held out for evaluation, never trained on: OpenCV's classic matching pairs (``HELD_OUT_PATTERNS``:
``graf*``, ``leuven*``, ``aloe*``, ``rubberwhale*``, ``basketball*``, ``box*``), copied with their
ground-truth homography (``H1to3p.xml``, graf1 → graf3) rewritten for the downscaled pixels
into ``<out>/heldout/pairs.json``. Near-duplicates within a package (the same
wallpaper at several sizes) are dropped by a 16 × 16 grey thumbnail (mean absolute difference
below ``DUPLICATE_LEVEL`` grey levels).

The manifest (``training/toy_sources.json``, committed; the photos are not) records, for every
file: role (train / heldout), source package and version, path inside the package, licence (from
the package's ``/usr/share/doc/<pkg>/copyright``), the SHA-256 of the packaged file and of the
written PNG, and the size before and after downscaling.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from cleandift_rt.errors import CleanDIFTError

PACKAGES = (
    "opencv-doc",
    "plasma-workspace-wallpapers",
    "mate-backgrounds",
    "gnome-backgrounds",
    "ukui-wallpapers",
    "lomiri-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "sway-backgrounds",
)
HELD_OUT_PATTERNS = ("graf*", "leuven*", "aloe*", "rubberwhale*", "basketball*", "box*")
REAL_PAIRS = "pairs.json"  # held-out pairs with OpenCV's ground-truth homographies
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
GATHER_SIDE = 512  # px: longer side of the written photos
MIN_SIDE = 64  # px: smaller images (icons, templates) are skipped
DUPLICATE_LEVEL = 3.0  # grey levels: thumbnails closer than this are one photo
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
MANIFEST = Path(__file__).with_name("toy_sources.json")
#: not photos (a disparity map) or near-repeats (the calibration chessboard's 2nd…14th views)
SKIPPED = re.compile(r"aloeGT\.png|(left|right)(0[2-9]|1\d)\.jpg")


def is_held_out(name: str) -> bool:
    """Whether a file name (any folder) belongs to the held-out evaluation photos."""
    base = Path(name).name.split("--")[-1].lower()
    return any(fnmatch.fnmatch(base, p) for p in HELD_OUT_PATTERNS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(packages: tuple[str, ...], debs: Path) -> dict[str, Path]:
    """{package: .deb path}, fetched with ``apt-get download`` unless already in ``debs``."""
    debs.mkdir(parents=True, exist_ok=True)

    def present() -> dict[str, Path]:
        found = {}
        for deb in sorted(debs.glob("*.deb")):
            found[_deb_field(deb, "Package")] = deb
        return found

    missing = [p for p in packages if p not in present()]
    if missing:
        if shutil.which("apt-get") is None:
            raise CleanDIFTError("apt-get not found: the Debian photos need a Debian-based system")
        done = subprocess.run(
            ["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise CleanDIFTError(f"apt-get download failed ({last}); run apt-get update first?")
    found = present()
    return {p: found[p] for p in packages if p in found}


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def unpack(deb: Path, root: Path) -> Path:
    """``dpkg -x`` into ``root`` (once; a folder that exists is reused)."""
    if not root.is_dir():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)  # dpkg -x makes only the last folder
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(root)
    return root


def licence_of(root: Path, package: str, rel: str) -> str:
    """The licence of ``rel`` per the package's copyright file: the machine-readable (DEP-5)
    paragraph whose ``Files:`` globs match the file's name (most specific wins), else the
    ``Files: *`` paragraph, else the first 'Licensed under …' sentence."""
    text = (root / "usr/share/doc" / package / "copyright").read_text(errors="replace")
    best, generic = None, None
    for para in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
        lic = re.search(r"^License:\s*(\S.*)$", para, re.M)
        if not (files and lic):
            continue
        globs = files.group(1).split()
        name = Path(rel).name
        if "*" in globs:
            generic = generic or lic.group(1).strip()
        elif any(fnmatch.fnmatch(name, Path(g).name) for g in globs):
            best = best or lic.group(1).strip()
    if best or generic:
        return best or generic
    said = re.search(r"Licen[sc]ed under (?:the )?(.+?)\.?\s*$", text, re.M)
    return said.group(1).strip() if said else "see copyright"


def candidates(package: str, root: Path) -> list[Path]:
    """The package's photo files, sorted (relative to ``root``), by the package's layout."""
    if package == "opencv-doc":
        files = [p for p in (root / OPENCV_DATA).iterdir() if p.is_file()]
    elif package == "plasma-workspace-wallpapers":  # largest image of each wallpaper, light
        files = []
        for folder in sorted((root / "usr/share/wallpapers").glob("*/contents/images")):
            images = [
                p
                for p in folder.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_symlink()
            ]
            if images:
                files.append(max(images, key=lambda p: (p.stat().st_size, p.name)))
    else:
        files = [p for p in root.rglob("*") if p.is_file() and "/usr/share/doc/" not in str(p)]
    keep = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_symlink()]
    keep = [p for p in keep if "screenshot" not in p.name.lower() and not SKIPPED.fullmatch(p.name)]
    return sorted(p.relative_to(root) for p in keep)


def _decode(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def downscale(image: np.ndarray, side: int = GATHER_SIDE) -> np.ndarray:
    """uint8 (H, W, 3) with the longer side at most ``side`` (INTER_AREA)."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)


def _out_name(package: str, rel: Path) -> str:
    stem = rel.parts[-4] if package == "plasma-workspace-wallpapers" else rel.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{package}--{stem}") + ".png"


def _pixel_scale(size: list[int], written: list[int]) -> np.ndarray:
    """3×3 map from original to downscaled pixel coordinates (pixel centres at integers)."""
    sx, sy = written[0] / size[0], written[1] / size[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def ground_truth_pairs(data: Path, written: dict[str, dict]) -> list[dict]:
    """OpenCV's ground-truth homographies (``H1to3p.xml``: graf1 → graf3) re-expressed in the
    written (downscaled) photos' pixel coordinates: [{source, target, homography 3×3}]."""
    pairs = []
    for xml in sorted(data.iterdir()):
        match = re.fullmatch(r"H(\d)to(\d)p\.xml", xml.name)
        if not match:
            continue
        store = cv2.FileStorage(str(xml), cv2.FILE_STORAGE_READ)
        h = store.getNode(f"H{match[1]}{match[2]}").mat()
        store.release()
        src = next((n for n in written if re.fullmatch(rf"graf{match[1]}\.\w+", n)), None)
        tgt = next((n for n in written if re.fullmatch(rf"graf{match[2]}\.\w+", n)), None)
        if h is None or src is None or tgt is None:
            continue
        a = _pixel_scale(written[src]["size"], written[src]["written_size"])
        b = _pixel_scale(written[tgt]["size"], written[tgt]["written_size"])
        m = b @ h @ np.linalg.inv(a)
        pairs.append(
            {
                "source": Path(written[src]["file"]).name,
                "target": Path(written[tgt]["file"]).name,
                "homography": (m / m[2, 2]).tolist(),
                "from": f"{OPENCV_DATA}/{xml.name} (original pixels)",
            }
        )
    return pairs


@dataclass
class Gathered:
    manifest: dict
    train: int
    heldout: int
    skipped: int


def gather(cache: Path, out: Path, packages: tuple[str, ...] = PACKAGES, side: int = GATHER_SIDE):
    """Download, unpack and write the photos; returns the manifest (not yet written)."""
    debs = download(packages, cache / "debs")
    missing = [p for p in packages if p not in debs]
    if missing:
        raise CleanDIFTError(f"no .deb for {', '.join(missing)} in '{cache / 'debs'}'")
    for role in ("train", "heldout"):
        shutil.rmtree(out / role, ignore_errors=True)
        (out / role).mkdir(parents=True)
    entries, skipped = [], 0
    for package in packages:
        deb = debs[package]
        version = _deb_field(deb, "Version")
        root = unpack(deb, cache / "unpacked" / package)
        seen: list[np.ndarray] = []
        for rel in candidates(package, root):
            held = package == "opencv-doc" and is_held_out(rel.name)
            image = _decode(root / rel)
            if image is None or min(image.shape[:2]) < MIN_SIDE:
                skipped += 1
                continue
            small = downscale(image, side)
            thumb = _thumbnail(small)
            if not held and any(np.abs(thumb - t).mean() < DUPLICATE_LEVEL for t in seen):
                skipped += 1
                continue
            seen.append(thumb)
            role = "heldout" if held else "train"
            name = _out_name(package, rel)
            target = out / role / name
            if target.exists():
                raise CleanDIFTError(f"two photos would be written as '{target}'")
            cv2.imwrite(str(target), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
            entries.append(
                {
                    "file": f"{role}/{name}",
                    "role": role,
                    "package": package,
                    "version": version,
                    "path": "/" + rel.as_posix(),
                    "licence": licence_of(root, package, rel.as_posix()),
                    "sha256": _sha256(root / rel),
                    "png_sha256": _sha256(target),
                    "size": [int(image.shape[1]), int(image.shape[0])],
                    "written_size": [int(small.shape[1]), int(small.shape[0])],
                }
            )
        if package == "opencv-doc":
            sizes = {e["path"].rsplit("/", 1)[-1]: e for e in entries if e["role"] == "heldout"}
            pairs = ground_truth_pairs(root / OPENCV_DATA, sizes)
            (out / "heldout" / REAL_PAIRS).write_text(json.dumps(pairs, indent=1) + "\n")
    manifest = {
        "about": "Photos of the toy models (training/toy_sources.py); photos are not committed.",
        "side": side,
        "held_out_patterns": list(HELD_OUT_PATTERNS),
        "packages": {p: _deb_field(debs[p], "Version") for p in packages},
        "files": entries,
    }
    train = sum(e["role"] == "train" for e in entries)
    return Gathered(manifest, train, len(entries) - train, skipped)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--cache", default="runs/toy", type=click.Path(file_okay=False))
@click.option("--out", default="runs/toy/sources", type=click.Path(file_okay=False))
@click.option("--side", type=click.IntRange(MIN_SIDE), default=GATHER_SIDE, help="Longer side.")
@click.option("--manifest", default=str(MANIFEST), type=click.Path(dir_okay=False))
def cli(cache: str, out: str, side: int, manifest: str) -> None:
    """Fetch the Debian photo packages and write OUT/train, OUT/heldout and the manifest."""
    result = gather(Path(cache), Path(out), side=side)
    path = Path(manifest)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result.manifest, indent=1) + "\n")
    tmp.replace(path)
    click.echo(
        f"wrote {result.train} training and {result.heldout} held-out photos to {out} "
        f"({result.skipped} skipped: duplicates or too small); manifest {path}"
    )


def main(argv: list[str] | None = None) -> None:
    from cleandift_rt.console import run_console

    run_console(cli, argv, "python -m training.toy_sources")


if __name__ == "__main__":
    main()
