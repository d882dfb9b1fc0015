"""Crops of a batch of images of different sizes, resized to one size in a few batched calls.

After the batched JPEG decode on the device (nvjpeg on CUDA) a streamed batch is a list of
uint8 [3, H_i, W_i] images, each of its own size. ``crop_resize`` takes one box per image, in
that image's own pixel frame (``rrc_box`` for a random-resized crop, ``square_box`` for the
stored square), and returns the uint8 [N, 3, size, size] batch, mirrored where asked: PIL's
``Image.resize(size, BILINEAR, box=...)`` of every box (within 1 grey level: PIL rounds in
fixed point and between its two passes), antialiased when shrinking. It is a pure tensor op,
on whatever device the images are:

1. the images' pixels are put side by side, channels last, in one [sum H_i * W_i, 3] buffer
   (one ``cat`` and one transpose);
2. each box's *region* (the pixels its filters reach: the box and the filter's support
   around it, within the image) is laid out in one [n, H_max, W_max * 3] tensor per *padding
   group* by a single ``index_select``, then converted to float. Regions are grouped
   (largest first) so that a group's padded pixels stay within ``MAX_PADDING`` times its
   regions' own: crops of similar photos are one or two groups, and a 4000x3000 crop among
   crops of 500x375 photos gets its own rather than padding all of them to its size;
3. the resize is separable: per image, a [size, H] matrix of vertical weights and a
   [size, W] matrix of horizontal ones, built for the whole group at once (PIL's and
   ``F.interpolate(antialias=True)``'s bilinear filter: a triangle of radius max(scale, 1)
   around each output pixel's centre, rows normalised, zero on padding), applied by two
   ``bmm`` per group (float32; autocast off). The matrices are dense (most weights are 0),
   which costs arithmetic (about 20 GFLOP for 64 crops of 400x350 photos to 224) but no
   kernel per image;
4. rounding to uint8, flips by one ``torch.where``, and one ``index_copy_`` back into batch
   order when there was more than one group.

The host computes only the boxes and a few integers per image (sizes, offsets, regions), sent
to the device in two small copies per batch; no host sync, no kernel per image: about twenty
kernels per group and five more per batch. On a GPU whose fp32 matmuls run as TF32
(``torch.backends.cuda.matmul.allow_tf32``) a pixel may round one grey level differently.

Like PIL's ``resize(box=...)``, and unlike cropping first and resizing the crop, the filters
near a box's edge read the pixels just outside it (up to the image's edge).

``crop_resize_each`` is the per-image reference (crop, ``F.interpolate`` antialiased when
shrinking, flip), for tests and ``benchmarks/bench_stream.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_PADDING", "Box", "crop_resize", "crop_resize_each", "padding_groups", "resize_one"]

Box = tuple[float, float, float, float]
"""(left, top, width, height) of a crop, in its image's own pixels."""

MAX_PADDING = 2.0
"""A padding group's padded pixels are at most this many times its images' own pixels."""


def padding_groups(
    shapes: Sequence[tuple[int, int]], max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Indices of (height, width) ``shapes`` (crop regions) in groups padded together: largest
    area first, a group closed when adding the next image would make ``len * H_max * W_max`` exceed
    ``max_padding`` times the group's own pixels. Every index once; a group is never empty."""
    order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0] * shapes[i][1])
    groups: list[list[int]] = []
    current: list[int] = []
    top = left = own = 0
    for i in order:
        h, w = shapes[i]
        th, tw = max(top, h), max(left, w)
        if current and (len(current) + 1) * th * tw > max_padding * (own + h * w):
            groups.append(current)
            current, th, tw, own = [], h, w, 0
        current.append(i)
        top, left, own = th, tw, own + h * w
    if current:
        groups.append(current)
    return groups


def crop_resize(
    images: Sequence[Tensor],
    boxes: Sequence[Box],
    size: int,
    flips: Sequence[bool] | None = None,
    *,
    max_padding: float = MAX_PADDING,
) -> Tensor:
    """uint8 [N, C, size, size]: image i's ``boxes[i]`` resized to ``size`` (bilinear,
    antialiased when shrinking, as PIL's ``resize(box=...)``), mirrored left-right where
    ``flips[i]``, in a few batched calls (see the module doc). ``images``: uint8
    [C, H_i, W_i] tensors on one device, of any sizes; boxes (left, top, width, height) in
    each image's own pixels, within it."""
    n = len(images)
    if n == 0 or len(boxes) != n or (flips is not None and len(flips) != n):
        raise ValueError(f"need one box (and flip) per image: {n} images, {len(boxes)} boxes")
    device, channels = images[0].device, int(images[0].shape[0])
    shapes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    # each box's region: the pixels its filters reach (the box and `support` around it),
    # within the image: [top0, top0 + rh) x [left0, left0 + rw)
    regions = []
    for (h, w), (left, top, cw, ch) in zip(shapes, boxes, strict=True):
        top0, bottom = _reach(top, ch, size, h)
        left0, right = _reach(left, cw, size, w)
        regions.append((top0, left0, bottom - top0, right - left0))
    groups = padding_groups([(r[2], r[3]) for r in regions], max_padding)
    order = [i for g in groups for i in g]  # batch positions, group by group

    # the images' pixels side by side, channels last: [sum of H_i * W_i, C]; image i's from
    # starts[i] (two copies of the batch: one cat, one transpose)
    pixels = torch.cat([im.reshape(channels, -1) for im in images], dim=1).t().contiguous()
    starts = [0] * n
    for i in range(1, n):
        starts[i] = starts[i - 1] + shapes[i - 1][0] * shapes[i - 1][1]
    # one copy of the integers and one of the floats, in group order (non_blocking: no sync)
    ints = torch.tensor(
        [(starts[i], *shapes[i], *regions[i], int(bool(flips and flips[i])), i) for i in order],
        dtype=torch.int64,
    ).to(device, non_blocking=True)
    floats = torch.tensor([boxes[i] for i in order], dtype=torch.float64)
    floats = floats.to(device, non_blocking=True)

    outs: list[Tensor] = []
    start = 0
    with torch.autocast(device.type, enabled=False):  # float32 matmuls, whatever the caller's
        for g in groups:
            stop = start + len(g)
            height = max(regions[i][2] for i in g)
            width = max(regions[i][3] for i in g)
            meta, box = ints[start:stop], floats[start:stop]
            offset, _, image_w, region_top, region_left, rh, rw = (meta[:, j] for j in range(7))
            # [g, height, width * C]: each region, rows and columns past it clamped (read, but
            # weighted 0), by one gather of pixels; then float
            ys = torch.minimum(torch.arange(height, device=device), rh[:, None] - 1)
            xs = torch.minimum(torch.arange(width, device=device), rw[:, None] - 1)
            ys, xs = ys + region_top[:, None], xs + region_left[:, None]
            index = (offset[:, None] + ys * image_w[:, None])[:, :, None] + xs[:, None, :]
            region = pixels.index_select(0, index.view(-1)).view(len(g), height, width * channels)
            # the boxes from their regions' corners: small numbers, exact enough in float32
            y0, x0 = (box[:, 1] - region_top).float(), (box[:, 0] - region_left).float()
            rows = _weights(y0, box[:, 3].float(), rh, height, size)  # [g, size, height]
            cols = _weights(x0, box[:, 2].float(), rw, width, size)  # [g, size, width]
            # vertical pass: [g, size, width * C]; horizontal: [g, size (x), size (y) * C]
            tall = torch.bmm(rows, region.float())
            tall = tall.view(len(g), size, width, channels).transpose(1, 2)
            wide = torch.bmm(cols, tall.reshape(len(g), width, size * channels))
            outs.append(wide.view(len(g), size, size, channels).permute(0, 3, 2, 1))
            start = stop
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    out = out.round().clamp_(0, 255).to(torch.uint8).contiguous()
    if flips is not None and any(flips):
        out = torch.where(ints[:, 7].bool().view(-1, 1, 1, 1), out.flip(-1), out)
    if order == list(range(n)):
        return out
    return torch.empty_like(out).index_copy_(0, ints[:, 8], out)


def _reach(start: float, length: float, size: int, limit: int) -> tuple[int, int]:
    """[first, last + 1) of the pixels the resampling filters of a box [start, start + length)
    resized to ``size`` reach, within [0, limit): the box and the filter's support (the scale
    when shrinking, else 1) around it, plus one."""
    support = max(length / size, 1.0)
    first = max(0, math.floor(start - support) - 1)
    return first, min(limit, math.ceil(start + length + support) + 1)


def _weights(start: Tensor, length: Tensor, count: Tensor, frame: int, size: int) -> Tensor:
    """float32 [g, size, frame]: per image, the weight of region pixel j (``j < count``; the
    rest is padding) in output pixel o, for boxes starting ``start`` pixels into the region
    and ``length`` long, resized to ``size``: PIL's and ``F.interpolate(antialias=True)``'s
    bilinear filter, a triangle of radius max(scale, 1) around the output pixel's centre
    (``start + scale * (o + 0.5)``), each row normalised to sum 1."""
    scale = (length / size)[:, None, None]
    o = torch.arange(size, device=start.device, dtype=torch.float32)[None, :, None]
    j = torch.arange(frame, device=start.device)
    centre = start[:, None, None] + scale * (o + 0.5)
    distance = (j.float()[None, None, :] + 0.5 - centre).abs_()
    weight = (1 - distance / scale.clamp(min=1.0)).clamp_(min=0)
    weight = weight * (j < count[:, None])[:, None, :]
    return weight / weight.sum(-1, keepdim=True)


def crop_resize_each(
    images: Sequence[Tensor], boxes: Sequence[Box], size: int, flips: Sequence[bool] | None = None
) -> Tensor:
    """The per-image reference of ``crop_resize``: for each image, its integer ``box`` cropped,
    then resized by ``F.interpolate`` (bilinear, ``align_corners=False``, antialiased when
    shrinking), then mirrored where ``flips[i]``: several kernels per image."""
    out = []
    for i, (image, (left, top, cw, ch)) in enumerate(zip(images, boxes, strict=True)):
        l0, t0 = int(left), int(top)
        crop = resize_one(image[:, t0 : t0 + int(ch), l0 : l0 + int(cw)], size, size)
        out.append(crop.flip(-1) if flips is not None and flips[i] else crop)
    return torch.stack(out)


def resize_one(image: Tensor, h: int, w: int) -> Tensor:
    """A uint8 [C, H, W] image resized bilinearly (antialiased when shrinking) to h x w."""
    out = F.interpolate(
        image.unsqueeze(0).float(), size=(h, w), mode="bilinear", align_corners=False,
        antialias=h < image.shape[-2] or w < image.shape[-1],
    )  # fmt: skip
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)
