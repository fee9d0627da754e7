"""Image preprocessing: decode with Pillow, resize to a fixed size, normalize per channel.

Raw images are uint8 arrays of shape (n, height, width, 3); the model takes float32 NCHW.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainfer.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode one image file to uint8 (size, size, 3); a corrupt file raises InputError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = to_rgb(img)
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot decode image {path}: {exc}", hint="remove or replace the corrupt file") from None


def to_rgb(img: Any) -> Any:
    """A PIL image as 8-bit RGB, scaled by its bit depth.

    Pillow's own convert("RGB") clips 16- and 32-bit grayscale ("I;16", "I") at 255, which turns a
    16-bit PNG white; float images ("F") are taken as 0..1 when they fit there, else as 0..255.
    """
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":  # 32-bit integers: PNG and TIFF store 16-bit samples this way in older Pillows
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # uint8 (h, w): mode "L"
    return img.convert("RGB")


def pixels_in_range(arr: np.ndarray) -> np.ndarray:
    """``arr`` if its pixel values lie in 0..255; else an InputError, never a silent clip (a 16-bit image
    clipped at 255 turns white)."""
    if arr.dtype == np.uint8 or arr.size == 0:
        return arr
    if arr.dtype.kind not in "iufb":
        raise InputError(f"image array must hold numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError("image array holds NaN or infinity; send pixel values in 0..255")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -0.5 or hi > 255.5:  # half a level of slack for values that went through float arithmetic
        raise InputError(f"pixel values must lie in 0..255, found {lo:g}..{hi:g}",
                         hint="scale 16-bit images to 8 bits first (e.g. values / 257)" if hi <= 65535.5 else None)
    return arr


def read_images(paths: Sequence[str | os.PathLike[str]], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_image(p, size)
    return out


class PixelSums:
    """Per-channel sums of uint8 pixels and of their squares, in exact integers: the mean and std they give
    do not depend on the order or the chunks the images come in (in memory or streamed, the same bits)."""

    def __init__(self) -> None:
        self.n = 0
        self.s = [0, 0, 0]
        self.ss = [0, 0, 0]

    def add(self, images: np.ndarray) -> None:
        flat = images.reshape(-1, 3).astype(np.int64)
        self.n += len(flat)
        for c in range(3):
            col = flat[:, c]
            self.s[c] += int(col.sum())
            self.ss[c] += int((col * col).sum())

    def features(self, size: int) -> ImageFeatures:
        n = max(self.n, 1)
        mean = [s / (n * 255) for s in self.s]  # int / int: correctly rounded
        var = [(n * ss - s * s) / (n * n * 255 * 255) for s, ss in zip(self.s, self.ss, strict=True)]
        return ImageFeatures(size, mean, [max(float(np.sqrt(v)), 1e-6) for v in var])


class ImageFeatures:
    kind = "image"

    def __init__(self, size: int, mean: list[float], std: list[float]) -> None:
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        # (pixel / 255 - mean) / std as one multiply-add on the uint8 layout, before the transpose
        self._scale = (1.0 / (255.0 * self.std.reshape(3).astype(np.float64))).astype(np.float32)
        self._shift = (-self.mean.reshape(3).astype(np.float64) / self.std.reshape(3)).astype(np.float32)

    @classmethod
    def fit(cls, images: np.ndarray) -> ImageFeatures:
        """Per-channel mean and std of the train split, on the [0, 1] scale."""
        sums = PixelSums()
        for i in range(0, len(images), 1024):
            sums.add(images[i:i + 1024])
        return sums.features(images.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size)

    @property
    def column_names(self) -> list[str]:
        return ["image"]

    def to_uint8(self, X: Any, resize: bool = True) -> np.ndarray:
        """Paths, a folder, PIL images or arrays -> uint8 (n, size, size, 3). Files are decoded and resized by
        Pillow; arrays of another size are resized too unless ``resize=False`` (a whole-graph bundle resizes
        them in its graph: (n, height, width, 3) then)."""
        if isinstance(X, (str, os.PathLike)):
            p = Path(X)
            X = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        if isinstance(X, (list, tuple)) and X and isinstance(X[0], (str, os.PathLike)):
            return read_images(X, self.size)
        if isinstance(X, (list, tuple)) and X and hasattr(X[0], "convert"):  # PIL images
            X = np.stack([np.asarray(to_rgb(im)) for im in X])
        arr = np.asarray(X)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InputError(f"expected images as (n, height, width, 3) or file paths, got shape {arr.shape}")
        arr = pixels_in_range(arr)
        if resize and arr.shape[1:3] != (self.size, self.size):
            arr = _resize(arr, self.size)
        return np.clip(arr, 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr

    def transform(self, X: Any) -> np.ndarray:
        """Raw images -> float32 (n, 3, size, size), normalized like the training data."""
        arr = self.to_uint8(X).astype(np.float32)
        arr *= self._scale
        arr += self._shift
        # contiguous NCHW: onnxruntime would copy a strided input on every call
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "size": self.size, "channels": 3,
            "mean": self.mean.reshape(-1).tolist(), "std": self.std.reshape(-1).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageFeatures:
        return cls(int(d["size"]), d["mean"], d["std"])


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(arr), size, size, 3), dtype=np.uint8)
    for i, a in enumerate(arr):
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        out[i] = np.asarray(img.resize((size, size), Image.BILINEAR))
    return out
