"""One image file to a uint8 tensor, and the crop geometry behind it.

``decode_image`` reads an image folder's stored square: short side resized to ``side``
(``stored_size(img_size)``), cropped so that a later centre crop of ``img_size`` is exactly
torchvision's ``Resize`` + ``CenterCrop``. ``decode_crop`` takes torchvision's
``RandomResizedCrop`` of the whole image (``rrc_box``), for streamed training. Both read any
PIL mode as RGB (``as_rgb``) and decode JPEGs at reduced scale where that stays large enough.
``stored_size``, ``RRC_SCALE`` and ``RRC_RATIO`` are shared with the on-device crops
(``rsst_tune.data.batches``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "EVAL_CROP",
    "RRC_DRAWS",
    "RRC_RATIO",
    "RRC_SCALE",
    "as_rgb",
    "decode_crop",
    "decode_image",
    "describe_error",
    "resized_shape",
    "rrc_box",
    "square_box",
    "square_offset",
    "stored_size",
]

EVAL_CROP = 0.875
"""The ImageNet evaluation convention: resize to img_size / 0.875, centre crop img_size."""
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def stored_size(img_size: int, eval_crop: float = EVAL_CROP) -> int:
    """The side an image folder keeps its images at for ``img_size``: img_size / eval_crop
    (256 for 224), so that evaluation's centre crop of ``img_size`` needs no resize."""
    return max(img_size, round(img_size / eval_crop))


def decode_image(path: Path, side: int, img_size: int) -> Tensor:
    """One image as uint8 [3, side, side]: RGB, short side resized to ``side`` (PIL bilinear,
    as torchvision's ``Resize``), the long side cropped so that a later centre crop of
    ``img_size`` is exactly torchvision's ``CenterCrop(img_size)`` of the resized image."""
    from PIL import Image

    with Image.open(path) as raw:
        width, height = raw.size
        new_w, new_h = resized_shape(width, height, side)
        raw.draft("RGB", (new_w, new_h))  # JPEG: decode at 1/2, 1/4, 1/8 scale if still >= size
        image = as_rgb(raw)
    if image.size != (new_w, new_h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = square_offset(new_w, side, img_size), square_offset(new_h, side, img_size)
    image = image.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def as_rgb(raw: PILImage) -> PILImage:
    """An opened PIL image as 8-bit RGB: 16-bit grey scaled by 1/257 (not clipped), every
    other mode converted by PIL."""
    from PIL import Image

    if raw.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.clip(np.asarray(raw, dtype=np.float64) / 257.0, 0, 255).round()
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    return raw.convert("RGB")


RRC_DRAWS = 23
"""Uniform numbers one random-resized crop takes: 10 scales, 10 aspect ratios, top, left,
flip."""


def rrc_box(w: int, h: int, u: Sequence[float]) -> tuple[int, int, int, int]:
    """(left, top, width, height) of torchvision's ``RandomResizedCrop`` of a w x h image
    from ``RRC_DRAWS`` uniform numbers in [0, 1): ten tries of a scale in 0.08..1 of the area
    and a log-uniform aspect ratio in 3/4..4/3; if none fits, the centre crop with the ratio
    clamped (torchvision's fallback)."""
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    for t in range(10):
        area = (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[t]) * w * h
        ratio = math.exp(lo + (hi - lo) * u[10 + t])
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(u[20] * (h - ch + 1)), int(u[21] * (w - cw + 1))
            return left, top, cw, ch
    if w / h < RRC_RATIO[0]:
        cw, ch = w, round(w / RRC_RATIO[0])
    elif w / h > RRC_RATIO[1]:
        cw, ch = round(h * RRC_RATIO[1]), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def decode_crop(path: Path, img_size: int, u: Sequence[float], flip: bool) -> Tensor:
    """One training image as uint8 [3, img_size, img_size]: torchvision's random-resized crop
    of the whole image (``rrc_box`` of the uniforms ``u``), resized bilinearly by PIL, and
    mirrored when ``flip`` and ``u[22] < 0.5``. A JPEG is decoded at 1/2, 1/4 or 1/8 scale
    when the crop still covers at least ``img_size`` pixels each way at that scale."""
    from PIL import Image

    with Image.open(path) as raw:
        w, h = raw.size
        left, top, cw, ch = rrc_box(w, h, u)
        raw.draft("RGB", (math.ceil(w * img_size / cw), math.ceil(h * img_size / ch)))
        sx, sy = raw.size[0] / w, raw.size[1] / h  # the scale the decoder chose
        image = as_rgb(raw)
    right, bottom = min((left + cw) * sx, image.size[0]), min((top + ch) * sy, image.size[1])
    box = (left * sx, top * sy, right, bottom)
    out = image.resize((img_size, img_size), Image.Resampling.BILINEAR, box=box)
    if flip and u[22] < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def resized_shape(w: int, h: int, side: int) -> tuple[int, int]:
    """(width, height) of a w x h image whose short side is resized to ``side``."""
    if w <= h:
        return side, max(side, int(side * h / w))
    return max(side, int(side * w / h)), side


def square_offset(length: int, side: int, img_size: int) -> int:
    """Where the ``side`` square starts along a resized side of ``length``: the centre crop of
    ``img_size`` (torchvision's rounding) minus the one from ``side``."""
    wanted = round((length - img_size) / 2.0) - round((side - img_size) / 2.0)
    return min(max(wanted, 0), length - side)


def square_box(w: int, h: int, side: int, img_size: int) -> tuple[float, float, float, float]:
    """(left, top, width, height), in a w x h image's own pixels, of the ``side`` square that
    ``decode_image`` keeps after resizing the short side to ``side``: resizing this box to
    side x side samples the same points as resizing the whole image, then cropping."""
    new_w, new_h = resized_shape(w, h, side)
    sx, sy = w / new_w, h / new_h
    left, top = square_offset(new_w, side, img_size), square_offset(new_h, side, img_size)
    return left * sx, top * sy, side * sx, side * sy


def describe_error(err: BaseException) -> str:
    """``Type: first line`` of an exception (160 characters at most), for skip messages."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__
