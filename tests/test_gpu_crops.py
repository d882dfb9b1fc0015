"""Batched crops of images of different sizes (rsst_tune.data.gpu_crops.crop_resize), the
device path of streamed training, run here on CPU tensors: it is a pure tensor op, the same
code on a GPU.

References, on JPEG photos-like images (smooth random content, decoded by torchvision's
``decode_jpeg`` as the device path decodes them): ``crop_resize`` applies PIL's (and
``F.interpolate(antialias=True)``'s) bilinear filter, so it is PIL's ``resize(box=...)`` of
the same box to within 1 grey level at any scale (PIL rounds in fixed point, and to 8 bits
between its horizontal and vertical passes), and ``F.interpolate`` of whole images to within
1 (float rounding at .5). The per-image path (crop, then ``F.interpolate``) clamps at the
crop's edge where PIL and ``crop_resize`` read the pixels just outside it: a few grey levels
on the edge rows, hence means, not maxima, against it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rsst_tune.data import RRC_DRAWS, load_dataset, make_generator
from rsst_tune.data.decode import rrc_box, square_box
from rsst_tune.data.gpu_crops import (
    MAX_PADDING,
    crop_resize,
    crop_resize_each,
    padding_groups,
    resize_one,
)
from rsst_tune.data.streaming import StreamData

with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec, not installed
    warnings.simplefilter("ignore", DeprecationWarning)
    from torchvision.io import ImageReadMode, decode_jpeg


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth photos-like RGB image: coarse random colours upsampled bicubically."""
    coarse = rng.integers(0, 256, (h // 12 + 2, w // 12 + 2, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)


def jpeg_bytes(image: Image.Image) -> torch.Tensor:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


@pytest.fixture(scope="module")
def decoded() -> list[torch.Tensor]:
    """16 JPEG photos of 60..199 px a side, decoded as the device path decodes them."""
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(60, 200, (16, 2))]
    return [decode_jpeg(jpeg_bytes(photo(rng, w, h)), mode=ImageReadMode.RGB) for w, h in sizes]


def random_boxes(images: list[torch.Tensor], seed: int) -> list[tuple[int, int, int, int]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        rrc_box(int(im.shape[2]), int(im.shape[1]), torch.rand(RRC_DRAWS, generator=gen).tolist())
        for im in images
    ]


def pil_crop(image: torch.Tensor, box: tuple[float, ...], size: int) -> torch.Tensor:
    left, top, w, h = box
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    out = pil.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.int() - b.int()).abs().float()


def test_enlarging_is_bilinear_interpolation(decoded: list[torch.Tensor]) -> None:
    """Each box enlarged 1.5x (one call per size) is PIL's bilinear resize of the box within
    1 grey level; whole images enlarged in one batch, padded together, are F.interpolate's
    within 1 (float rounding at .5), nearly always equal: the padding is never read."""
    for image, box in zip(decoded, random_boxes(decoded, 1), strict=True):
        size = int(max(box[2], box[3]) * 1.5)
        got = crop_resize([image], [box], size)[0]
        assert diff(got, pil_crop(image, box, size)).max() <= 1
    whole = [(0, 0, int(im.shape[2]), int(im.shape[1])) for im in decoded]
    # one padding group: the smaller images' bottom and right edges lie inside the padding
    got = crop_resize(decoded, whole, 240, max_padding=1e9)
    expected = torch.stack(
        [
            F.interpolate(im[None].float(), (240, 240), mode="bilinear", align_corners=False)[0]
            .round()
            .to(torch.uint8)
            for im in decoded
        ]
    )
    d = diff(got, expected)
    assert d.max() <= 1 and d.mean() < 1e-3


def test_shrinking_at_any_scale_is_pils_antialiased_bilinear(
    decoded: list[torch.Tensor],
) -> None:
    """Random-resized crops (rrc_box) shrunk by 1.2x to 5x: within 1 grey level of PIL's
    antialiased bilinear resize of the box, per image and over a batch at one size; within
    1 of the per-image F.interpolate path but on the edge rows and columns (whose filters
    reach past the box), within a fraction of a grey level on average."""
    boxes = random_boxes(decoded, 2)
    for k, (image, box) in enumerate(zip(decoded, boxes, strict=True)):
        size = max(1, int(min(box[2], box[3]) / (1.2 + 3.8 * k / len(decoded))))
        got = crop_resize([image], [box], size)[0]
        assert diff(got, pil_crop(image, box, size)).max() <= 1
        each = crop_resize_each([image], [box], size)[0]  # differs on the edge rows only
        assert diff(got[:, 1:-1, 1:-1], each[:, 1:-1, 1:-1]).max() <= 1
    got = crop_resize(decoded, boxes, 48)  # 48 px: shrinks every crop here by 1.1-3x
    pil = torch.stack([pil_crop(im, b, 48) for im, b in zip(decoded, boxes, strict=True)])
    assert diff(got, pil).max() <= 1
    assert diff(got, crop_resize_each(decoded, boxes, 48)).mean() < 0.5


def test_boxes_at_the_image_edges_renormalise_as_pil_does_beside_padding() -> None:
    """Noise images (the worst case for filters) of different sizes padded together, boxes
    reaching their right and bottom edges (and whole images) shrunk 2.5x: PIL's pixels
    within 1 grey level, so filters cut by an image's edge are renormalised over the pixels
    inside it (not fed the padding, nor the edge pixel repeated)."""
    gen = torch.Generator().manual_seed(4)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
              for h, w in ((50, 70), (90, 60), (41, 43), (120, 110))]  # fmt: skip
    boxes: list[tuple[float, float, float, float]] = []
    for im in images:
        h, w = int(im.shape[1]), int(im.shape[2])
        boxes += [(w - 35, h - 30, 35, 30), (0, 0, w, h)]
    twice = [im for im in images for _ in range(2)]
    for size in (12, 14):
        got = crop_resize(twice, boxes, size, max_padding=1e9)
        for out, image, box in zip(got, twice, boxes, strict=True):
            assert diff(out, pil_crop(image, box, size)).max() <= 1


def test_flips_mirror_exactly_and_shapes_dtypes_and_order_hold(
    decoded: list[torch.Tensor],
) -> None:
    boxes = random_boxes(decoded, 3)
    plain = crop_resize(decoded, boxes, 40)
    assert plain.shape == (len(decoded), 3, 40, 40) and plain.dtype == torch.uint8
    assert plain.device == decoded[0].device
    flips = [k % 3 == 0 for k in range(len(decoded))]
    mixed = crop_resize(decoded, boxes, 40, flips)
    for k, flip in enumerate(flips):
        assert torch.equal(mixed[k], plain[k].flip(-1) if flip else plain[k])
    assert torch.equal(crop_resize(decoded, boxes, 40, [True] * len(decoded)), plain.flip(-1))
    # one image alone, in a batch, or padded beside larger images: the same pixels
    for k in (0, 5, 11):
        alone = crop_resize([decoded[k]], [boxes[k]], 40)[0]
        assert diff(alone, plain[k]).max() <= 1 and diff(alone, plain[k]).mean() < 1e-3
    # a padding group per distinct crop region (the boxes differ), or one for all: the same
    # batch, in the same order
    apart = crop_resize(decoded, boxes, 40, max_padding=1.0)
    together = crop_resize(decoded, boxes, 40, max_padding=1e9)
    for other in (apart, together):
        assert diff(other, plain).max() <= 1 and diff(other, plain).mean() < 1e-3
    # channels other than 3, and non-square boxes given as floats
    grey = [im[:1] for im in decoded[:4]]
    fboxes = [(1.5, 2.25, 30.5, 20.0)] * 4
    assert crop_resize(grey, fboxes, 8).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="one box"):
        crop_resize(decoded, boxes[:-1], 40)


def test_padding_groups_bound_the_padding_and_keep_every_image() -> None:
    photos = [(375, 500), (500, 375), (333, 500), (500, 333)] * 16
    assert padding_groups(photos) == [sorted(range(64), key=lambda i: -photos[i][0] * photos[i][1])]
    shapes = [(3000, 4000), *photos[:63]]
    groups = padding_groups(shapes)  # the large one with one photo at most, not all 63
    assert len(groups) == 2 and groups[0][0] == 0 and len(groups[0]) <= 2
    rng = np.random.default_rng(0)
    shapes = [(int(h), int(w)) for h, w in rng.integers(8, 1200, (200, 2))]
    groups = padding_groups(shapes)
    assert sorted(i for g in groups for i in g) == list(range(200))
    for g in groups:
        padded = len(g) * max(shapes[i][0] for i in g) * max(shapes[i][1] for i in g)
        own = sum(shapes[i][0] * shapes[i][1] for i in g)
        assert len(g) == 1 or padded <= MAX_PADDING * own


def test_square_boxes_give_the_resized_then_cropped_square(decoded: list[torch.Tensor]) -> None:
    """square_box in the image's own frame, resized to side: F.interpolate (antialiased) of
    the whole image to the short side, then decode_image's square, within 1 grey level,
    enlarging or shrinking."""
    for side, img_size in ((240, 210), (48, 42)):
        boxes = [square_box(int(im.shape[2]), int(im.shape[1]), side, img_size) for im in decoded]
        got = crop_resize(decoded, boxes, side)
        for image, box, out in zip(decoded, boxes, got, strict=True):
            h, w = int(image.shape[1]), int(image.shape[2])
            new_h, new_w = round(h * side / box[3]), round(w * side / box[2])
            whole = resize_one(image, new_h, new_w)
            top, left = round(box[1] * new_h / h), round(box[0] * new_w / w)
            ref = whole[:, top : top + side, left : left + side]
            assert ref.shape == out.shape
            assert diff(out, ref).max() <= 1


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ of smooth JPEGs (40..120 px), a few PNGs and a CMYK JPEG among them; val/."""
    root = tmp_path_factory.mktemp("gpu_crops") / "data"
    rng = np.random.default_rng(1)
    for sub, n in (("train", 12), ("val", 2)):
        for cls in ("a", "b"):
            (root / sub / cls).mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(40, 120, 2))
                image = photo(rng, w, h)
                if i == 5:
                    image.convert("CMYK").save(root / sub / cls / f"{i}.jpg", quality=95)
                elif i % 4 == 3:
                    image.save(root / sub / cls / f"{i}.png")
                else:
                    image.save(root / sub / cls / f"{i}.jpg", quality=95)
    return root


def test_streamed_training_on_the_device_path_crops_as_the_workers_do(
    photo_folder: Path,
) -> None:
    """StreamData decoding JPEGs 'on the device' (the CPU here: the code path of nvjpeg, then
    crop_resize) serves, image by image, the crops the PIL workers serve for the same
    generator: same order, same boxes and flips (drawn from the same uniforms), pixels within
    a grey level on average, and within 8 for every image: crops shrunk 2x or more differ by
    4-6 levels (measured 2026-12-07), as PIL decodes them at 1/2 DCT scale first, then
    filters with its own triangle; a mirrored image differs by 30-70.
    PNGs (decoded by the workers) and the CMYK JPEG (PIL fallback) keep their places."""
    bundle = load_dataset("imagefolder", data_dir=photo_folder, img_size=32, lazy=True)
    split, spec = bundle.train, bundle.spec
    assert spec.flip
    pil = StreamData(split, spec, "cpu", workers=0)  # type: ignore[arg-type]
    dev = StreamData(split, spec, "cpu", workers=0, decode_on_device=True)  # type: ignore[arg-type]
    grey = 255 * torch.tensor(spec.std).view(1, -1, 1, 1)  # normalised units -> grey levels
    served, means = 0, []
    for (xa, ya), (xb, yb) in zip(
        pil.train_batches(6, make_generator(3, "cpu")),
        dev.train_batches(6, make_generator(3, "cpu")),
        strict=True,
    ):
        assert torch.equal(ya, yb) and xa.shape == xb.shape == (len(ya), 3, 32, 32)
        per_image = ((xa - xb).abs() * grey).mean(dim=(1, 2, 3))
        mirrored = ((xa - xb.flip(-1)).abs() * grey).mean(dim=(1, 2, 3))
        assert (per_image < 8.0).all(), per_image
        assert (5 * per_image < mirrored).all()  # the flips agree image by image
        means.append(per_image)
        served += len(ya)
    assert served == len(dev) and dev.skipped == 0
    assert torch.cat(means).median() < 1.0
    # evaluation: the stored square, centre-cropped, close to PIL's
    for (xa, _), (xb, _) in zip(pil.eval_batches(9), dev.eval_batches(9), strict=True):
        assert ((xa - xb).abs() * grey).mean() < 3.0
