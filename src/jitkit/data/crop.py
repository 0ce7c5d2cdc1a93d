"""Image decoding to RGB and the ADM center crop used by the JiT reference.

ADM center crop to size s (guided-diffusion, as in the JiT release):
  1. while min(W, H) ≥ 2s:  (W, H) ← (W // 2, H // 2) with BOX resampling;
  2. scale = s / min(W, H);  (W, H) ← (round(W·scale), round(H·scale)) with BICUBIC resampling;
  3. crop s×s at offsets ((H − s) // 2, (W − s) // 2).
Images smaller than s are upscaled by step 2. Images are turned upright by their EXIF orientation first.

Shape key: arrays are HWC uint8 [H, W, 3]; ``to_chw`` gives [3, S, S].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a stored image is turned (1: as stored)


class UnreadableImage(ValueError):
    """A file that is not a decodable image (zero bytes, truncated, not an image, unsupported mode)."""


def center_crop_arr(pil_image: Image.Image, size: int) -> Image.Image:
    """ADM center crop of ``pil_image`` to ``size``×``size`` (see the module docstring for the formula)."""
    if size < 1:
        raise ValueError(f"crop size must be >= 1, found {size}")
    img = pil_image
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)  # [H, W, C]
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(np.ascontiguousarray(arr[top : top + size, left : left + size]))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16/32-bit integer images are scaled to 8 bits (65535 → 255) instead of being clipped; float images in
    [0, 1] are scaled by 255; palette images with transparency go through RGBA; alpha is dropped (as the
    reference's ``convert("RGB")`` does); CMYK/YCbCr/LAB use PIL's conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img).astype(np.float64)
        if mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        if g.ndim == 3:  # unusual multi-channel integer image
            g = g[..., 0]
        return Image.fromarray(g, mode="L").convert("RGB")
    if mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF Orientation tag says (camera JPEGs store the pixels sideways and the
    rotation in the tag; viewers apply it, so must we); the image itself when there is no such tag."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block does not make the pixels unreadable
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    return ImageOps.exif_transpose(img)


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image file as RGB, upright (EXIF orientation applied); any failure raises
    UnreadableImage(reason)."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with Image.open(p) as im:
            im.load()
            return to_rgb(upright(im))
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot identify image file" in msg:
            msg = "not an image"
        raise UnreadableImage(msg) from e


def to_chw(img: Image.Image) -> np.ndarray:
    """PIL RGB image → uint8 array [3, H, W]."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def load_cropped(path: str | Path, size: int) -> np.ndarray:
    """Decode ``path`` to RGB and ADM-center-crop it: uint8 [3, size, size]."""
    return to_chw(center_crop_arr(load_rgb(path), size))
