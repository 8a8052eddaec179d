"""One image decoder for every path that reads image files: datasets, eval, predict, serve, viz.

The rules, in order:
1. The pixel count is read from the header and checked before any pixel is decoded: an image over
   `max_pixels` (a decompression bomb, or just too big) is refused as unsafe.
2. EXIF orientation is applied, so a phone photo taken upright is upright.
3. High bit depth is scaled to 8 bits by the real range of its format, as image viewers show it:
   16-bit images from 0..65535 (so a 16-bit copy of an 8-bit image decodes to the 8-bit original),
   32-bit integer images the same when their values fit 16 bits, float images from 0..1 when their
   values lie there. Anything else (negative values, floats past 1) has no nominal range and is
   stretched from its own min..max; a constant one becomes 0. Pillow's own conversion would cut
   values past 255 instead, leaving only 0 and 255.
4. Colour: palette images are expanded; an alpha channel is composited over black (the background of
   the built-in datasets); CMYK and YCbCr are converted to RGB. The result is grey ("L") or "RGB",
   whichever `channels` asks for (1 or 3); with `channels=None` grey stays grey and the rest is RGB.

Every failure is a `DecodeError` with one reason: unreadable, not an image, truncated, too large,
unsupported mode.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

# 64 million pixels (8000 x 8000). Pillow's own bomb guard (about 89M pixels) is for its decoders;
# this one runs first, from the header, with our message.
MAX_PIXELS = 64_000_000

GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
REASONS = ("unreadable", "not an image", "truncated", "too large", "unsupported mode")


class DecodeError(DataError):
    """An image file that cannot be used; `reason` is one of REASONS."""

    def __init__(self, source: str, reason: str, detail: str = ""):
        self.source, self.reason, self.detail = source, reason, detail
        super().__init__(f"{source}: {self.explanation}")

    @property
    def explanation(self) -> str:
        """The reason and its detail, without the file name: "too large (9000x9000 = ...)"."""
        return self.reason + (f" ({self.detail})" if self.detail else "")


def _name(source: str | os.PathLike | bytes) -> str:
    return "<bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _open(source: str | os.PathLike | bytes, name: str, max_pixels: int) -> Image.Image:
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
    except OSError as e:
        raise DecodeError(name, "unreadable", e.strerror or str(e)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as e:  # Pillow's own guard fires on open past twice its limit
        fp.close()
        n = re.search(r"\((\d+) pixels\)", str(e))
        detail = f"{int(n.group(1)):,} pixels, the limit is {max_pixels:,}" if n else str(e)
        raise DecodeError(name, "too large", detail) from None
    except UnidentifiedImageError:
        fp.close()
        raise DecodeError(name, "not an image", "no known image format") from None
    except (OSError, ValueError, SyntaxError) as e:  # a broken header
        fp.close()
        raise DecodeError(name, "not an image", str(e)) from None


def image_info(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int, int]:
    """(height, width, channels after decoding) from the header alone; the file is not decoded."""
    name = _name(source)
    with _open(source, name, max_pixels) as im:
        _check_size(im, name, max_pixels)
        w, h = im.size
        if _exif_rotates(im):
            h, w = w, h
        return h, w, 1 if _is_grey(im) else 3


def _check_size(im: Image.Image, name: str, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError(name, "too large", f"{w}x{h} = {w * h:,} pixels, the limit is {max_pixels:,}")
    if w == 0 or h == 0:
        raise DecodeError(name, "not an image", f"size {w}x{h}")


def _exif_rotates(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap width and height
    except Exception:  # a broken EXIF block: treat as no orientation, as viewers do
        return False


def _is_grey(im: Image.Image) -> bool:
    if im.mode == "P":  # a palette whose entries are all grey
        pal = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
    return im.mode in GREY_MODES


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth grey (I;16*, I, F) to "L" by the rule in the module docstring."""
    a = np.asarray(im, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return Image.new("L", im.size)
    lo, hi = float(finite.min()), float(finite.max())
    if im.mode != "F" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0  # the 16-bit range
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    scaled = np.zeros_like(a) if hi <= lo else (np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return Image.fromarray(np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8), "L")


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    black = Image.new("RGBA", im.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def _normalise_mode(im: Image.Image, name: str) -> Image.Image:
    """Any decoded mode to "L" or "RGB" by the rules in the module docstring."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _flatten_alpha(im)
    if im.mode in ("1", "L"):
        return im.convert("L")
    if im.mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    raise DecodeError(name, "unsupported mode", f"Pillow mode {im.mode!r}")


def decode_image(source: str | os.PathLike | bytes, channels: int | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A file path or the bytes of an image file, decoded by the rules above to a Pillow image in
    mode "L" (channels=1) or "RGB" (channels=3; None keeps grey images grey)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    name = _name(source)
    with _open(source, name, max_pixels) as im:
        _check_size(im, name, max_pixels)
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError as e:
            raise DecodeError(name, "too large", str(e)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            reason = "truncated" if "truncat" in str(e).lower() or isinstance(e, EOFError) else "unreadable"
            raise DecodeError(name, reason, str(e)) from None
        im = _normalise_mode(im, name)
    if channels == 1 and im.mode != "L":
        im = im.convert("L")
    elif channels == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    return im


def to_uint8_chw(im: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded image as a (C, H, W) uint8 array, resized (bilinear) to size=(H, W) if given."""
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return np.array((a[:, :, None] if a.ndim == 2 else a).transpose(2, 0, 1))  # a writable copy


def read_image(path: str | os.PathLike | Path, channels: int | None = None, size: tuple[int, int] | None = None,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`decode_image` then `to_uint8_chw`: a (C, H, W) uint8 array."""
    return to_uint8_chw(decode_image(path, channels, max_pixels), size)
