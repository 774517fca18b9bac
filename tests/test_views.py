import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from torch.utils.data import DataLoader

from deit_pipe.data import (
    MixConfig,
    PairDataset,
    RunSampler,
    ViewConfig,
    collate_views,
    fingerprint,
    finish,
    open_source,
    plan,
    render,
    train_transform,
)
from deit_pipe.data.loaders.dataset import EvalDataset
from deit_pipe.data.plan.epoch import MIX_CUTMIX, MIX_MIXUP
from deit_pipe.data.views.batch import ViewBatch
from deit_pipe.data.views.host import erasing_boxes
from deit_pipe.data.views.params import ViewDrawer

CFG = ViewConfig(input_size=32, hflip=0.0)
N_PAIRS = 24


@pytest.fixture(scope="module")
def dataset():
    split = open_source("digits").split("train")
    return PairDataset(split, plan(0, 1, len(split), 3, MixConfig(), 32), CFG)


def _fingerprints(ds, order, workers=0):
    loader = DataLoader(
        ds, batch_size=4, sampler=order, num_workers=workers, collate_fn=collate_views
    )
    out = {}
    for batch in loader:
        out.update(zip(batch.slot.tolist(), batch.fingerprint.tolist(), strict=True))
    return out


def test_same_fingerprints_whatever_the_loader_or_order(dataset):
    forward = _fingerprints(dataset, list(range(N_PAIRS)))
    assert len(forward) == 2 * N_PAIRS and len(set(forward.values())) == 2 * N_PAIRS
    assert _fingerprints(dataset, list(reversed(range(N_PAIRS)))) == forward
    shuffled = list(range(N_PAIRS))
    random.Random(7).shuffle(shuffled)
    assert _fingerprints(dataset, shuffled, workers=2) == forward
    assert _fingerprints(dataset, list(range(N_PAIRS)), workers=2) == forward


def test_same_fingerprints_in_a_fresh_process(dataset):
    expected = _fingerprints(dataset, list(range(4)))
    code = (
        "import json; from deit_pipe.data import *;"
        "s = open_source('digits').split('train');"
        "ds = PairDataset(s, plan(0, 1, len(s), 3, MixConfig(), 32),"
        " ViewConfig(input_size=32, hflip=0.0));"
        "b = collate_views([ds[p] for p in range(4)]);"
        "print(json.dumps(dict(zip(b.slot.tolist(), b.fingerprint.tolist()))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert {int(k): v for k, v in json.loads(out.stdout).items()} == expected


def test_run_sampler_feeds_each_rank_its_slots_across_epochs():
    from deit_pipe.data.plan.epoch import steps_per_epoch

    batch, slots = 8, 100
    per_epoch = steps_per_epoch(slots, batch)
    seen = [list(RunSampler(slots, batch, 2 * per_epoch, world_size=2, rank=r)) for r in (0, 1)]
    for step in range(2 * per_epoch):
        epoch, in_epoch = divmod(step, per_epoch)
        both = seen[0][step] + seen[1][step]
        assert {e for e, _ in both} == {epoch}
        assert sorted(p for _, p in both) == list(range(in_epoch * 4, in_epoch * 4 + 4))
    resumed = RunSampler(slots, batch, per_epoch, start_step=5)
    assert next(iter(resumed)) == [(0, 20), (0, 21), (0, 22), (0, 23)]


def test_render_restores_caller_rng_state():
    img = open_source("digits").split("train").load(0)
    tf = train_transform(CFG)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    before = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    render(img, 12345, ViewDrawer(tf), CFG)
    render(img, 2**64 - 1, ViewDrawer(tf), CFG)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before


def test_render_depends_only_on_the_seed():
    img = open_source("digits").split("train").load(3)
    (a, boxes), (b, _) = (render(img, 99, ViewDrawer(train_transform(CFG)), CFG) for _ in range(2))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == (32, 32, 3)
    other, _ = render(img, 100, ViewDrawer(train_transform(CFG)), CFG)
    assert fingerprint(a, boxes) == fingerprint(b, boxes) != fingerprint(other, boxes)
    assert fingerprint(a, boxes) != fingerprint(a, boxes + 1)  # parameters count too


def test_erasing_boxes_are_timms_draws():
    """Same generator state → the boxes timm's RandomErasing erases (its probability, count,
    area/aspect retries and placement, in its order)."""
    from timm.data import random_erasing

    for count in (1, 3):
        cfg = ViewConfig(input_size=32, re_prob=0.5, re_count=count, re_mode="const")
        eraser = random_erasing.RandomErasing(0.5, mode="const", max_count=count, device="cpu")
        erased = 0
        for seed in range(300):
            random.seed(seed)
            img = torch.ones(3, 32, 24)
            eraser(img)
            boxes = erasing_boxes(random.Random(seed), cfg, 32, 24)
            expected = torch.ones(3, 32, 24)
            for top, left, h, w in boxes:
                expected[:, top : top + h, left : left + w] = 0
            assert torch.equal(img, expected), seed
            erased += bool(boxes[:, 2].any())
        assert 100 < erased < 200


def _batch(images: torch.Tensor, **params) -> ViewBatch:
    """A rendered batch around NCHW `images` (carried NHWC, as rendering makes them)."""
    n = len(images)
    batch = {
        "image": images.permute(0, 2, 3, 1).contiguous(),
        "erase": torch.zeros(n, 1, 4, dtype=torch.int32),
        "seed": torch.arange(n, dtype=torch.int64),
        "mix": torch.zeros(n, dtype=torch.int64),
        "lam": torch.tensor([[1.0, 0.0]] * n),
        "box": torch.zeros(n, 4, dtype=torch.int32),
        "slot": torch.arange(n),
    }
    return ViewBatch(**{**batch, **params})


def test_finish_normalizes_as_timms_prefetcher():
    cfg = ViewConfig(input_size=8)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor([m * 255 for m in cfg.mean]).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in cfg.std]).view(1, 3, 1, 1)
    out = finish(_batch(images), cfg, torch.device("cpu"))
    assert torch.equal(out, images.float().sub_(mean).div_(std))


def test_finish_mixes_both_halves_of_each_pair():
    cfg = ViewConfig(input_size=8, mean=(0, 0, 0), std=(1 / 255,) * 3)  # finish = identity
    images = torch.tensor([0, 1, 0, 1], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 8, 8)
    mix = torch.tensor([MIX_MIXUP, MIX_MIXUP, MIX_CUTMIX, MIX_CUTMIX])
    lam = torch.tensor([[0.25, 0.75]] * 2 + [[0.75, 0.25]] * 2)
    box = torch.tensor([[0, 0, 0, 0]] * 2 + [[0, 4, 0, 4]] * 2, dtype=torch.int32)
    out = finish(_batch(images, mix=mix, lam=lam, box=box), cfg, torch.device("cpu"))
    assert torch.equal(out[0], torch.full((3, 8, 8), 0.75))
    assert torch.equal(out[1], torch.full((3, 8, 8), 0.25))
    assert out[2].sum() == 3 * 16 and out[3].sum() == 3 * 48


def test_finish_erases_the_drawn_boxes_with_noise():
    cfg = ViewConfig(input_size=16, re_mode="pixel", re_count=2)
    images = torch.full((3, 3, 16, 16), 128, dtype=torch.uint8)
    erase = torch.zeros(3, 2, 4, dtype=torch.int32)
    erase[0, 0] = torch.tensor([2, 3, 5, 4])
    erase[2, 1] = torch.tensor([0, 0, 16 - 1, 6])
    out = finish(_batch(images, erase=erase), cfg, torch.device("cpu"))
    clean = finish(_batch(images), cfg, torch.device("cpu"))
    changed = (out != clean).any(dim=1)
    assert changed[0].sum() == 5 * 4 and changed[0, 2:7, 3:7].all()
    assert not changed[1].any() and changed[2].sum() == 15 * 6
    assert not torch.equal(out[0, :, 2:7, 3:7], out[2, :, 2:7, 3:7])  # each view its own noise


def test_posterize_to_zero_bits_gives_black_not_an_error():
    """Pillow 13 refuses 0 bits; DeiT's rand-m9-mstd0.5-inc1 reaches it at magnitude 10."""
    tf = train_transform(ViewConfig(input_size=32))
    ra = next(t for t in tf.transforms if isinstance(t, timm_aa.RandAugment))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    img = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    assert np.asarray(op(img)).max() == 0
    op.magnitude = 5  # other magnitudes keep timm's own behaviour
    assert np.asarray(op(img)).max() > 0
    # Many views under the real recipe never raise.
    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
    for seed in range(600):
        render(pixels, seed, ViewDrawer(tf), CFG)


def test_eval_views_are_clean_and_deterministic():
    split = open_source("digits").split("val")
    ds = EvalDataset(split, CFG)
    a, b = collate_views([ds[0]]), collate_views([ds[0]])
    assert torch.equal(a.image, b.image) and a.image.shape == (1, 32, 32, 3)


def test_other_threads_drawing_random_numbers_do_not_change_views(dataset):
    """dask's event loop draws from the global `random` while a task renders."""
    import threading

    expected = _fingerprints(dataset, list(range(8)))
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            random.random(), np.random.rand(), random.gauss(0, 1)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            assert _fingerprints(dataset, list(range(8))) == expected
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_render_never_touches_the_global_python_and_numpy_rngs():
    img = open_source("digits").split("train").load(0)
    tf = train_transform(ViewConfig(input_size=32))
    py, npy = random.getstate(), np.random.get_state()
    for seed in range(50):
        render(img, seed, ViewDrawer(tf), CFG)
    assert random.getstate() == py
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        for a, b in zip(np.random.get_state(), npy, strict=True)
    )


def test_erasing_noise_is_one_function_on_numpy_and_torch_lanes():
    """The CPU computes the noise hash on NumPy uint32 lanes, other devices on torch int64
    lanes: the same integers, so the same bits (CUDA itself: test_portability.py)."""
    from deit_pipe.data.device.finish import _lanes_numpy, _lanes_torch, noise_keys

    keys = noise_keys(torch.tensor([0, 1, -1, 2**62 + 12345], dtype=torch.int64), 1)
    index = torch.arange(0, 3 * 224 * 224, 7)
    for key in keys:
        k = key.expand(len(index))
        assert torch.equal(_lanes_numpy(k, index), _lanes_torch(k.clone(), index))


def test_randaugment_draws_its_ops_uniformly_from_the_view_generator():
    """timm's RandAugment picks its ops with `np.random.choice`; deit-pipe draws them from the
    view's own generator: uniform over the ops, reproducible per seed, distinct across seeds."""
    tf = train_transform(CFG)
    ra = next(t for t in tf.transforms if isinstance(t, timm_aa.RandAugment))
    names = [op.name for op in ra.ops]
    drawer, counts, picks = ViewDrawer(tf), np.zeros(len(names)), []
    for seed in range(3000):
        ops = drawer.draw(seed, 32, 32)[0].ops
        for op in ops:
            counts[names.index(op.name)] += 1
        picks.append(ops)
    expected = 3000 * ra.num_layers * 0.5 / len(names)  # each picked op applies with p=0.5
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    assert drawer.draw(7, 32, 32)[0].ops == picks[7] and len(set(picks)) > 150
