"""JPEG crops that travel as DCT blocks (`data.device.jpegblocks`, `kernels.jpegdecode`): the
device's IDCT, upsampling and colour conversion give Pillow's bytes on every layout the
kernels cover; everything else, and every file libjpeg finds fault with, is decoded to
pixels on the host in the same batch; views and fingerprints do not depend on it."""

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from deit_pipe.data import ViewConfig, collate_views, open_source
from deit_pipe.data.decode import jpeg
from deit_pipe.data.decode.pillow import decode_image
from deit_pipe.data.device import jpegblocks
from deit_pipe.data.device.render import defer, prepare, realize
from deit_pipe.data.loaders.dataset import PairDataset
from deit_pipe.data.plan.epoch import MixConfig, plan
from deit_pipe.data.views.host import apply_host, train_transform
from deit_pipe.data.views.params import ViewDrawer
from deit_pipe.errors import DataError
from tests.dispatch_utils import _READ_BACKS, DEVICES, _Dispatched, _watch_blocking_copies
from tests.helpers import deferred_batch
from tests.jpeg_utils import KINDS, _boxes, _h1v2, _jpeg, _views, damaged_below, damaged_decodable


@pytest.fixture(autouse=True)
def blocks_on(monkeypatch):
    for name in ("DEIT_PIPE_JPEG_REGION", "DEIT_PIPE_JPEG_DCT"):
        monkeypatch.delenv(name, raising=False)
    jpeg._bound.cache_clear()
    jpegblocks.enabled.cache_clear()
    yield
    jpeg._bound.cache_clear()
    jpegblocks.enabled.cache_clear()


def _decoded(data: bytes, boxes: list, device: str = "cpu") -> tuple[list, list[int]]:
    """`boxes` of one file through pack and unpack: the crops, and those left to pixels."""
    img = jpeg.open_image(data, "x")
    assert isinstance(img, jpeg.EncodedJpeg)
    crops = [jpeg.PendingCrop(img, box) for box in boxes]
    out = (max(b[3] - b[1] for b in boxes), max(b[2] - b[0] for b in boxes))
    packed, left = jpegblocks.pack(crops, out)
    got = jpegblocks.unpack(packed, torch.device(device)).cpu().numpy()
    return [g[: b[3] - b[1], : b[2] - b[0]] for g, b in zip(got, boxes, strict=True)], left


def test_it_is_on_where_the_region_decoder_is():
    assert jpegblocks.enabled()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_blocks_decode_to_pillows_crop(kind, device):
    """Sizes 1 to 200 (multiples of the iMCU and not), random qualities down to 5 (large
    coefficients), 11 boxes each, all of a file's crops in one batch: every byte Pillow's."""
    rng = np.random.default_rng(len(kind) + 7)
    sizes = [(1, 1), (3, 2), (16, 16), (17, 9), (200, 33), (8, 150)]
    sizes += [tuple(int(v) for v in rng.integers(1, 200, 2)) for _ in range(8)]
    for w, h in sizes:
        data = _jpeg(rng, w, h, int(rng.integers(5, 100)), **KINDS[kind])
        whole = np.array(decode_image(data, "x"))
        boxes = list(_boxes(rng, w, h, 4))
        got, left = _decoded(data, boxes, device)
        narrow = "gray" not in kind and "4:4:4" not in kind and w <= 4
        assert left == ([] if not narrow else list(range(len(boxes)))), (kind, w, h)
        for view, (x0, y0, x1, y1) in zip(got, boxes, strict=True):
            if not narrow:
                assert np.array_equal(view, whole[y0:y1, x0:x1]), (kind, w, h, (x0, y0, x1, y1))


@pytest.mark.parametrize("progressive", [False, True])
def test_blocks_of_a_4_4_0_file_decode_to_pillows_crop(progressive):
    rng = np.random.default_rng(3 + progressive)
    for w, h in [(8, 16), (136, 128), (40, 176), (5, 30)]:
        data = _h1v2(rng, w, h, progressive)
        whole = np.array(decode_image(data, "x"))
        boxes = list(_boxes(rng, w, h, 8))
        got, left = _decoded(data, boxes)
        assert left == []
        for view, (x0, y0, x1, y1) in zip(got, boxes, strict=True):
            assert np.array_equal(view, whole[y0:y1, x0:x1]), (w, h, (x0, y0, x1, y1))


def test_a_mixed_batch_decodes_what_blocks_cannot_on_the_host():
    """4:2:0, grayscale, a file libjpeg warns of, a narrow 4:2:2 file (libjpeg's plain
    upsampling) and a PNG in one batch: the first two as blocks, the rest as pixels, all of
    them Pillow's bytes in their slots."""
    rng = np.random.default_rng(5)
    scrambled = bytearray(_jpeg(rng, 64, 48, 80, subsampling=2))
    scrambled[len(scrambled) // 2 : len(scrambled) // 2 + 40] = bytes(range(40))
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(png, "PNG")
    files = [
        _jpeg(rng, 90, 70, 85, subsampling=2),
        _jpeg(rng, 50, 61, 60, gray=True),
        bytes(scrambled),
        _jpeg(rng, 4, 40, 90, subsampling=1),
        png.getvalue(),
    ]
    cfg = ViewConfig(input_size=16)
    drawer = ViewDrawer(train_transform(cfg))
    views, expected = [], []
    for seed, data in enumerate(files):
        img = jpeg.open_image(data, f"{seed}")
        views.append(defer(img, seed, drawer, cfg)[0])
        whole = decode_image(data, f"{seed}")
        expected.append(apply_host(whole, drawer.draw(seed, *whole.size)[0]))
    prepared = prepare(views)
    wave = prepared["waves"][0]  # five small views: one wave
    assert wave["blocks"]["index"].tolist() == [0, 1, 2, 3]  # tried as blocks
    assert wave["pixel_rows"].tolist() == [2, 3, 4]  # decoded to pixels after all
    batch = realize(deferred_batch(prepared), torch.device("cpu"))
    assert torch.equal(batch.image, torch.stack(expected))


def test_damage_anywhere_is_refused_as_pillow_refuses_it():
    """A bogus marker segment near the end of a tall file: blocks for its top rows are not
    decoded (the tail is checked, as the region decoder checks it), and the pixel path
    then refuses the file with Pillow's line."""
    bad, refused = damaged_below(np.random.default_rng(0))
    img = jpeg.open_image(bad, "tall.jpg")
    pending = jpeg.PendingCrop(img, (0, 0, 64, 16))
    packed, left = jpegblocks.pack([pending], (16, 64))
    assert left == [0]
    with pytest.raises(DataError, match=re.escape(refused)):
        pending.into(np.empty((16, 64, 3), np.uint8))


@pytest.mark.parametrize("kind", list(KINDS))
def test_damaged_but_decodable_files_decode_to_pillows_bytes(kind, caplog):
    """One bit flipped in the entropy-coded data of a file Pillow still decodes, in every
    layout: the crops are Pillow's bytes. Corrupt coefficients that would leave the range
    where libjpeg-turbo's 16-bit SIMD IDCT, its C IDCT and the kernels agree send the crop
    to pixels (issue 43: 68 pixels off by up to 252 before)."""
    rng = np.random.default_rng(sum(map(ord, kind)))
    caplog.set_level("DEBUG", logger="deit_pipe.data.decode.jpeg")
    files = damaged_decodable(rng, kind, 80)
    assert len(files) > 15, kind
    through_blocks = 0
    for data in files:
        whole = np.array(decode_image(data, "x"))
        boxes = list(_boxes(rng, 64, 48, 2))
        got, left = _decoded(data, boxes)
        through_blocks += not left
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            if k not in left:
                assert np.array_equal(got[k], whole[y0:y1, x0:x1]), (kind, (x0, y0, x1, y1))
    assert through_blocks > 0, kind
    if "progressive" not in kind:  # a progressive file's damage is mostly refused or coarse
        assert "beyond the exact IDCT's range" in caplog.text, kind


def test_training_views_are_the_same_with_and_without_blocks(tmp_path, monkeypatch):
    """Device-rendered views with the blocks on and off, and host-rendered ones: the same
    pixels and fingerprints."""
    rng = np.random.default_rng(4)
    for i in range(9):
        w, h = (int(v) for v in rng.integers(40, 130, 2))
        path = tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = dict(gray=True) if i == 8 else dict(subsampling=i % 3)
        path.write_bytes(_jpeg(rng, w, h, int(rng.integers(10, 95)), **kind))
    on, host = _views(tmp_path, "device", 24, 4), _views(tmp_path, "host", 24, 4)
    monkeypatch.setenv("DEIT_PIPE_JPEG_DCT", "0")
    jpegblocks.enabled.cache_clear()
    off = _views(tmp_path, "device", 24, 4)
    for other in (off, host):
        assert torch.equal(on.image, other.image)
        assert torch.equal(on.fingerprint, other.fingerprint)


def test_training_views_of_damaged_files_are_pillows_on_both_renders(tmp_path, caplog):
    """A folder of damaged-but-decodable files whose coefficients leave the kernels' exact
    range (and of files that do not): device-rendered training views are the host's, pixels
    and fingerprints, so a `--render device` store of them verifies on the host."""
    rng = np.random.default_rng(43)
    caplog.set_level("DEBUG", logger="deit_pipe.data.decode.jpeg")
    beyond = 0
    for i, kind in enumerate(["4:2:0", "4:2:2", "4:4:4", "gray", "4:2:0 restart markers"]):
        for j, data in enumerate(damaged_decodable(rng, kind, 60)):
            caplog.clear()
            _decoded(data, [(0, 0, 64, 48)])
            if "beyond the exact IDCT's range" in caplog.text or j < 2:
                beyond += "beyond" in caplog.text
                path = tmp_path / "train" / f"c{i % 2}" / f"{i}-{j}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    assert beyond >= 3
    device, host = _views(tmp_path, "device", 24, 2), _views(tmp_path, "host", 24, 2)
    assert torch.equal(device.image, host.image)
    assert torch.equal(device.fingerprint, host.fingerprint)


@pytest.mark.parametrize("device", DEVICES)
def test_decoding_blocks_waits_for_nothing(device, imagefolder, monkeypatch):
    """The blocks' decode joins the device stage without a read-back or a blocking copy."""
    cfg = ViewConfig(input_size=16)
    split = open_source(f"imagefolder:{imagefolder}").split("train")
    dev = PairDataset(split, plan(1, 1, len(split), 1, MixConfig(), 18), cfg, render="device")
    batch = collate_views([dev[p] for p in range(len(dev))])
    assert "blocks" in batch.device_views["waves"][0]
    host = collate_views([PairDataset(split, dev.plan, cfg)[p] for p in range(len(dev))])
    realize(batch, torch.device(device))  # a warm-up: `realize` leaves its batch as it was
    copies = _watch_blocking_copies(monkeypatch)
    with _Dispatched() as seen:
        done = realize(batch, torch.device(device), wait=False)
    monkeypatch.undo()
    assert not seen.ops & _READ_BACKS, sorted(seen.ops & _READ_BACKS)
    assert copies == []
    assert torch.equal(done.image.cpu(), host.image)


def _islow_reference(block: np.ndarray) -> np.ndarray:
    """jidctint.c's `jpeg_idct_islow` written out as C has it (int64, both passes with their
    descales, CENTERJSAMPLE, then the SIMD saturation) for one dequantised [8, 8] block."""
    fix = {"a": 4433, "b": 15137, "c": 6270, "d": 2446, "e": 16819, "f": 25172, "g": 12299}
    fix |= {"h": 7373, "i": 20995, "j": 16069, "k": 3196, "l": 9633}

    def one(d: list[int], shift: int) -> list[int]:
        z1 = (d[2] + d[6]) * fix["a"]
        tmp2, tmp3 = z1 + d[6] * -fix["b"], z1 + d[2] * fix["c"]
        tmp0, tmp1 = (d[0] + d[4]) << 13, (d[0] - d[4]) << 13
        tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
        t0, t1, t2, t3 = d[7], d[5], d[3], d[1]
        z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
        z5 = (z3 + z4) * fix["l"]
        t0, t1, t2, t3 = t0 * fix["d"], t1 * fix["e"], t2 * fix["f"], t3 * fix["g"]
        z1, z2 = z1 * -fix["h"], z2 * -fix["i"]
        z3, z4 = z3 * -fix["j"] + z5, z4 * -fix["k"] + z5
        t0, t1, t2, t3 = t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4
        out = [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0]
        out += [tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]
        return [(v + (1 << (shift - 1))) >> shift for v in out]

    x = block.astype(np.int64).tolist()
    work = np.array([one([x[v][u] for v in range(8)], 11) for u in range(8)]).T  # [y, u]
    rows = np.array([one(list(work[y]), 18) for y in range(8)])
    return np.clip(rows + 128, 0, 255).astype(np.uint8)


def test_the_idct_is_jidctint_on_any_coefficients_and_tables():
    """The IDCT's matrix products equal jidctint.c's flow graph, descales and saturation
    included, beyond what images hold: coefficients up to +-2047 (DC +-8191) under tables
    of 1..255, where most samples saturate and every rounding branch is taken."""
    from deit_pipe.data.device.kernels.jpegdecode import idct_islow

    rng = np.random.default_rng(7)
    coefs = rng.integers(-2047, 2048, (300, 64))
    coefs[:100, 0] = rng.integers(-8191, 8192, 100)
    coefs[100:200] //= rng.integers(1, 64, (100, 1))  # small ACs: the usual case
    coefs[200:, 1:] *= rng.random((100, 63)) < 0.1  # sparse blocks, zero-AC columns
    quant = rng.integers(1, 256, (300, 64))
    quant[200:] = 1
    got = idct_islow(torch.from_numpy(coefs.astype(np.int16)), torch.from_numpy(quant))
    want = np.stack([_islow_reference(b.reshape(8, 8)) for b in coefs * quant])
    assert np.array_equal(got.numpy(), want)
    assert 0 < (want == 255).mean() < 0.5 and 0 < (want == 0).mean() < 0.5
