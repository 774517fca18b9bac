"""The device stage: views rendered by the tensor kernels are the bytes Pillow renders (the
host path), whatever the recipe, batch or device, and stores made before it still replay."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deit_pipe.cli import main
from deit_pipe.data import (
    ViewConfig,
    collate_views,
    finish,
    open_source,
    stored_views,
    train_transform,
)
from deit_pipe.data.device.render import Later, covered, defer, fingerprints, realize
from deit_pipe.data.loaders.dataset import PairDataset
from deit_pipe.data.plan.epoch import MixConfig, plan
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.views.host import apply_host
from deit_pipe.data.views.params import ViewDrawer
from tests.dispatch_utils import _READ_BACKS, DEVICES, _Dispatched, _watch_blocking_copies
from tests.helpers import deferred_batch

RECIPES = {
    "deit": dict(input_size=32),
    "random-interp-vflip": dict(input_size=20, interpolation="random", vflip=0.5),
    "aa-original-nearest": dict(input_size=16, auto_augment="original", interpolation="nearest"),
    "aa-v0-bilinear": dict(input_size=16, auto_augment="v0", interpolation="bilinear"),
    "jitter": dict(input_size=16, auto_augment=None, color_jitter=0.4),
    "augmix-on-host": dict(input_size=16, auto_augment="augmix-m3-w2"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(RECIPES))
def test_device_views_are_pillows_bytes(name, device):
    """Random images of assorted sizes (crops touching borders, upscales, thin images that
    take the centre-crop fallback), one batch per recipe: every byte equal."""
    cfg = ViewConfig(**RECIPES[name])
    drawer = ViewDrawer(train_transform(cfg))
    rng = np.random.default_rng(len(name))
    items, expected = [], []
    for seed in range(96):
        h, w = (int(v) for v in rng.integers(2, 72, 2))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        view, boxes = defer(img, seed, drawer, cfg)
        expected.append(apply_host(img, drawer.draw(seed, w, h)[0]))
        items.append(view)
    batch = realize(deferred_batch(items), torch.device(device))
    assert torch.equal(batch.image.cpu(), torch.stack(expected)), name
    # AugMix's mixing is not a kernel: those views ride along rendered by Pillow.
    assert (batch.host_rendered == len(items)) == (name == "augmix-on-host")
    assert all(covered(v.params) for v in items if v.params is not None)


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_rendered_on_the_device_is_the_host_batch(device):
    """Through the dataset: same pixels, same fingerprints, same finishing parameters."""
    split = open_source("digits").split("train")
    cfg = ViewConfig(input_size=32, re_count=2)
    epoch_plan = plan(3, 1, len(split), 3, MixConfig(), 32)
    host = PairDataset(split, epoch_plan, cfg)
    dev = PairDataset(split, epoch_plan, cfg, render="device")
    a = collate_views([host[p] for p in range(24)])
    b = realize(collate_views([dev[p] for p in range(24)]), torch.device(device))
    assert torch.equal(a.image, b.image.cpu())
    for key in ("slot", "seed", "erase", "mix", "lam", "box", "fingerprint"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_stage_is_split_by_pixels_and_stays_the_host_batch(device, monkeypatch):
    """Images of very different sizes, the kernels' budget made small: the batch runs in
    waves each under the budget (a view over it alone renders on the host), and the bytes
    are the host batch's: the kernels' memory does not grow with the largest image."""
    import deit_pipe.data.device.render as render_module
    from deit_pipe.data.device.render import prepare, view_cost

    monkeypatch.setattr(render_module, "WAVE_PIXELS", 4 * 48 * 48)
    rng = np.random.default_rng(5)
    sizes = [(8, 8), (120, 40), (40, 120), (16, 16), (200, 200), (12, 30), (64, 64), (9, 90)]
    cfg = ViewConfig(input_size=16)
    drawer = ViewDrawer(train_transform(cfg))
    views, expected = [], []
    for seed, (w, h) in enumerate(sizes * 3):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        views.append(defer(img, seed, drawer, cfg)[0])
        expected.append(apply_host(img, drawer.draw(seed, w, h)[0]))
    prepared = prepare(list(views))
    assert len(prepared["waves"]) > 1 and prepared["kernel_views"] < len(views)  # split
    for wave in prepared["waves"]:
        n, hmax, wmax = len(wave["index"]), *wave["crops"].shape[1:3]
        assert n * view_cost((hmax, wmax), (16, 16)) <= 4 * 48 * 48, (n, hmax, wmax)
    done = realize(deferred_batch(list(views)), torch.device(device))
    assert torch.equal(done.image.cpu(), torch.stack(expected))


_READ_BACKS |= {"masked_select", "_unique2", "unique_dim", "unique_consecutive"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [n for n in RECIPES if "nearest" not in n])
def test_the_device_stage_and_finishing_wait_for_nothing(name, device, monkeypatch):
    """From the loader's batch to the forward pass, the device stage (resize, flips, the
    auto-augment ops, jitter) and finishing (normalize, erasing, mixup and cutmix) read
    nothing back and move host data only without waiting, so the host queues work ahead
    of the device instead of waiting on it. The fingerprints' read-back is the one copy
    back, and `wait=False` leaves it pending. (Affine ops with the nearest filter compute
    their maps on the host; timm's auto-augment draws bilinear or bicubic.)"""
    cfg = ViewConfig(**{**RECIPES[name], "input_size": 24, "re_prob": 0.7, "re_count": 2})
    split = open_source("digits").split("train")
    epoch_plan = plan(1, 1, len(split), 1, MixConfig(), 24)
    dev = PairDataset(split, epoch_plan, cfg, render="device")
    batch = collate_views([dev[p] for p in range(48)])
    assert bool((batch.mix != 0).any()) and bool((batch.erase[..., 2] > 0).any())
    host = collate_views([PairDataset(split, epoch_plan, cfg)[p] for p in range(48)])
    expected = finish(host, cfg, torch.device("cpu"))
    copies = _watch_blocking_copies(monkeypatch)
    with _Dispatched() as seen:
        done = realize(batch, torch.device(device), wait=False)
        views = finish(done, cfg, torch.device(device))
    monkeypatch.undo()
    assert not seen.ops & _READ_BACKS, sorted(seen.ops & _READ_BACKS)
    assert copies == []
    assert isinstance(done.fingerprint, Later)
    assert torch.equal(fingerprints(done), host.fingerprint)  # hashed after finishing
    assert torch.equal(views.cpu(), expected)


PINNED = json.loads((Path(__file__).parent / "data" / "plan3_fingerprints.json").read_text())


@pytest.mark.parametrize("render", ["host", "device"])
def test_views_made_before_explicit_draws_and_device_rendering_replay(render):
    """Fingerprints of digits views recorded with the plan-3 renderer at 7a3f7b4 (timm's
    transform drawing from swapped module RNGs), training and eval views: both paths give
    them back, bit for bit."""
    source = open_source("digits")
    for key, pinned in PINNED.items():
        _, split, epoch = key.split("/")
        views = stored_views(source, Recipe.from_dict(pinned["recipe"]), split, int(epoch), render)
        count = 64 if split == "train" else len(pinned["fingerprints"])
        batch = collate_views([views[i] for i in range(count)])
        if render == "device":
            batch = realize(batch, torch.device("cpu"))
        got = [f"{v & (2**64 - 1):016x}" for v in batch.fingerprint.tolist()]
        assert got == pinned["fingerprints"][: len(got)], key


def test_device_rendering_makes_the_same_store_and_replays_it_in_training(tmp_path, monkeypatch):
    """The precompute with --render device (two render processes) writes the store the host
    path writes; verify and training with --render device replay every view's fingerprint
    (a mismatch stops the run) and take the same steps as --render host."""
    from dataclasses import replace

    from deit_pipe.data.device.render import device_pixels
    from deit_pipe.pipeline.precompute import precompute
    from deit_pipe.pipeline.request import StoreRequest
    from deit_pipe.pipeline.tasks import Job
    from deit_pipe.storage import TargetStore
    from deit_pipe.student import loader as loader_module
    from deit_pipe.student.train import train
    from tests.train_utils import RECIPE, TEACHER, base_cfg, losses

    rendered = []  # batch sizes the device path rendered: proof that it ran

    def counting(batch, device, **kw):  # the training loader's batches
        if batch.device_views is not None:
            rendered.append(batch.device_views["count"])
        return device_pixels(batch, device, **kw)

    monkeypatch.setattr(loader_module, "device_pixels", counting)
    url = str(tmp_path / "s.zarr")
    job = Job(url=url, data="digits", recipe=RECIPE, teacher=TEACHER, batch_size=256)
    request = StoreRequest(epochs=1, k=5, shard_views=512)
    assert precompute(job, request, workers=0).kernel_views == 0  # auto: the host on a CPU
    # The teacher's views rendered by the kernels in two render processes: the same store.
    twin = str(tmp_path / "twin.zarr")
    made = precompute(replace(job, url=twin, render="device", loader_workers=2), request, workers=0)
    assert made.kernel_views == made.views > 0  # train and val: every view through the kernels
    ours, theirs = (
        TargetStore(url).read_arrays(0, "train"),
        TargetStore(twin).read_arrays(0, "train"),
    )
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours) and len(ours) == 4
    # verify re-renders through the kernels, as the run below will: every checked view equal
    checked = CliRunner().invoke(
        main, ["verify", url, "--render", "device", "--sample", "200", "--loader-workers", "0"]
    )
    assert checked.exit_code == 0, checked.output
    assert "OK: 400 views re-rendered" in checked.output and "0 differ" in checked.output
    for render in ("host", "device"):
        train(base_cfg(tmp_path / render, store=url, distill="hard", max_steps=3, render=render))
    host, device = losses(tmp_path / "host"), losses(tmp_path / "device")
    assert len(host) == len(device) == 3 and rendered == [128] * 3
    for a, b in zip(host, device, strict=True):
        assert (a["loss"], a["slots_sum"]) == (b["loss"], b["slots_sum"])
    # audit's replayed training views (fingerprints checked) give the host path's agreement
    reports = {}
    for render in ("host", "device"):
        out = tmp_path / f"audit-{render}"
        args = ["audit", "--store", url, "--run", str(tmp_path / "device"), "--out", str(out)]
        done = CliRunner().invoke(main, [*args, "--train-views", "64", "--render", render])
        assert done.exit_code == 0, done.output
        reports[render] = json.loads((out / "agreement.json").read_text())
    assert reports["host"]["train_view_agreement"] == reports["device"]["train_view_agreement"]
    assert next(iter(reports["device"]["train_view_agreement"].values()))["views"] > 0
    # eval's clean views through the kernels: the same numbers
    scores = [
        CliRunner()
        .invoke(
            main, ["eval", "--checkpoint", str(tmp_path / "device"), "--json", "--render", render]
        )
        .output
        for render in ("host", "device")
    ]
    assert json.loads(scores[0])["heads"] == json.loads(scores[1])["heads"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_eval_views_on_the_device_are_timms_eval_views(interpolation, device):
    """timm's eval transform (resize the shorter side to input/crop_pct, centre crop) on
    images of assorted sizes and aspect ratios, including ones smaller than the view."""
    from deit_pipe.data.device.render import defer_eval
    from deit_pipe.data.views.host import eval_transform

    cfg = ViewConfig(input_size=24, interpolation=interpolation, crop_pct=0.9)
    rng = np.random.default_rng(5)
    views, expected = [], []
    for _ in range(48):
        h, w = (int(v) for v in rng.integers(3, 90, 2))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        views.append(defer_eval(img, cfg))
        expected.append(eval_transform(cfg)(img).permute(1, 2, 0))
    batch = realize(deferred_batch(views), torch.device(device))
    assert torch.equal(batch.image.cpu(), torch.stack(expected))
    assert batch.host_rendered == 0


def test_render_mode_auto_starts_on_the_host():
    from deit_pipe.data.device.render import render_mode
    from deit_pipe.errors import DeitPipeError

    assert render_mode("auto", torch.device("cpu")) == "host"
    assert render_mode("auto", torch.device("cuda")) == "host"
    assert render_mode("device", torch.device("cpu")) == "device"
    with pytest.raises(DeitPipeError, match="--render must be one of auto, host, device"):
        render_mode("gpu", torch.device("cpu"))


def test_precompute_says_how_many_views_the_kernels_rendered(tmp_path):
    args = ["precompute", "--data", "digits", "--out", str(tmp_path / "s.zarr"), "--epochs", "1"]
    args += ["--teacher-model", "regnety_002", "--teacher-random-init", "--dask-workers", "0"]
    device = CliRunner().invoke(main, [*args, "--render", "device"])
    assert device.exit_code == 0, device.output
    assert "rendered by the kernels: 1,797" in " ".join(device.output.split())  # train + val
    host = CliRunner().invoke(main, [*args[:4], str(tmp_path / "h.zarr"), *args[5:]])
    assert host.exit_code == 0 and "kernels" not in host.output, host.output
