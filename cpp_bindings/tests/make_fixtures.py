"""Write the reference data of the C++ tests (ctest fixture ``python_fixtures``).

Usage: ``python make_fixtures.py OUT_DIR WITH_AOTI`` (WITH_AOTI: 1 to export the tiny AOTInductor
package, 0 when the library was built without libtorch).

OUT_DIR/manifest.txt lists every array as ``array NAME DTYPE D0 D1 ...`` (raw little-endian
C-order data in OUT_DIR/NAME.bin) and scalars as ``value KEY TEXT``. Contents:

* matcher references from the Python matcher (cleandift_rt.matching): ``cosine_argmax_reference``
  over an interpolate grid and an input-transform grid, ``sample_descriptors``, ``mutual_nearest``;
* with WITH_AOTI=1: ONE AOTInductor package of the ``tiny`` model (taps us6, mid; 64x64; batch
  1..4; fp32), its input photos, the PyTorch taps of those photos, broken copies of its sidecar
  (mismatched taps, another torch version, another format version, another file name) and two
  full-size photos as PPM (source.ppm, target.ppm) for the match_images example.

The export (about 1 min on 2 cores) is reused when OUT_DIR already holds one made by the same
torch and the same version of this script.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from cleandift_rt.matching import (
    PixelGrid,
    cosine_argmax_reference,
    mutual_nearest,
    sample_descriptors,
)

TAPS = ("us6", "mid")
SIZE = (64, 64)
# Test-only compile settings (as tests/test_export_aoti.py): scalar kernels, unoptimised wrapper.
FAST_COMPILE = {"cpp.simdlen": 0, "aot_inductor.compile_wrapper_opt_level": "O0"}


class Manifest:
    """Collects arrays and values and writes them under ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.lines: list[str] = []

    def array(self, name: str, value: np.ndarray | torch.Tensor) -> None:
        a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        a = np.ascontiguousarray(a)
        dtype = {np.float32: "f32", np.float64: "f64", np.int64: "i64", np.uint8: "u8"}[
            a.dtype.type
        ]
        (self.out / f"{name}.bin").write_bytes(a.astype(a.dtype.newbyteorder("<")).tobytes())
        self.lines.append(" ".join(["array", name, dtype, *map(str, a.shape)]))

    def value(self, key: str, text: str) -> None:
        self.lines.append(f"value {key} {text}")

    def write(self) -> None:
        tmp = self.out / "manifest.txt.tmp"
        tmp.write_text("\n".join(self.lines) + "\n")
        os.replace(tmp, self.out / "manifest.txt")


def matcher_references(m: Manifest) -> None:
    """Python matcher results on fixed-seed random maps (C = 48)."""
    g = torch.Generator().manual_seed(8)
    target = torch.randn(48, 7, 9, generator=g)
    source = torch.randn(48, 6, 5, generator=g)
    queries = torch.randn(37, 48, generator=g)
    m.array("target", target)
    m.array("source", source)
    m.array("queries", queries)
    # 1. interpolate grid (F.interpolate to 53 x 61)
    coords, scores = cosine_argmax_reference(queries, target, (53, 61))
    m.array("argmax_interp_xy", coords)
    m.array("argmax_interp_scores", scores)
    # 2. an original image resized (x 0.4) and padded (offset 3, 5) into a stride-8 network
    grid = PixelGrid.from_input_transform((170, 150), (0.4, 0.4), (3.0, 5.0), (8.0, 8.0))
    coords, scores = cosine_argmax_reference(queries, target, grid=grid)
    m.array("argmax_transform_xy", coords)
    m.array("argmax_transform_scores", scores)
    # 3. sample_descriptors at float points of a 40 x 33 interpolate grid
    points = torch.rand(11, 2, generator=g, dtype=torch.float64) * torch.tensor([32.0, 39.0])
    points -= 0.5
    m.array("points", points)
    m.array("sampled", sample_descriptors(source, points, (40, 33)))
    # 4. mutual nearest between descriptor sets
    a = torch.randn(50, 48, generator=g)
    b = torch.cat(
        [a[::2] + 0.3 * torch.randn(25, 48, generator=g), torch.randn(20, 48, generator=g)]
    )
    scores, pairs = mutual_nearest(a, b)
    m.array("set_a", a)
    m.array("set_b", b)
    m.array("mutual_scores", scores)
    m.array("mutual_pairs", pairs)


def photos() -> np.ndarray:
    """uint8 (3, 64, 64, 3): astronaut, chelsea, coffee (random when scikit-image is absent)."""
    from cleandift_rt.imaging import prepare_image

    try:
        from skimage import data

        sources = [data.astronaut(), data.chelsea(), data.coffee()]
    except ImportError:
        rng = np.random.default_rng(8)
        sources = [rng.integers(0, 256, (80, 90, 3), dtype=np.uint8) for _ in range(3)]
    return np.stack([prepare_image(s, SIZE).array for s in sources])


def stamp() -> str:
    """Identifies an export: torch version and this script's contents."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{torch.__version__}-{digest}"


def export_package(out: Path) -> Path:
    """The tiny AOTInductor package in out/aoti (exported once per stamp)."""
    import torch._inductor.config

    from cleandift_rt.cli.common import export_api

    exporter = export_api()  # the checkout's export/, else the installed cleandift_rt.export
    ExportOptions, export_model = exporter.ExportOptions, exporter.export_model

    aoti_dir = out / "aoti"
    stamp_file = aoti_dir / "stamp.txt"
    if stamp_file.is_file() and stamp_file.read_text().split("\n")[0] == stamp():
        return aoti_dir / stamp_file.read_text().split("\n")[1]
    options = ExportOptions(model="tiny", taps=TAPS, height=SIZE[0], width=SIZE[1], batch=1,
                            max_batch=4, precision="fp32", format="aoti", out=str(aoti_dir),
                            device="cpu", validate=False)  # fmt: skip
    os.environ.setdefault("CLEANDIFT_RT_CACHE", str(out / "cache"))
    with torch._inductor.config.patch(FAST_COMPILE):
        path, _ = export_model(options, log=lambda line: print(line, flush=True))
    stamp_file.write_text(f"{stamp()}\n{path.name}\n")
    return path


def broken_sidecars(package: Path, m: Manifest) -> None:
    """Links to the package with edited sidecars: each must be refused by the C++ Extractor."""
    sidecar = json.loads(Path(f"{package}.json").read_text())
    edits = {
        "mismatch_taps": lambda d: d["taps"][0].update(channels=d["taps"][0]["channels"] + 1),
        "old_torch": lambda d: d["producer"].update(torch="1.0.0"),
        "future_format": lambda d: d.update(format_version=2),
        "wrong_name": lambda d: d.update(artifact="other.pt2"),
    }
    for name, edit in edits.items():
        link = package.parent / f"{name}.pt2"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(package.name)
        data = json.loads(json.dumps(sidecar))
        data["artifact"] = link.name
        edit(data)
        Path(f"{link}.json").write_text(json.dumps(data))
        m.value(f"broken_{name}", str(link))


def aoti_references(out: Path, m: Manifest) -> None:
    from cleandift_rt.models import load_model

    package = export_package(out)
    m.value("package", str(package))
    images = photos()
    m.array("images", images)
    net = load_model("tiny").feature_net(list(TAPS)).eval()
    with torch.inference_mode():
        taps = net(torch.from_numpy(images))
    for name, value in zip(TAPS, taps):
        m.array(f"tap_{name}", value)
    broken_sidecars(package, m)
    for name, photo in (("source", 0), ("target", 1)):  # originals for examples/match_images
        write_ppm(out / f"{name}.ppm", original_photos()[photo])


def original_photos() -> list[np.ndarray]:
    """Full-size astronaut (512x512) and chelsea (300x451), or random images of those sizes."""
    try:
        from skimage import data

        return [data.astronaut(), data.chelsea()]
    except ImportError:
        rng = np.random.default_rng(9)
        return [
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((512, 512), (300, 451))
        ]


def write_ppm(path: Path, rgb: np.ndarray) -> None:
    """Binary PPM (P6) of a uint8 (H, W, 3) image."""
    h, w, _ = rgb.shape
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(rgb).tobytes())


def main() -> None:
    out = Path(sys.argv[1])
    with_aoti = len(sys.argv) > 2 and sys.argv[2] not in ("0", "false", "OFF")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = Manifest(out)
    matcher_references(m)
    if with_aoti:
        aoti_references(out, m)
    m.write()
    print(f"fixtures written to {out}")


if __name__ == "__main__":
    main()
