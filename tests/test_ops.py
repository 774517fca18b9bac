"""The op table (`data/views/ops.py`): each auto-augment op's entry, walked draw → host →
kernel against timm's own level-to-arg and aug_fn and Pillow's bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa

from deit_pipe.data.device.augsteps import covered, run_steps, steps_of
from deit_pipe.data.views.ops import OPS, posterize
from deit_pipe.data.views.params import AugOp, ViewParams

HPARAMS = {"translate_const": 13, "translate_pct": 0.3, "img_mean": (124, 116, 104)}
LEVELS = [0.0, 1.7, 5.0, 9.0, 10.0]


def test_the_table_has_every_op_timm_names_and_no_other():
    assert set(OPS) == set(timm_aa.NAME_TO_OP) == set(timm_aa.LEVEL_TO_ARG)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_of_the_table_draws_renders_and_runs_as_timm(name):
    """Draw: the entry's args equal timm's LEVEL_TO_ARG with its coin flips from the same
    stream. Host: the entry's aug_fn is timm's (posterize made Pillow-proof). Kernel: the
    op on a batch row through `steps_of`/`run_steps` gives Pillow's bytes; an op without a
    kernel leaves its view to the host."""
    op, rng = OPS[name], np.random.default_rng(len(name))
    img = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    for level in LEVELS:
        for seed in range(4):
            random.seed(seed)  # timm's coin flips draw from the global stream
            to_arg = timm_aa.LEVEL_TO_ARG[name]  # None: the op takes no argument
            want = to_arg(level, HPARAMS) if to_arg else ()
            py = random.Random(seed)
            got = op.args(level, HPARAMS, py)
            assert got == tuple(want), (name, level, seed)
            applied, args = name, got
            if op.redraw is not None:
                applied, args = op.redraw(got, py)
            if timm_aa.NAME_TO_OP[name] is timm_aa.posterize:
                assert op.host is posterize
            else:
                assert op.host is timm_aa.NAME_TO_OP[name]
            resample = int(Image.Resampling.BILINEAR) if op.affine else 0
            host = OPS[applied].host(
                Image.fromarray(img), *args, fillcolor=(124, 116, 104), resample=resample
            )
            params = ViewParams(
                (0, 0, 23, 31), (23, 31), 3, False, False,
                (AugOp(applied, tuple(args), (124, 116, 104), resample),),
            )  # fmt: skip
            if OPS[applied].device is None:
                assert not covered(params)
                continue
            assert covered(params)
            out = run_steps(torch.from_numpy(img.copy())[None], steps_of([params]))
            assert np.array_equal(out[0].numpy(), np.asarray(host)), (name, level, seed)


def test_posterize_keeps_no_bits_as_black_where_pillow_refuses():
    img = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    assert np.asarray(posterize(img, 0)).max() == 0
    assert np.array_equal(np.asarray(posterize(img, 3)), np.asarray(timm_aa.posterize(img, 3)))
