"""Golden test: every auto-augment op kernel against the pinned Pillow, byte for byte.

Each op runs on batches of random images (1x1 up to 224x224, several kinds of content so
the histogram ops see narrow, flat and few-valued bands) through the batched kernel, and
each view is compared with timm's aug_fn called on the Pillow image with the same
arguments, as deit-pipe's host renderer calls it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa

from deit_pipe.data.device.kernels import affine, enhance, pointops
from deit_pipe.data.views.ops import posterize as _posterize

pytestmark = pytest.mark.skipif(
    PIL.__version__ != "13.0.0", reason=f"golden against Pillow 13.0.0, not {PIL.__version__}"
)

SIZES = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (3, 3), (4, 4), (5, 7), (7, 5), (13, 11)]
SIZES += [(32, 32), (31, 33), (17, 64), (64, 17), (9, 9), (6, 2)]
BATCH = 8
ROUNDS = 26  # batches per op: 26 * 8 = 208 views, plus the 224x224 batch
FILLS = [(124, 116, 104), (128, 128, 128), (0, 0, 0), (255, 3, 77)]
# The kernels are meant for the consuming device: run the golden test there too when present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RESAMPLES = [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.NEAREST]


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(5)
    if kind == 0:  # noise over the full range
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == 1:  # a narrow band of values per channel
        lo = rng.integers(0, 256, 3)
        hi = np.minimum(255, lo + rng.integers(0, 40, 3))
        return rng.integers(lo, hi + 1, (h, w, 3)).astype(np.uint8)
    if kind == 2:  # a few distinct values (flat and two-valued bands)
        palette = rng.integers(0, 256, (int(rng.integers(1, 4)), 3))
        return palette[rng.integers(0, len(palette), (h, w))].astype(np.uint8)
    if kind == 3:  # a smooth gradient with a little noise, like a photo
        yy, xx = np.mgrid[0:h, 0:w]
        base = (xx * 255 / max(w, 1) + yy * 128 / max(h, 1))[..., None] * rng.uniform(0.3, 1, 3)
        return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # one constant channel
    img[..., int(rng.integers(3))] = rng.integers(0, 256)
    return img


def _pick(rng: np.random.Generator, specials: list, draw: Callable[[], object]) -> object:
    return specials[rng.integers(len(specials))] if rng.random() < 0.25 else draw()


# Per op: the PIL reference (timm's aug_fn), the batched kernel as
# kernel(imgs, args, resample, fill), and a drawer of timm's level args (rng, h, w) -> arg.
def _plain(fn: Callable) -> Callable:
    return lambda x, a, r, f: fn(x)


def _per_view(fn: Callable) -> Callable:
    return lambda x, a, r, f: fn(x, a)


def _geometric(fn: Callable) -> Callable:
    return lambda x, a, r, f: fn(x, a, r, f)


def _relative(fn: Callable, axis: int) -> Callable:
    """timm's translate_*_rel: pixels = pct * the image's width (axis 2) or height (1)."""
    return lambda x, a, r, f: fn(x, [affine.translate_rel(p, x.shape[axis]) for p in a], r, f)


def _real(specials: list[float], lo: float, hi: float, scale_by_width: bool = False):
    def draw(rng: np.random.Generator, h: int, w: int) -> float:
        k = w if scale_by_width else 1
        return float(_pick(rng, specials, lambda: rng.uniform(lo, hi) * k))

    return draw


def _integer(specials: list[int], lo: int, hi: int):
    return lambda rng, h, w: int(_pick(rng, specials, lambda: rng.integers(lo, hi + 1)))


ENHANCE = _real([0.0, 0.1, 1.0, 1.9, 2.0, 0.5], 0.0, 2.0)
SHEAR = _real([0.0, 0.3, -0.3], -0.3, 0.3)
ANGLE = _real([0.0, 30.0, -30.0, 90.0, -90.0, 180.0, 270.0, 360.0, 45.0, -3e-7], -30, 30)
PIXELS = _real([0.0, 250.0, -250.0, 1.0, -0.5], -1.2, 1.2, scale_by_width=True)
PCT = _real([0.0, 0.45, -0.45], -0.45, 0.45)

OPS: dict[str, tuple] = {
    "auto_contrast": (timm_aa.auto_contrast, _plain(pointops.autocontrast), None),
    "invert": (timm_aa.invert, _plain(pointops.invert), None),
    "equalize": (timm_aa.equalize, _plain(pointops.equalize), None),
    "posterize": (_posterize, _per_view(pointops.posterize), _integer([0, 8], 0, 8)),
    "solarize": (timm_aa.solarize, _per_view(pointops.solarize), _integer([0, 256], 0, 256)),
    "solarize_add": (
        timm_aa.solarize_add,
        _per_view(pointops.solarize_add),
        _integer([0, 110, 128], 0, 128),
    ),
    "color": (timm_aa.color, _per_view(enhance.color), ENHANCE),
    "contrast": (timm_aa.contrast, _per_view(enhance.contrast), ENHANCE),
    "brightness": (timm_aa.brightness, _per_view(enhance.brightness), ENHANCE),
    "sharpness": (timm_aa.sharpness, _per_view(enhance.sharpness), ENHANCE),
    "desaturate": (
        timm_aa.desaturate,
        lambda x, a, r, f: enhance.color(x, [enhance.desaturate_factor(v) for v in a]),
        _real([0.5, 1.0, 0.0], 0.5, 1.0),
    ),
    "rotate": (timm_aa.rotate, _geometric(affine.rotate), ANGLE),
    "shear_x": (timm_aa.shear_x, _geometric(affine.shear_x), SHEAR),
    "shear_y": (timm_aa.shear_y, _geometric(affine.shear_y), SHEAR),
    "translate_x_abs": (timm_aa.translate_x_abs, _geometric(affine.translate_x), PIXELS),
    "translate_y_abs": (timm_aa.translate_y_abs, _geometric(affine.translate_y), PIXELS),
    "translate_x_rel": (timm_aa.translate_x_rel, _relative(affine.translate_x, 2), PCT),
    "translate_y_rel": (timm_aa.translate_y_rel, _relative(affine.translate_y, 1), PCT),
}
AFFINE = {"rotate", "shear_x", "shear_y", "translate_x_abs", "translate_y_abs"}
AFFINE |= {"translate_x_rel", "translate_y_rel"}


def _batches(rng: np.random.Generator):
    """(h, w, count) of each batch: the fixed sizes, random ones, and one 224x224 batch."""
    for i in range(ROUNDS):
        h, w = SIZES[i] if i < len(SIZES) else tuple(int(v) for v in rng.integers(1, 49, 2))
        yield h, w, BATCH
    yield 224, 224, 3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_pillow(name: str, device: str) -> None:
    pil_fn, kernel, draw = OPS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    views = 0
    for h, w, count in _batches(rng):
        imgs = np.stack([_image(rng, h, w) for _ in range(count)])
        args = [draw(rng, h, w) for _ in range(count)] if draw else [None] * count
        kwargs = {}
        if name in AFFINE:
            kwargs = dict(resample=RESAMPLES[rng.integers(3)], fillcolor=FILLS[rng.integers(4)])
        batch = torch.from_numpy(imgs).to(device)
        got = kernel(batch, args, kwargs.get("resample"), kwargs.get("fillcolor")).cpu()
        for i in range(count):
            pil = Image.fromarray(imgs[i])
            ref = pil_fn(pil, *([] if args[i] is None else [args[i]]), **kwargs)
            want = np.asarray(ref)
            diff = int((got[i].numpy() != want).sum())
            assert diff == 0, f"{name} {h}x{w} arg={args[i]!r} {kwargs}: {diff} bytes differ"
            views += 1
    assert views >= 200


def test_batch_mixes_parameters_per_view() -> None:
    """One call with different parameters per view equals the views one by one."""
    rng = np.random.default_rng(7)
    imgs = torch.from_numpy(np.stack([_image(rng, 20, 24) for _ in range(6)]))
    degrees = [-30.0, -7.5, 0.0, 3.25, 18.0, 30.0]
    fill = torch.tensor([[124, 116, 104]] * 3 + [[1, 2, 3]] * 3, dtype=torch.uint8)
    together = affine.rotate(imgs, degrees, affine.BICUBIC, fill)
    for i in range(6):
        alone = affine.rotate(imgs[i : i + 1], degrees[i : i + 1], affine.BICUBIC, fill[i])
        assert torch.equal(together[i : i + 1], alone)
    bits = [0, 1, 4, 8, 3, 2]
    assert torch.equal(
        pointops.posterize(imgs, bits),
        torch.cat([pointops.posterize(imgs[i : i + 1], bits[i]) for i in range(6)]),
    )


def test_fill_color_matches_image_new() -> None:
    assert affine.fill_color((124, 116, 104)) == (124, 116, 104)
    assert affine.fill_color(128) == (128, 0, 0)  # an int is packed 0xBBGGRR for RGB
    assert affine.fill_color("red") == (255, 0, 0)
    assert affine.fill_color(None) == (0, 0, 0)


def _matrix(rng: np.random.Generator, h: int, w: int) -> tuple[float, ...]:
    """General affine maps: scalings (Pillow's ScaleAffine path under NEAREST), rotations
    with zoom, and huge shears past 16.16 fixed point (its float fallback)."""
    kind = rng.integers(3)
    if kind == 0:
        return (rng.uniform(-2, 2), 0.0, rng.uniform(-w, w), 0.0, rng.uniform(-2, 2), 0.0)
    if kind == 1:
        return tuple(rng.uniform(-1.5, 1.5, 6) * (1, 1, w, 1, 1, h))
    return (
        1.0,
        rng.choice([-1, 1]) * rng.uniform(3e4, 9e4),
        rng.uniform(-5e4, 5e4),
        rng.uniform(-1, 1),
        1.0,
        rng.uniform(-h, h),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resample", RESAMPLES)
def test_transform_affine_general_matrices(resample: int, device: str) -> None:
    rng = np.random.default_rng(int(resample) + 11)
    for h, w in [(1, 1), (3, 5), (8, 8), (19, 12)]:
        imgs = np.stack([_image(rng, h, w) for _ in range(10)])
        mats = [_matrix(rng, h, w) for _ in range(10)]
        batch = torch.from_numpy(imgs).to(device)
        got = affine.transform_affine(batch, mats, resample, FILLS[1]).cpu()
        for i, m in enumerate(mats):
            ref = Image.fromarray(imgs[i]).transform(
                (w, h), Image.Transform.AFFINE, m, resample, fillcolor=FILLS[1]
            )
            assert np.array_equal(got[i].numpy(), np.asarray(ref)), (h, w, m)
