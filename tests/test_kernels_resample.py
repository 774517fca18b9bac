"""Golden tests: the batched crop + resize kernels against the pinned Pillow, byte for byte.

The rules (pass order, coefficient rounding) belong to one Pillow release, so every golden
test is skipped, naming the version, when the installed Pillow is not the pinned one.
"""

from __future__ import annotations

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from torchvision import transforms as tv

from deit_pipe.data.device.kernels import resample as rs

PINNED_PILLOW = "13.0.0"
pytestmark = pytest.mark.skipif(
    PIL.__version__ != PINNED_PILLOW,
    reason=f"golden rules are Pillow {PINNED_PILLOW}'s; installed Pillow is {PIL.__version__}",
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ALL_FILTERS = [rs.NEAREST, rs.BILINEAR, rs.BICUBIC, rs.LANCZOS, rs.BOX, rs.HAMMING]
ALL_FILTERS += [rs.MKS2013, rs.MKS2021]
# mostly what RandomResizedCrop uses, but every filter Pillow has
FILTER_WEIGHTS = np.array([1, 3, 6, 1, 1, 1, 1, 1], dtype=float) / 15


def _pad_batch(images: list[np.ndarray]) -> torch.Tensor:
    """Views' source images in the top-left corners of one batch; the padding is noise."""
    h = max(a.shape[0] for a in images)
    w = max(a.shape[1] for a in images)
    batch = np.random.default_rng(0).integers(0, 256, (len(images), h, w, images[0].shape[2]))
    batch = batch.astype(np.uint8)
    for i, a in enumerate(images):
        batch[i, : a.shape[0], : a.shape[1]] = a
    return torch.from_numpy(batch)


def _render(images: list[np.ndarray], views: list[rs.ViewTaps], device: str) -> np.ndarray:
    plan = rs.stack_taps(views).to(device)
    return rs.resize_batch(_pad_batch(images).to(device), plan).cpu().numpy()


def _pillow(a: np.ndarray, box: tuple[int, int, int, int], out: tuple[int, int], f: int):
    im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
    res = np.asarray(im.crop(box).resize(out, f))
    return res[..., None] if res.ndim == 2 else res


def _random_image(rng: np.random.Generator, big: bool) -> np.ndarray:
    w, h = (int(v) for v in rng.integers(1, 301 if big else 65, 2))
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _random_box(rng: np.random.Generator, w: int, h: int, kind: int) -> tuple[int, ...]:
    if kind == 0:  # scale 1.0: the full image
        return (0, 0, w, h)
    left, top = int(rng.integers(0, w)), int(rng.integers(0, h))
    right, bottom = int(rng.integers(left + 1, w + 1)), int(rng.integers(top + 1, h + 1))
    if kind == 1:  # touching the right/bottom borders
        right, bottom = w, h
    elif kind == 2:  # touching the left/top borders
        left, top = 0, 0
    return (left, top, right, bottom)


def _out_size(rng: np.random.Generator, kind: int) -> tuple[int, int]:
    square = int(rng.choice([224, 32, 7, 1, 2, 3]))
    if kind == 0:
        return (square, square)
    return (int(rng.integers(1, 97)), int(rng.integers(1, 97)))


def _golden_batches(seed: int, batches: int, per_batch: int):
    """(images, boxes, out size, filters) batches covering every resize shape."""
    rng = np.random.default_rng(seed)
    for b in range(batches):
        out = _out_size(rng, b % 3)
        images, boxes, filters = [], [], []
        for i in range(per_batch):
            a = _random_image(rng, big=(b * per_batch + i) % 41 == 0)
            h, w = a.shape[:2]
            if i == 0 and out[0] <= w and out[1] <= h:  # same size: a plain crop
                left, top = (
                    int(rng.integers(0, w - out[0] + 1)),
                    int(rng.integers(0, h - out[1] + 1)),
                )
                box = (left, top, left + out[0], top + out[1])
            else:
                box = _random_box(rng, w, h, int(rng.integers(0, 4)))
            images.append(a)
            boxes.append(box)
            filters.append(int(rng.choice(ALL_FILTERS, p=FILTER_WEIGHTS)))
        yield images, boxes, out, filters


@pytest.mark.parametrize("device", DEVICES)
def test_crop_resize_matches_pillow(device: str) -> None:
    cases = mismatched = 0
    orders = set()
    for images, boxes, out, filters in _golden_batches(seed=2024, batches=130, per_batch=8):
        views = [rs.crop_resize_taps(b, out, f) for b, f in zip(boxes, filters, strict=True)]
        orders.update(v.vertical_first for v in views)
        got = _render(images, views, device)
        for i, (a, box, f) in enumerate(zip(images, boxes, filters, strict=True)):
            cases += 1
            if not np.array_equal(got[i], _pillow(a, box, out, f)):
                mismatched += 1
                print(f"mismatch: image {a.shape} box {box} -> {out} filter {f}")
    assert cases >= 1000
    assert orders == {False, True}
    assert mismatched == 0


def test_imagenet_like_views_match_pillow() -> None:
    """RandomResizedCrop-like views of ~500x375 images to 224, bicubic and bilinear."""
    rng = np.random.default_rng(7)
    images, views, refs = [], [], []
    for i in range(24):
        w, h = (500, 375) if i % 2 else (int(rng.integers(300, 520)), int(rng.integers(240, 520)))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cw, ch = int(rng.integers(40, w + 1)), int(rng.integers(40, h + 1))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        box, f = (left, top, left + cw, top + ch), [rs.BICUBIC, rs.BILINEAR][i % 3 == 0]
        images.append(a)
        views.append(rs.crop_resize_taps(box, (224, 224), f))
        refs.append(_pillow(a, box, (224, 224), f))
    got = _render(images, views, "cpu")
    for i, ref in enumerate(refs):
        np.testing.assert_array_equal(got[i], ref)


def test_pass_order_boundary() -> None:
    """Both shrinking: vertical first exactly when the height loses > 2x the width's pixels."""
    rng = np.random.default_rng(11)
    images, views, refs, orders = [], [], [], []
    for i in range(60):
        w = int(rng.integers(20, 120))
        ow = int(rng.integers(2, w))
        oh = int(rng.integers(2, 60))
        h = oh + 2 * (w - ow) + (i % 3 - 1)  # one pixel under, at, over the tie
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        v = rs.crop_resize_taps((0, 0, w, h), (ow, oh), rs.BICUBIC)
        assert v.vertical_first == (i % 3 == 2)
        got = _render([a], [v], "cpu")[0]
        np.testing.assert_array_equal(got, _pillow(a, (0, 0, w, h), (ow, oh), rs.BICUBIC))
        images.append(a)
        views.append(v)
        refs.append(got)
        orders.append(v.vertical_first)
    # the opposite order really differs somewhere, so the rule is exercised
    flipped = [rs.ViewTaps(v.x, v.y, not v.vertical_first) for v in views]
    assert any(
        not np.array_equal(_render([a], [f], "cpu")[0], r)
        for a, f, r in zip(images, flipped, refs, strict=True)
    )


def test_pass_order_quadrants() -> None:
    assert rs._pass_order((100, 100), (120, 50))  # height shrinks, width grows
    assert not rs._pass_order((100, 100), (50, 120))  # only the width shrinks
    assert not rs._pass_order((10, 10), (100, 20))  # both grow
    assert rs._pass_order((50, 500000), (40, 1000))  # Pillow's tall-image case
    assert not rs._pass_order((300, 400), (100, 100))  # 200 > 2 * 100 is false


def test_grayscale_matches_pillow() -> None:
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, (int(h), int(w), 1), dtype=np.uint8) for h, w in [(37, 50), (64, 9)]
    ]
    boxes = [(3, 1, 50, 30), (0, 5, 9, 64)]
    for f in (rs.BICUBIC, rs.NEAREST):
        views = [rs.crop_resize_taps(b, (17, 23), f) for b in boxes]
        got = _render(images, views, "cpu")
        for i, (a, b) in enumerate(zip(images, boxes, strict=True)):
            np.testing.assert_array_equal(got[i], _pillow(a, b, (17, 23), f))


_TV_MODES = {
    rs.BICUBIC: tv.InterpolationMode.BICUBIC,
    rs.BILINEAR: tv.InterpolationMode.BILINEAR,
    rs.NEAREST: tv.InterpolationMode.NEAREST,
}


@pytest.mark.parametrize("device", DEVICES)
def test_eval_resize_center_crop_matches_torchvision(device: str) -> None:
    """timm's eval transform: Resize(S) (shorter side) then CenterCrop, on PIL images."""
    rng = np.random.default_rng(5)
    for resize, crop, f in [(256, 224, rs.BICUBIC), (36, 32, rs.BILINEAR), (9, 7, rs.NEAREST)]:
        transform = tv.Compose([tv.Resize(resize, _TV_MODES[f]), tv.CenterCrop(crop)])
        images, views, refs = [], [], []
        for i in range(16):
            if i == 0:  # already at the target size: torchvision skips the resize
                w, h = resize, resize + int(rng.integers(0, 40))
            else:
                w, h = (int(v) for v in rng.integers(max(2, resize // 4), 2 * resize + 40, 2))
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            images.append(a)
            views.append(rs.eval_taps((w, h), resize, (crop, crop), f))
            refs.append(np.asarray(transform(Image.fromarray(a))))
        got = _render(images, views, device)
        for i, ref in enumerate(refs):
            np.testing.assert_array_equal(got[i], ref)


def test_tv_resize_size_matches_torchvision() -> None:
    from torchvision.transforms.functional import _compute_resized_output_size

    for w, h in [(500, 375), (375, 500), (256, 256), (1, 300), (299, 3)]:
        new_h, new_w = _compute_resized_output_size((h, w), [256])
        assert rs.tv_resize_size((w, h), 256) == (new_w, new_h)


def test_plan_checks() -> None:
    with pytest.raises(ValueError, match="same output size"):
        rs.stack_taps([rs.crop_resize_taps((0, 0, 9, 9), s, rs.BICUBIC) for s in [(4, 4), (5, 4)]])
    with pytest.raises(ValueError, match="empty"):
        rs.crop_resize_taps((3, 0, 3, 9), (4, 4), rs.BICUBIC)
    plan = rs.stack_taps([rs.crop_resize_taps((0, 0, 9, 9), (4, 4), rs.BICUBIC)])
    with pytest.raises(ValueError, match="uint8"):
        rs.resize_batch(torch.zeros((1, 9, 9, 3)), plan)
