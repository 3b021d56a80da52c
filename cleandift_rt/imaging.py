"""Image decoding, validation, resize/pad to the network input, and the coordinate transforms.

Conventions used throughout cleandift-rt:

* Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order, C-contiguous.
* Sizes are always ``(H, W)`` (rows, columns).
* Points are ``(x, y)`` float pixel coordinates with pixel *centres* at integers: pixel
  ``(col, row)`` covers ``[col - 0.5, col + 0.5) x [row - 0.5, row + 0.5)``. Point sets are
  ``(N, 2)`` float64 arrays. This is the convention ``cv2.resize`` samples with, so a resize by
  ``(sx, sy)`` maps ``x -> (x + 0.5) * sx - 0.5``.
* Serialised transforms (``ImageTransform.to_dict``, the ``extract`` header) are row-first
  throughout, like the tensor shapes beside them: sizes ``[H, W]``, ``scale_yx``, ``offset_yx``.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cleandift_rt.errors import (
    CleanDIFTError,
    CleanDIFTWarning,
    ImageError,
    InputSizeError,
    one_line,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "MIN_IMAGE_SIDE",
    "POLICIES",
    "RESIZE_FILTERS",
    "check_image_file",
    "ImageSource",
    "ImageTransform",
    "PreparedImage",
    "image_name",
    "load_image",
    "pad_to",
    "prepare_image",
]

#: Anything :func:`load_image` accepts.
ImageSource = Union[str, "os.PathLike[str]", np.ndarray, "torch.Tensor", Image.Image]

#: Resize policies understood by :func:`prepare_image`.
POLICIES: tuple[str, ...] = ("square", "fit")

#: Resampling filters understood by :func:`prepare_image`: "area" (OpenCV ``INTER_AREA`` when
#: the area shrinks, ``INTER_CUBIC`` when it grows) and "bicubic-pil" (PIL's antialiased
#: bicubic ``Image.resize``, what DIFT's SPair evaluation uses).
RESIZE_FILTERS: tuple[str, ...] = ("area", "bicubic-pil")
#: Images smaller than this (px, either side) are refused: less than one 8 px VAE latent cell.
MIN_IMAGE_SIDE = 8
#: A resize stretching one axis more than this many times the other is reported (a warning).
MAX_STRETCH = 4.0
#: Float images may overshoot [0, 1] by this much (half a uint8 level) and still be accepted.
FLOAT_SLACK = 0.5 / 255

_SHAPES_HWC = "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
_SHAPES_CHW = "(H, W), (1, H, W), (3, H, W) or (4, H, W)"


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def image_name(source: Any) -> str:
    """Return a short display name for an image source (never raises).

    Paths give their file name, numpy arrays and torch tensors ``"array[HxW]"`` (tensors read
    as CHW), PIL images their file name if they have one, else ``"image[HxW]"``.
    """
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return Path(text).name or str(text)
    if isinstance(source, np.ndarray):
        shape = source.shape
        return _shape_name("array", shape[:2] if source.ndim in (2, 3) else shape)
    if _is_tensor(source):
        shape = tuple(source.shape)
        if len(shape) == 3:
            shape = shape[1:]
        return _shape_name("array", shape)
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "") or ""
        if filename:
            return Path(os.fspath(filename)).name
        return _shape_name("image", (source.height, source.width))
    return type(source).__name__


def load_image(source: ImageSource) -> np.ndarray:
    """Decode ``source`` into a ``uint8`` RGB array of shape ``(H, W, 3)`` (C-contiguous, a copy).

    Accepted sources:

    * ``str`` / ``os.PathLike``: any file Pillow can read. The EXIF orientation is applied, so
      the result is the image as a viewer shows it. Modes ``1, L, LA, P, PA, RGB, RGBA, CMYK``
      (and other Pillow colour modes) convert as Pillow does; 16-bit modes (``I;16*``, and
      ``I``, taken as 16-bit data clipped to [0, 65535]) are scaled to 8 bit by ``/257``;
      ``F`` is taken as float in [0, 1]. Multi-frame files give their first frame.
    * numpy arrays in HWC layout: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``
      of dtype ``uint8``; ``uint16`` (``/257``, rounded); ``bool`` (0/255); or float16/32/64
      in [0, 1] (``x255``, rounded; NaN or values outside [0, 1] are an error: 0..255 floats
      would otherwise give silently wrong features).
    * torch tensors in CHW layout (torchvision convention): ``(H, W)``, ``(1, H, W)``,
      ``(3, H, W)`` or ``(4, H, W)``, ``uint8``, ``bool`` or float in [0, 1], on any device.
    * ``PIL.Image.Image`` objects, converted like files but taken as they are (no EXIF
      orientation is applied to in-memory images).

    An alpha channel is dropped (colour values are kept, not composited onto a background);
    grayscale is replicated to 3 channels.

    Raises:
        ImageError: missing/unreadable/corrupt file, unsupported type, mode, dtype or shape,
            an empty image, or NaN values. The message is one line naming the input.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, "array")
    if _is_tensor(source):
        return _from_tensor(source)
    if isinstance(source, Image.Image):
        name = image_name(source)
        try:
            source.load()
            return _from_pil(source, name)
        except ImageError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # Pillow raises many types on bad data
            raise ImageError(f"cannot decode image '{name}': {one_line(exc)}") from exc
    raise ImageError(
        f"unsupported image input of type {type(source).__name__}: "
        "expected a path, a numpy array, a torch tensor or a PIL image"
    )


def _load_path(source: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode one image file (see :func:`load_image`)."""
    shown = os.fspath(source)
    path = Path(shown)
    if not path.exists():
        raise ImageError(f"cannot read image '{shown}': no such file")
    if path.is_dir():
        raise ImageError(f"cannot read image '{shown}': is a directory")
    if not path.is_file():  # FIFOs, devices: opening them could block
        raise ImageError(f"cannot read image '{shown}': not a regular file")
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode so truncated data fails here
            return _from_pil(_exif_transpose(img), shown)
    except ImageError:
        raise
    except MemoryError:
        raise
    except PermissionError as exc:
        raise ImageError(f"cannot read image '{shown}': permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"cannot decode image '{shown}': unrecognised format or corrupt data"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ... on bad data
        raise ImageError(f"cannot decode image '{shown}': {one_line(exc)}") from exc


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a decodable image unreadable
        return img


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    """Convert a loaded PIL image of any mode to ``uint8`` RGB ``(H, W, 3)``."""
    mode = img.mode
    label = f"'{name}'"
    if mode.startswith("I;16") or mode == "I":
        # 16-bit data (I;16 PNGs; older Pillow versions open those as I)
        arr = np.asarray(img)
        if mode == "I":
            arr = np.clip(arr, 0, 65535)
        return _from_array(arr.astype(np.uint16), label)
    if mode == "F":
        return _from_array(np.asarray(img, dtype=np.float32), label)
    if mode == "RGB":
        return _from_array(np.asarray(img), label)
    if mode in ("P", "PA") or "transparency" in img.info:
        # palette transparency is only resolved by an RGBA conversion
        return _from_array(np.asarray(img.convert("RGBA")), label)
    try:
        rgb = img.convert("RGB")
    except ValueError:
        try:
            rgb = img.convert("RGBA")
        except ValueError as exc:
            raise ImageError(f"cannot decode image '{name}': unsupported mode {mode}") from exc
    return _from_array(np.asarray(rgb), label)


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate and convert an HWC numpy array to a fresh ``uint8`` RGB ``(H, W, 3)`` array."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(
            f"bad image {name} of shape {tuple(arr.shape)}: expected HWC {_SHAPES_HWC}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"bad image {name} of shape {tuple(arr.shape)}: the image is empty")

    dt = arr.dtype
    if dt.kind == "u" and dt.itemsize == 1:
        out = arr
    elif dt.kind == "u" and dt.itemsize == 2:
        # round(v / 257) in exact integer arithmetic; 257 * k -> k, 65535 -> 255
        out = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif dt.kind == "b":
        out = arr.astype(np.uint8) * np.uint8(255)
    elif dt.kind == "f":
        work = arr.astype(np.promote_types(dt, np.float32), copy=False)
        if np.isnan(work).any():
            raise ImageError(f"bad image {name}: float data contains NaN")
        lo, hi = (float(work.min()), float(work.max())) if work.size else (0.0, 0.0)
        if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            hint = "divide by 255" if hi <= 255 + FLOAT_SLACK and lo >= -FLOAT_SLACK else "rescale"
            raise ImageError(
                f"bad image {name}: float values must be in [0, 1], found {lo:g}..{hi:g} "
                f"({hint}, or pass uint8)"
            )
        out = np.rint(np.clip(work, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"bad image {name}: unsupported dtype {dt} "
            "(expected uint8, uint16, bool, or float in [0, 1])"
        )

    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    else:
        out = out[:, :, :3]  # drop alpha
    return np.array(out, dtype=np.uint8, order="C", copy=True)


def _is_tensor(obj: Any) -> bool:
    """True for a torch tensor, without importing torch if the caller never did."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(obj, torch_mod.Tensor)


def _from_tensor(t: torch.Tensor) -> np.ndarray:
    """Convert a CHW (or HW) torch tensor on any device to ``uint8`` RGB ``(H, W, 3)``."""
    import torch

    t = t.detach()
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ImageError(f"bad image tensor of shape {tuple(t.shape)}: expected CHW {_SHAPES_CHW}")
    if t.is_floating_point():
        if t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()  # bfloat16 and friends have no numpy equivalent
    elif t.dtype not in (torch.uint8, torch.bool):
        raise ImageError(
            f"bad image tensor: unsupported dtype {t.dtype} (expected uint8 or float in [0, 1])"
        )
    arr = t.cpu().permute(1, 2, 0).numpy()
    return _from_array(arr, "tensor")


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _as_points(points: Any) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        raise CleanDIFTError(f"points must have shape (N, 2) as (x, y), got {arr.shape}")
    return arr


@dataclass(frozen=True)
class ImageTransform:
    """Maps points between the original image and the network input.

    Attributes:
        original_size: ``(H, W)`` of the decoded image.
        input_size: ``(H, W)`` of the network input after resize and pad.
        scale: ``(sx, sy)``, input pixels per original pixel along x and y.
        offset: ``(ox, oy)``, where the resized image starts in the input, in input pixels
            (``(0, 0)`` for top-left placement).

    With pixel centres at integers, ``x_in = (x + 0.5) * sx - 0.5 + ox`` and likewise for y.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        # normalise to plain tuples of int / float (e.g. from JSON lists or numpy scalars)
        for name in ("original_size", "input_size"):
            h, w = getattr(self, name)
            if int(h) != h or int(w) != w or h <= 0 or w <= 0:
                raise ValueError(f"{name} must be two positive integers, got {(h, w)}")
            object.__setattr__(self, name, (int(h), int(w)))
        sx, sy = (float(v) for v in self.scale)
        if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
            raise ValueError(f"scale must be two positive finite numbers, got {(sx, sy)}")
        ox, oy = (float(v) for v in self.offset)
        if not (math.isfinite(ox) and math.isfinite(oy)):
            raise ValueError(f"offset must be two finite numbers, got {(ox, oy)}")
        object.__setattr__(self, "scale", (sx, sy))
        object.__setattr__(self, "offset", (ox, oy))

    def to_input(self, points: Any) -> np.ndarray:
        """Map ``(N, 2)`` ``(x, y)`` original-image points to input coordinates.

        Any ``(..., 2)`` shape is accepted and kept; the result is float64.
        """
        p = _as_points(points)
        return (p + 0.5) * np.array(self.scale) - 0.5 + np.array(self.offset)

    def to_original(self, points: Any) -> np.ndarray:
        """Map ``(N, 2)`` ``(x, y)`` input points back to original-image coordinates.

        The exact inverse of :meth:`to_input`; any ``(..., 2)`` shape is accepted and kept.
        """
        p = _as_points(points)
        return (p - np.array(self.offset) + 0.5) / np.array(self.scale) - 0.5

    @property
    def valid_size(self) -> tuple[int, int]:
        """``(H, W)`` of the input region covered by the image: ``round(H*sy), round(W*sx)``."""
        h, w = self.original_size
        sx, sy = self.scale
        return (_round_half_up(h * sy), _round_half_up(w * sx))

    def to_dict(self) -> dict[str, list[int] | list[float]]:
        """A JSON-serialisable dict (lists of plain ints / floats), every pair row-first like the
        tensor shapes beside it: ``original_size`` and ``input_size`` ``[H, W]``, ``scale_yx``
        ``[sy, sx]`` and ``offset_yx`` ``[oy, ox]`` (the attributes ``scale`` / ``offset`` are
        ``(x, y)``, like points). The key names carry the order, so a reader cannot mix them up."""
        return {
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
            "scale_yx": [self.scale[1], self.scale[0]],
            "offset_yx": [self.offset[1], self.offset[0]],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageTransform:
        """Rebuild from :meth:`to_dict` output (``offset_yx`` defaults to ``(0, 0)``); the older
        x-first keys ``scale`` / ``offset`` are read too.

        Raises:
            CleanDIFTError: missing keys or invalid values.
        """
        try:
            if "scale_yx" in data:
                sy, sx = data["scale_yx"]
                oy, ox = data.get("offset_yx", (0.0, 0.0))
            else:
                sx, sy = data["scale"]
                ox, oy = data.get("offset", (0.0, 0.0))
            return cls(
                original_size=tuple(data["original_size"]),
                input_size=tuple(data["input_size"]),
                scale=(sx, sy),
                offset=(ox, oy),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CleanDIFTError(f"bad image transform {dict(data)!r}: {one_line(exc)}") from exc


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """A network-ready image and the transform from original to input coordinates.

    Attributes:
        array: ``uint8`` ``(H_in, W_in, 3)`` RGB, with ``(H_in, W_in) == transform.input_size``;
            padding is black.
        transform: the :class:`ImageTransform` of this image.
    """

    array: np.ndarray
    transform: ImageTransform

    def __post_init__(self) -> None:
        a = self.array
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError("PreparedImage.array must be a uint8 (H, W, 3) array")
        if a.shape[:2] != self.transform.input_size:
            raise ValueError(
                f"array size {a.shape[:2]} != transform input_size {self.transform.input_size}"
            )


# --------------------------------------------------------------------------------------------
# Resize / pad
# --------------------------------------------------------------------------------------------


def _parse_size(size: Any, what: str = "input size") -> int | tuple[int, int]:
    """``int`` or ``(H, W)`` of positive ints, else InputSizeError."""

    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(size):
        if size <= 0:
            raise InputSizeError(f"bad {what} {size}: must be positive")
        return int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(is_int(v) for v in size):
        h, w = int(size[0]), int(size[1])
        if h <= 0 or w <= 0:
            raise InputSizeError(f"bad {what} {h}x{w}: must be positive")
        return (h, w)
    raise InputSizeError(f"bad {what} {size!r}: expected an int or (H, W) ints")


def _check_multiple(h: int, w: int, multiple: int, policy: str) -> None:
    if h % multiple or w % multiple:
        raise InputSizeError(
            f"input size {h}x{w} is not a multiple of {multiple} (policy '{policy}')"
        )


def check_resize_filter(name: str) -> str:
    """``name`` when it is one of RESIZE_FILTERS, else CleanDIFTError (one line)."""
    if name not in RESIZE_FILTERS:
        valid = ", ".join(RESIZE_FILTERS)
        raise CleanDIFTError(f"unknown resize filter {name!r}: expected one of {valid}")
    return name


def _resize(rgb: np.ndarray, h: int, w: int, resize_filter: str = "area") -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 to ``(h, w, 3)`` with ``resize_filter`` (RESIZE_FILTERS)."""
    h0, w0 = rgb.shape[:2]
    if (h, w) == (h0, w0):
        return rgb
    if resize_filter == "bicubic-pil":
        resized = Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC)
        return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8))
    interp = cv2.INTER_AREA if h * w < h0 * w0 else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, (w, h), interpolation=interp))


def prepare_image(
    image: ImageSource,
    size: int | tuple[int, int],
    policy: str = "square",
    multiple: int = 64,
    *,
    resize_filter: str = "area",
) -> PreparedImage:
    """Decode ``image`` (anything :func:`load_image` takes) and resize/pad it for the network.

    Policies:

    * ``"square"`` (DIFT's): resize to exactly ``size`` ignoring aspect; ``size`` is ``s``
      (meaning ``(s, s)``) or ``(H, W)``, both positive multiples of ``multiple``.
    * ``"fit"`` (keeps aspect): with ``size = L`` the longer side becomes ``L`` (the other
      ``round(.)``, at least 1) and the result is padded bottom/right with black up to the next
      multiple of ``multiple`` in each dimension. With ``size = (H, W)`` (a fixed-size model,
      multiples of ``multiple``) the image is scaled to fit inside ``H x W`` and padded
      bottom/right to exactly ``(H, W)``.

    The transform's scale is the per-axis ratio actually used (``resized_w / W``,
    ``resized_h / H``), its offset ``(0, 0)``. Resampling (``resize_filter``): "area" is
    ``cv2.INTER_AREA`` when the area shrinks, ``cv2.INTER_CUBIC`` when it grows; "bicubic-pil"
    is PIL's ``Image.resize(..., BICUBIC)`` (DIFT's); none when the size already matches.

    Returns:
        A :class:`PreparedImage` with a ``uint8`` ``(H_in, W_in, 3)`` array.

    Raises:
        CleanDIFTError: unknown ``policy``.
        InputSizeError: bad ``size`` or ``multiple``.
        ImageError: ``image`` cannot be loaded (see :func:`load_image`).
    """
    if policy not in POLICIES:
        valid = ", ".join(f"'{p}'" for p in POLICIES)
        raise CleanDIFTError(f"unknown resize policy {policy!r}: expected one of {valid}")
    check_resize_filter(resize_filter)
    mult = _parse_size(multiple, "size multiple")
    if not isinstance(mult, int):
        raise InputSizeError(f"bad size multiple {multiple!r}: expected a positive int")
    target = _parse_size(size)
    # a fixed (H, W) input: always for "square", for "fit" when given as (H, W)
    fixed: tuple[int, int] | None = None
    if isinstance(target, tuple):
        fixed = target
    elif policy == "square":
        fixed = (target, target)
    if fixed is not None:
        _check_multiple(*fixed, mult, policy)

    rgb = load_image(image)
    h0, w0 = rgb.shape[:2]
    check_image_size((h0, w0), image_name(image))

    if isinstance(target, int) and fixed is None:
        # "fit" to length L: longer side -> L, the other rounded half up in exact integers
        length = target
        if h0 >= w0:
            rh, rw = length, max(1, (2 * w0 * length + h0) // (2 * h0))
        else:
            rh, rw = max(1, (2 * h0 * length + w0) // (2 * w0)), length
        input_size = (-(-rh // mult) * mult, -(-rw // mult) * mult)
    elif policy == "square" and fixed is not None:
        rh, rw = input_size = fixed
    elif fixed is not None:
        # "fit" into a fixed (H, W): scale by the limiting axis, round the other half up
        th, tw = fixed
        if w0 * th >= h0 * tw:  # tw / w0 <= th / h0: width is the limit
            rh, rw = min(th, max(1, (2 * h0 * tw + w0) // (2 * w0))), tw
        else:
            rh, rw = th, min(tw, max(1, (2 * w0 * th + h0) // (2 * h0)))
        input_size = (th, tw)

    _check_resize(image, (h0, w0), (rh, rw))
    resized = _resize(rgb, rh, rw, resize_filter)
    if (rh, rw) == input_size:
        array = resized
    else:
        array = np.zeros((*input_size, 3), dtype=np.uint8)
        array[:rh, :rw] = resized
    transform = ImageTransform(
        original_size=(h0, w0), input_size=input_size, scale=(rw / w0, rh / h0)
    )
    return PreparedImage(array=array, transform=transform)


def check_image_size(size: tuple[int, int], name: str) -> None:
    """ImageError for an ``(H, W)`` image below :data:`MIN_IMAGE_SIDE` px on either side."""
    h, w = size
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageError(
            f"image '{name}' is {w}x{h} px (W x H): too small for features "
            f"(at least {MIN_IMAGE_SIDE} px per side, one latent cell)"
        )


def _check_resize(image: Any, original: tuple[int, int], resized: tuple[int, int]) -> None:
    """Refuse a resize that leaves less than a latent cell of content; warn (one line, a
    CleanDIFTWarning) when one axis is stretched over MAX_STRETCH times the other."""
    (h0, w0), (rh, rw) = original, resized
    name = image_name(image)
    if min(rh, rw) < MIN_IMAGE_SIDE:
        raise InputSizeError(
            f"image '{name}' ({w0}x{h0} px, W x H) would be {rw}x{rh} px after resizing: "
            f"less than one {MIN_IMAGE_SIDE} px latent cell; crop it or use the square policy"
        )
    sx, sy = rw / w0, rh / h0
    if max(sx, sy) > MAX_STRETCH * min(sx, sy):
        warnings.warn(
            f"image '{name}' ({w0}x{h0} px, W x H) resized to {rw}x{rh}: x{sx:.3g} horizontally, "
            f"x{sy:.3g} vertically; features of a stretched image are unreliable (crop it, or "
            "use the fit policy)",
            CleanDIFTWarning,
            stacklevel=3,
        )


def check_image_file(path: str | os.PathLike[str]) -> None:
    """Fast checks of an image file before any model loads: it exists, is a regular file,
    Pillow recognises its header, and it is at least MIN_IMAGE_SIDE px per side (the pixel
    data is decoded later; a truncated file fails then)."""
    shown = os.fspath(path)
    p = Path(shown)
    if not p.exists():
        raise ImageError(f"cannot read image '{shown}': no such file")
    if p.is_dir():
        raise ImageError(f"cannot read image '{shown}': is a directory")
    if not p.is_file():
        raise ImageError(f"cannot read image '{shown}': not a regular file")
    try:
        with Image.open(p) as img:
            w, h = img.size
    except PermissionError:
        raise ImageError(f"cannot read image '{shown}': permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"cannot decode image '{shown}': unrecognised format or corrupt data"
        ) from None
    except Exception as exc:  # Pillow raises many types on bad headers
        raise ImageError(f"cannot decode image '{shown}': {one_line(exc)}") from None
    check_image_size((h, w), shown)


def pad_to(prepared: PreparedImage, size: int | tuple[int, int]) -> PreparedImage:
    """Pad ``prepared`` bottom/right with black to ``size`` (``(H, W)`` or ``s`` for ``(s, s)``).

    Used to batch "fit"-policy images of different sizes. Only ``transform.input_size``
    changes; scale and offset stay. Returns ``prepared`` itself when the size already matches.

    Raises:
        InputSizeError: ``size`` is invalid or smaller than the current input in either axis.
    """
    target = _parse_size(size, "pad size")
    th, tw = target if isinstance(target, tuple) else (target, target)
    h, w = prepared.transform.input_size
    if th < h or tw < w:
        raise InputSizeError(f"cannot pad image of input size {h}x{w} to smaller size {th}x{tw}")
    if (th, tw) == (h, w):
        return prepared
    array = np.zeros((th, tw, 3), dtype=np.uint8)
    array[:h, :w] = prepared.array
    t = prepared.transform
    transform = ImageTransform(
        original_size=t.original_size, input_size=(th, tw), scale=t.scale, offset=t.offset
    )
    return PreparedImage(array=array, transform=transform)


def _shape_name(prefix: str, shape: tuple[int, ...]) -> str:
    return f"{prefix}[{'x'.join(str(int(d)) for d in shape)}]"
