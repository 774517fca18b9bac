"""Explicit view parameters: deit-pipe's own draws render exactly what timm's transform
renders when it draws from generators seeded with the view seed (the plan-3 views)."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from torchvision.transforms import transforms as tv_transforms

from deit_pipe.data import ViewConfig, train_transform
from deit_pipe.data.views.host import render
from deit_pipe.data.views.params import ViewDrawer
from deit_pipe.data.views.reference import timm_view
from deit_pipe.errors import PlanError

RECIPES = {
    "deit": dict(input_size=32),
    "small-bilinear": dict(input_size=24, scale=(0.35, 1.0), interpolation="bilinear"),
    "random-interp-vflip": dict(input_size=20, interpolation="random", vflip=0.5, re_count=3),
    "jitter-no-aa": dict(input_size=16, auto_augment=None, color_jitter=0.4),
    "aa-original": dict(input_size=16, auto_augment="original"),
    "aa-v0-nearest": dict(input_size=16, auto_augment="v0", interpolation="nearest"),
    "weighted-n3": dict(input_size=16, auto_augment="rand-m9-n3-mstd1-tweights"),
    "uniform-mag": dict(input_size=16, auto_augment="rand-m7-mstd101-inc0"),
    "augmix": dict(input_size=16, auto_augment="augmix-m5-w3"),
    "augmix-blended": dict(input_size=16, auto_augment="augmix-m3-w2-d2-b1"),
    "3a": dict(input_size=16, auto_augment="3a"),
}


def _images(n: int, rng: np.random.Generator):
    """Random RGB images of assorted sizes (thin ones trigger the centre-crop fallback)."""
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(4, 48, 2))
        if rng.random() < 0.1:
            w = int(rng.integers(1, 4))
        yield Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", list(RECIPES))
def test_drawn_views_are_timms_views(name):
    cfg = ViewConfig(**RECIPES[name])
    tf = train_transform(cfg)
    drawer = ViewDrawer(tf)
    n = 1500 if name == "deit" else 250
    rng = np.random.default_rng(len(name))
    for i, img in enumerate(_images(n, rng)):
        seed = int(rng.integers(0, 2**63)) * 2 + (i % 2)  # 64-bit seeds
        expected, expected_boxes = timm_view(img, seed, tf, cfg)
        pixels, boxes = render(img, seed, drawer, cfg)
        assert torch.equal(pixels, expected), (name, seed, img.size)
        assert np.array_equal(boxes, expected_boxes), (name, seed)


def test_draws_cover_every_op_and_magnitude_range():
    """Over many seeds the DeiT recipe draws every op of its set, both signs, and the
    magnitude clamps (0 and 10) that make posterize keep no bits."""
    tf = train_transform(ViewConfig(input_size=32))
    drawer = ViewDrawer(tf)
    seen, signs = set(), set()
    for seed in range(4000):
        for op in drawer.draw(seed, 40, 30)[0].ops:
            seen.add(op.name)
            if op.name == "Rotate":
                signs.add(op.args[0] > 0)
    ra = next(t for t in tf.transforms if isinstance(t, timm_aa.RandAugment))
    assert seen == {op.name for op in ra.ops} and signs == {True, False}


def test_an_unsupported_transform_is_one_line():
    with pytest.raises(PlanError, match="GaussianBlur.*not supported"):
        ViewDrawer(tv_transforms.Compose([tv_transforms.GaussianBlur(3)]))


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_one_pixel_wide_images_render_as_timm_renders_them_on_both_paths(tmp_path, kind):
    """timm's crop of a 1×1 or 2×1 image can be empty (Pillow resizes it to black): the host
    path (JPEG crops decoded alone) and the device path give timm's bytes."""
    import io

    from deit_pipe.data import collate_views
    from deit_pipe.data.decode.jpeg import open_image
    from deit_pipe.data.device.render import defer, realize

    cfg = ViewConfig(input_size=16)
    tf = train_transform(cfg)
    drawer = ViewDrawer(tf)
    for size in ((1, 1), (2, 1), (1, 2), (1, 7)):
        pixels = np.random.default_rng(size).integers(0, 256, (size[1], size[0], 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=kind.upper())
        img = open_image(buf.getvalue(), f"tiny.{kind}")
        decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        for seed in range(40):
            expected, _ = timm_view(decoded, seed, tf, cfg)
            host, boxes = render(img, seed, drawer, cfg)
            assert torch.equal(host, expected), (size, seed)
            view, _ = defer(img, seed, drawer, cfg)
            item = {
                "device_views": [view], "erase": boxes[None], "slot": np.zeros(1, np.int64),
                "seed": np.array([seed], np.int64), "mix": np.zeros(1, np.int64),
                "lam": np.ones((1, 2)), "box": np.zeros((1, 4), np.int64),
            }  # fmt: skip
            device = realize(collate_views([item]), torch.device("cpu")).image[0]
            assert torch.equal(device, expected), (size, seed, "device")
