"""Tests for cleandift_rt.imaging: decoding, validation, resize/pad and coordinate transforms."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from cleandift_rt.errors import CleanDIFTError, ImageError, InputSizeError
from cleandift_rt.imaging import (
    ImageTransform,
    PreparedImage,
    image_name,
    load_image,
    pad_to,
    prepare_image,
)

# ------------------------------------------------------------------------------------------
# helpers / fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skdata.chelsea()  # (300, 451, 3) uint8


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skdata.coffee()  # (400, 600, 3) uint8


def save(img: Image.Image | np.ndarray, path: Path, **kwargs) -> Path:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img.save(path, **kwargs)
    return path


def assert_rgb(out: np.ndarray, shape_hw: tuple[int, int]) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (*shape_hw, 3)
    assert out.flags["C_CONTIGUOUS"]


def assert_user_error(excinfo: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def gaussian_blob(h: int, w: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    """Float (H, W) image in [0, 1] with a Gaussian of peak 1 centred at (cx, cy)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2.0 * sigma**2))


def centroid(channel: np.ndarray) -> np.ndarray:
    """Intensity centroid (x, y) of a 2-D array, pixel centres at integers."""
    wgt = channel.astype(np.float64)
    ys, xs = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
    return np.array([(xs * wgt).sum(), (ys * wgt).sum()]) / wgt.sum()


# ------------------------------------------------------------------------------------------
# load_image: files
# ------------------------------------------------------------------------------------------


def test_rgb_png_path_and_pathlike(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = save(astronaut, tmp_path / "astronaut.png")
    for src in (path, str(path)):
        out = load_image(src)
        assert_rgb(out, (512, 512))
        np.testing.assert_array_equal(out, astronaut)


def test_grayscale_png(tmp_path: Path, coffee: np.ndarray) -> None:
    gray = cv2.cvtColor(coffee, cv2.COLOR_RGB2GRAY)
    out = load_image(save(gray, tmp_path / "gray.png"))
    assert_rgb(out, gray.shape)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_png_drops_alpha(tmp_path: Path, chelsea: np.ndarray) -> None:
    alpha = np.tile(np.linspace(0, 255, chelsea.shape[1]).astype(np.uint8), (chelsea.shape[0], 1))
    rgba = np.dstack([chelsea, alpha])
    out = load_image(save(rgba, tmp_path / "rgba.png"))
    np.testing.assert_array_equal(out, chelsea)  # colour kept as is, even where alpha == 0


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    k = np.arange(256, dtype=np.uint16).reshape(16, 16)
    img16 = k * 257
    img16[0, 0] = 65535
    img16[0, 1] = 65535 - 200  # 65335 / 257 = 254.2 -> 254
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), img16)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit image
    out = load_image(path)
    expected = k.astype(np.uint8)
    expected[0, 0] = 255
    expected[0, 1] = 254
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_16bit_rgb_png(tmp_path: Path, chelsea: np.ndarray) -> None:
    rgb16 = chelsea.astype(np.uint16) * 257
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(load_image(path), chelsea)


def test_palette_png(tmp_path: Path, chelsea: np.ndarray) -> None:
    pal = Image.fromarray(chelsea).quantize(colors=64)
    assert pal.mode == "P"
    out = load_image(save(pal, tmp_path / "pal.png"))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    assert np.abs(out.astype(int) - chelsea).mean() < 10  # still the cat


def test_palette_with_transparency(tmp_path: Path, chelsea: np.ndarray) -> None:
    pal = Image.fromarray(chelsea).quantize(colors=32)
    pal.info["transparency"] = 0
    out = load_image(save(pal, tmp_path / "palt.png", transparency=0))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_cmyk_jpeg(tmp_path: Path, coffee: np.ndarray) -> None:
    cmyk = Image.fromarray(coffee).convert("CMYK")
    path = save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        expected = np.asarray(img.convert("RGB"))
    out = load_image(path)
    np.testing.assert_array_equal(out, expected)
    assert np.abs(out.astype(int) - coffee).mean() < 4


@pytest.mark.parametrize("mode", ["I", "F"])
def test_tiff_int_and_float_modes(tmp_path: Path, mode: str) -> None:
    k = np.arange(64, dtype=np.int64).reshape(8, 8) * 4
    if mode == "I":
        arr = (k * 257).astype(np.int32)  # 16-bit data in an I image
    else:
        arr = (k / 255.0).astype(np.float32)  # F taken as [0, 1]
    img = Image.fromarray(arr, mode=mode) if mode == "F" else Image.fromarray(arr)
    assert img.mode == mode
    out = load_image(save(img, tmp_path / f"img_{mode}.tif"))
    np.testing.assert_array_equal(out[:, :, 1], k.astype(np.uint8))


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1)])
def test_exif_orientation(tmp_path: Path, chelsea: np.ndarray, orientation: int, k: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag
    path = save(chelsea, tmp_path / f"rot{orientation}.jpg", quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.getexif().get(0x0112) == orientation
        assert raw.size == (451, 300)  # stored unrotated
    out = load_image(path)
    assert_rgb(out, (451, 300))
    expected = np.rot90(chelsea, k=k)  # 6: rotate clockwise to display, 8: counter-clockwise
    assert np.abs(out.astype(int) - expected).mean() < 3.0
    # and clearly not the other rotation
    assert np.abs(out.astype(int) - np.rot90(chelsea, k=-k)).mean() > 10.0


# ------------------------------------------------------------------------------------------
# load_image: file errors
# ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_user_error(excinfo, f"cannot read image '{path}'", "no such file")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as excinfo:
        load_image(tmp_path)
    assert_user_error(excinfo, str(tmp_path), "directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_user_error(excinfo, str(path), "not a regular file")


def test_random_bytes_png(tmp_path: Path) -> None:
    path = tmp_path / "random.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_user_error(excinfo, f"cannot decode image '{path}'")


def test_png_signature_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_user_error(excinfo, f"cannot decode image '{path}'")


def test_truncated_jpeg(tmp_path: Path, astronaut: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert_user_error(excinfo, f"cannot decode image '{path}'")


# ------------------------------------------------------------------------------------------
# load_image: arrays, tensors, PIL objects
# ------------------------------------------------------------------------------------------


def test_numpy_uint8_layouts(chelsea: np.ndarray) -> None:
    gray = chelsea[:, :, 1]
    np.testing.assert_array_equal(load_image(chelsea), chelsea)
    for src in (gray, gray[:, :, None]):
        out = load_image(src)
        assert_rgb(out, gray.shape)
        np.testing.assert_array_equal(out, np.dstack([gray] * 3))
    rgba = np.dstack([chelsea, np.zeros_like(gray)])
    np.testing.assert_array_equal(load_image(rgba), chelsea)


def test_numpy_result_is_contiguous_copy(chelsea: np.ndarray) -> None:
    view = chelsea[::-1, ::2]
    out = load_image(view)
    assert_rgb(out, view.shape[:2])
    np.testing.assert_array_equal(out, view)
    out2 = load_image(chelsea)
    assert not np.shares_memory(out2, chelsea)


def test_numpy_uint16_and_bool() -> None:
    k = np.arange(256, dtype=np.uint16).reshape(16, 16)
    out = load_image(k * 257)
    np.testing.assert_array_equal(out[:, :, 0], k)
    assert load_image(np.full((2, 2), 65535, np.uint16)).min() == 255
    assert load_image(np.full((2, 2), 128, np.uint16)).max() == 0  # 128 / 257 rounds to 0
    assert load_image(np.full((2, 2), 129, np.uint16)).min() == 1
    big_endian = (k * 257).astype(">u2")
    np.testing.assert_array_equal(load_image(big_endian)[:, :, 2], k)
    mask = np.eye(4, dtype=bool)
    np.testing.assert_array_equal(load_image(mask)[:, :, 0], mask * 255)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_float(dtype: type, coffee: np.ndarray) -> None:
    f = (coffee / 255.0).astype(dtype)
    out = load_image(f)
    assert_rgb(out, coffee.shape[:2])
    np.testing.assert_array_equal(out, coffee)
    edge = load_image(np.array([[-0.001, 0.0, 0.5, 1.0, 1.001]], dtype=dtype))  # half a level
    np.testing.assert_array_equal(edge[0, :, 0], [0, 0, 128, 255, 255])
    for bad, hint in (([[-0.5, 0.5]], "rescale"), ([[0.5, 7.0]], "divide by 255")):
        with pytest.raises(ImageError, match=rf"outside|found .*{hint}"):
            load_image(np.array(bad, dtype=dtype))


def test_tensors_chw(chelsea: np.ndarray) -> None:
    chw = torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()
    np.testing.assert_array_equal(load_image(chw), chelsea)
    np.testing.assert_array_equal(load_image(chw.float() / 255), chelsea)
    np.testing.assert_array_equal(load_image((chw.double() / 255).requires_grad_()), chelsea)
    gray = chw[1]
    expected_gray = np.dstack([chelsea[:, :, 1]] * 3)
    np.testing.assert_array_equal(load_image(gray), expected_gray)
    np.testing.assert_array_equal(load_image(gray[None]), expected_gray)
    rgba = torch.cat([chw, torch.zeros_like(chw[:1])])
    np.testing.assert_array_equal(load_image(rgba), chelsea)
    # bfloat16 has ~3 significant digits: allow off-by-one rounding
    bf = load_image(chw.to(torch.bfloat16) / 255)
    assert np.abs(bf.astype(int) - chelsea).max() <= 1


def test_pil_objects(coffee: np.ndarray) -> None:
    img = Image.fromarray(coffee)
    np.testing.assert_array_equal(load_image(img), coffee)
    gray = img.convert("L")
    np.testing.assert_array_equal(load_image(gray)[:, :, 2], np.asarray(gray))
    bilevel = img.convert("1")
    np.testing.assert_array_equal(load_image(bilevel)[:, :, 0], np.asarray(bilevel) * 255)
    la = img.convert("LA")
    np.testing.assert_array_equal(load_image(la)[:, :, 0], np.asarray(gray))
    pa = img.quantize(colors=16).convert("PA")
    np.testing.assert_array_equal(load_image(pa), np.asarray(pa.convert("RGB")))


@pytest.mark.parametrize(
    "bad, needle",
    [
        (np.zeros((4, 5, 2), np.uint8), "shape"),
        (np.zeros((4, 5, 3, 1), np.uint8), "shape"),
        (np.zeros((7,), np.uint8), "shape"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 0), np.uint8), "empty"),
        (np.zeros((4, 5, 3), np.int64), "dtype"),
        (np.array([[0.5, np.nan]], np.float32), "NaN"),
        (torch.zeros(10, 12, 3, dtype=torch.uint8), "CHW"),
        (torch.zeros(3, 0, 4), "empty"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), "dtype"),
        (torch.tensor([[[float("nan")]]]), "NaN"),
        ([[0, 1], [2, 3]], "list"),
        (b"\x89PNG", "bytes"),
        (None, "NoneType"),
    ],
)
def test_bad_inputs(bad: object, needle: str) -> None:
    with pytest.raises(ImageError) as excinfo:
        load_image(bad)
    assert_user_error(excinfo, needle)


def test_image_name(tmp_path: Path, chelsea: np.ndarray) -> None:
    assert image_name(tmp_path / "a" / "cat.jpg") == "cat.jpg"
    assert image_name("dir/dog.png") == "dog.png"
    assert image_name(chelsea) == "array[300x451]"
    assert image_name(chelsea[:, :, 0]) == "array[300x451]"
    assert image_name(torch.zeros(3, 20, 30)) == "array[20x30]"
    assert image_name(torch.zeros(20, 30)) == "array[20x30]"
    assert image_name(Image.new("RGB", (30, 20))) == "image[20x30]"
    path = save(chelsea, tmp_path / "kitty.png")
    with Image.open(path) as img:
        assert image_name(img) == "kitty.png"


# ------------------------------------------------------------------------------------------
# ImageTransform
# ------------------------------------------------------------------------------------------


def test_transform_formula_and_inverse() -> None:
    t = ImageTransform(original_size=(100, 200), input_size=(128, 256), scale=(1.25, 1.5))
    pts = np.array([[-0.5, -0.5], [0.0, 0.0], [199.5, 99.5], [10.25, 3.75]])
    expected = np.stack([(pts[:, 0] + 0.5) * 1.25 - 0.5, (pts[:, 1] + 0.5) * 1.5 - 0.5], axis=1)
    np.testing.assert_allclose(t.to_input(pts), expected)
    # the image border maps to the border of the valid region
    np.testing.assert_allclose(
        t.to_input([[-0.5, -0.5], [199.5, 99.5]]), [[-0.5, -0.5], [249.5, 149.5]]
    )
    assert t.valid_size == (150, 250)
    shifted = ImageTransform((100, 200), (128, 256), (1.25, 1.5), offset=(3.0, 4.0))
    np.testing.assert_allclose(shifted.to_input(pts), expected + [3.0, 4.0])
    np.testing.assert_allclose(shifted.to_original(shifted.to_input(pts)), pts, atol=1e-12)
    assert t.to_input(np.zeros((0, 2))).shape == (0, 2)
    with pytest.raises(CleanDIFTError):
        t.to_input(np.zeros((4, 3)))


def test_transform_dict_json_round_trip() -> None:
    t = ImageTransform((300, 451), (384, 512), (512 / 451, 341 / 300), (0.0, 0.0))
    d = json.loads(json.dumps(t.to_dict()))
    assert ImageTransform.from_dict(d) == t
    assert d["scale_yx"] == [341 / 300, 512 / 451]  # row-first like the sizes beside it
    legacy = {"original_size": [300, 451], "input_size": [384, 512], "scale": list(t.scale)}
    assert ImageTransform.from_dict(legacy) == t  # the older x-first keys still read
    assert isinstance(ImageTransform.from_dict(d).original_size, tuple)
    with pytest.raises(CleanDIFTError):
        ImageTransform.from_dict({"original_size": [3, 4]})
    with pytest.raises(CleanDIFTError):
        ImageTransform.from_dict({**d, "scale_yx": [0.0, 1.0]})


@pytest.mark.parametrize(
    "policy, size", [("square", 512), ("square", (256, 384)), ("fit", 512), ("fit", (256, 256))]
)
def test_round_trip_both_policies(chelsea: np.ndarray, policy: str, size) -> None:
    t = prepare_image(chelsea, size, policy=policy).transform
    rng = np.random.default_rng(1)
    pts = rng.uniform([-0.5, -0.5], [450.5, 299.5], size=(100, 2))
    np.testing.assert_allclose(t.to_original(t.to_input(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.to_input(t.to_original(pts)), pts, atol=1e-9)


# ------------------------------------------------------------------------------------------
# prepare_image: coordinates match where cv2.resize puts the content
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, size, policy",
    [
        ((300, 451), 256, "square"),  # anisotropic shrink (area)
        ((300, 451), 512, "square"),  # anisotropic enlarge (cubic)
        ((90, 120), (256, 192), "square"),  # strong enlarge
        ((300, 451), 512, "fit"),  # enlarge + pad
        ((451, 300), 128, "fit"),  # shrink, tall image
        ((400, 600), (256, 256), "fit"),  # fixed size, width-limited
        ((600, 400), (256, 384), "fit"),  # fixed size, height-limited
    ],
)
def test_blob_lands_where_transform_says(hw, size, policy: str) -> None:
    h, w = hw
    # blob away from the borders, at a sub-pixel location
    cx, cy = 0.37 * w + 0.31, 0.58 * h + 0.77
    sigma = 0.04 * min(h, w) + 3.0
    prepared = prepare_image(gaussian_blob(h, w, cx, cy, sigma), size, policy=policy)
    t = prepared.transform
    found = centroid(prepared.array[:, :, 0])
    predicted = t.to_input(np.array([[cx, cy]]))[0]
    sx, sy = t.scale
    assert abs(found[0] - predicted[0]) < 0.05 * sx, (found, predicted)
    assert abs(found[1] - predicted[1]) < 0.05 * sy, (found, predicted)
    # and back to the original pixel coordinates
    back = t.to_original(found[None])[0]
    np.testing.assert_allclose(back, [cx, cy], atol=0.05)


# ------------------------------------------------------------------------------------------
# prepare_image: sizes, padding, resampling
# ------------------------------------------------------------------------------------------


def test_fit_chelsea_512(chelsea: np.ndarray) -> None:
    p = prepare_image(chelsea, 512, policy="fit")
    assert isinstance(p, PreparedImage)
    assert_rgb(p.array, (384, 512))
    t = p.transform
    assert t.original_size == (300, 451)
    assert t.input_size == (384, 512)
    assert t.valid_size == (341, 512)  # round(300 * 512 / 451) = 341
    assert t.scale == (512 / 451, 341 / 300)
    assert t.offset == (0.0, 0.0)
    assert not p.array[341:].any()  # black padding
    assert p.array[:341].mean() > 50
    expected = cv2.resize(chelsea, (512, 341), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(p.array[:341], expected)


def test_fit_tall_and_multiple(coffee: np.ndarray) -> None:
    tall = np.ascontiguousarray(np.rot90(coffee))  # (600, 400)
    p = prepare_image(tall, 300, policy="fit", multiple=8)
    assert p.transform.valid_size == (300, 200)
    assert p.transform.input_size == (304, 200)
    expected = cv2.resize(tall, (200, 300), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(p.array[:300], expected)
    assert not p.array[300:].any()


def test_fit_fixed_size(coffee: np.ndarray) -> None:
    p = prepare_image(coffee, (512, 512), policy="fit")
    assert p.transform.input_size == (512, 512)
    assert p.transform.valid_size == (341, 512)  # 400 * 512 / 600 = 341.33
    assert not p.array[341:].any()
    tall = np.ascontiguousarray(np.rot90(coffee))  # (600, 400) into (256, 384): height-limited
    q = prepare_image(tall, (256, 384), policy="fit")
    assert q.transform.valid_size == (256, 171)  # 400 * 256 / 600 = 170.67
    assert not q.array[:, 171:].any()


def test_square(chelsea: np.ndarray, astronaut: np.ndarray) -> None:
    p = prepare_image(chelsea, 256)
    assert_rgb(p.array, (256, 256))
    assert p.transform.scale == (256 / 451, 256 / 300)
    assert p.transform.valid_size == (256, 256)
    np.testing.assert_array_equal(
        p.array, cv2.resize(chelsea, (256, 256), interpolation=cv2.INTER_AREA)
    )
    q = prepare_image(chelsea, (384, 512))  # (H, W)
    assert q.transform.input_size == (384, 512)
    np.testing.assert_array_equal(
        q.array, cv2.resize(chelsea, (512, 384), interpolation=cv2.INTER_CUBIC)
    )
    same = prepare_image(astronaut, 512)  # no resize: copied as is
    np.testing.assert_array_equal(same.array, astronaut)
    assert not np.shares_memory(same.array, astronaut)
    assert same.transform.scale == (1.0, 1.0)


def test_prepare_from_path(tmp_path: Path, chelsea: np.ndarray) -> None:
    path = save(chelsea, tmp_path / "cat.png")
    p = prepare_image(path, 512, policy="fit")
    np.testing.assert_array_equal(p.array, prepare_image(chelsea, 512, policy="fit").array)
    with pytest.raises(ImageError):
        prepare_image(tmp_path / "missing.png", 512)


def test_pad_to(chelsea: np.ndarray) -> None:
    p = prepare_image(chelsea, 512, policy="fit")
    q = pad_to(p, (512, 640))
    assert_rgb(q.array, (512, 640))
    np.testing.assert_array_equal(q.array[:384, :512], p.array)
    assert not q.array[384:].any() and not q.array[:, 512:].any()
    assert q.transform.input_size == (512, 640)
    assert q.transform.scale == p.transform.scale
    assert q.transform.offset == p.transform.offset
    assert q.transform.valid_size == p.transform.valid_size
    pts = np.array([[10.0, 20.0], [400.0, 250.0]])
    np.testing.assert_array_equal(q.transform.to_input(pts), p.transform.to_input(pts))
    assert pad_to(p, (384, 512)) is p
    with pytest.raises(InputSizeError) as excinfo:
        pad_to(p, (320, 640))
    assert_user_error(excinfo, "384x512", "320x640")


@pytest.mark.parametrize(
    "size, policy",
    [
        (500, "square"),
        ((512, 500), "square"),
        ((500, 512), "fit"),
        (0, "square"),
        (-64, "fit"),
        (0, "fit"),
        (512.0, "square"),
        ("512", "fit"),
        ((512,), "square"),
        ((512, 512, 3), "fit"),
        (True, "square"),
    ],
)
def test_bad_sizes(chelsea: np.ndarray, size, policy: str) -> None:
    with pytest.raises(InputSizeError) as excinfo:
        prepare_image(chelsea, size, policy=policy)
    assert_user_error(excinfo)


def test_bad_multiple_and_policy(chelsea: np.ndarray) -> None:
    with pytest.raises(InputSizeError):
        prepare_image(chelsea, 512, multiple=0)
    with pytest.raises(CleanDIFTError) as excinfo:
        prepare_image(chelsea, 512, policy="letterbox")
    assert not isinstance(excinfo.value, (InputSizeError, ImageError))
    assert_user_error(excinfo, "letterbox", "square", "fit")
