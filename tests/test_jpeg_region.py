"""Decoding only a crop's region of a JPEG (`data.decode.jpeg`): the bytes of Pillow's full decode
then `crop`, on every subsampling (4:4:0 too), progressive and restart-marker files, and
boxes on every border; anything it does not cover decodes whole with Pillow, and views,
stores and their replay are the same with it on or off."""

import io
import re
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deit_pipe.cli import main
from deit_pipe.data.decode import jpeg as region
from deit_pipe.data.decode.pillow import decode_image
from deit_pipe.errors import DataError
from tests.helpers import truncated_jpeg_bytes
from tests.jpeg_utils import KINDS, _boxes, _h1v2, _jpeg, _views, damaged_below


@pytest.fixture(autouse=True)
def region_on(monkeypatch):
    monkeypatch.delenv("DEIT_PIPE_JPEG_REGION", raising=False)
    region._bound.cache_clear()
    yield
    region._bound.cache_clear()


def test_the_region_decoder_is_built_and_bound():
    """`make setup` compiles it; without it every test here would pass on Pillow's path."""
    assert region._bound() is not None


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_region_is_the_full_decodes_crop(kind):
    """Sizes 1 to 200 (multiples of the iMCU and not), random qualities, 15 boxes each:
    every byte equal to Pillow's decode-then-crop."""
    rng = np.random.default_rng(len(kind))
    sizes = [(1, 1), (16, 16), (17, 9), (200, 33), (8, 150)]
    sizes += [tuple(int(v) for v in rng.integers(1, 200, 2)) for _ in range(9)]
    for w, h in sizes:
        data = _jpeg(rng, w, h, int(rng.integers(20, 100)), **KINDS[kind])
        whole = np.array(decode_image(data, "x"))
        img = region.open_image(data, "x")
        assert isinstance(img, region.EncodedJpeg) and img.size == (w, h)
        for box in _boxes(rng, w, h, 8):
            x0, y0, x1, y1 = box
            got = img.crop_array(box)
            assert np.array_equal(got, whole[y0:y1, x0:x1]), (kind, w, h, box)
        assert np.array_equal(np.array(img.crop((2 % w, 0, w, h))), whole[:, 2 % w :])
        x0, y0, x1, y1 = box  # into a batch's padded slot: the corner, and nothing past it
        slot = np.full((y1 - y0 + 2, x1 - x0 + 3, 3), 7, np.uint8)
        img.crop_into(box, slot)
        assert np.array_equal(slot[: y1 - y0, : x1 - x0], whole[y0:y1, x0:x1])
        assert (slot[y1 - y0 :] == 7).all() and (slot[:, x1 - x0 :] == 7).all()


@pytest.mark.parametrize("progressive", [False, True])
def test_a_region_of_a_4_4_0_file_is_the_full_decodes_crop(progressive):
    rng = np.random.default_rng(int(progressive))
    for w, h in [(8, 16), (136, 128), (40, 176)]:
        data = _h1v2(rng, w, h, progressive)
        with Image.open(io.BytesIO(data)) as img:
            assert [layer[1:3] for layer in img.layer] == [(1, 2), (1, 1), (1, 1)]
        whole = np.array(decode_image(data, "x"))
        img = region.open_image(data, "x")
        for box in _boxes(rng, w, h, 12):
            x0, y0, x1, y1 = box
            assert np.array_equal(img.crop_array(box), whole[y0:y1, x0:x1]), (w, h, box)


def test_what_it_does_not_cover_decodes_whole_with_pillow():
    rng = np.random.default_rng(0)
    cmyk = io.BytesIO()
    Image.new("CMYK", (20, 12), (10, 200, 30, 5)).save(cmyk, "JPEG")
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(png, "PNG")
    for data in (cmyk.getvalue(), png.getvalue()):
        img = region.open_image(data, "x")
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert np.array_equal(np.array(img), np.array(decode_image(data, "x")))
    # A truncated file (no end marker) is Pillow's to refuse, with the same line.
    with pytest.raises(DataError, match="unreadable image shard/7.jpg"):
        region.open_image(truncated_jpeg_bytes(), "shard/7.jpg")
    with pytest.raises(DataError, match="unreadable image a.jpg: not an image format"):
        region.open_image(b"\xff\xd8 not a jpeg \xff\xd9", "a.jpg")


def test_corrupt_data_gives_whatever_pillow_gives():
    """Scrambled entropy-coded bytes with the end marker intact: where libjpeg warns, the
    region falls back to Pillow's own decode of the whole file, so the pixels (or the
    error line) agree; seed 2's scramble is one Pillow refuses."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        data = bytearray(_jpeg(rng, 64, 48, 80, subsampling=2))
        data[len(data) // 2 : len(data) // 2 + 40] = rng.integers(0, 256, 40, np.uint8).tobytes()
        img = region.open_image(bytes(data), "x.jpg")
        try:
            whole = np.array(decode_image(bytes(data), "x.jpg"))
        except DataError as exc:
            with pytest.raises(DataError, match=re.escape(str(exc))):
                img.crop_array((0, 0, 64, 48))
            continue
        assert np.array_equal(img.crop_array((3, 20, 60, 48)), whole[20:48, 3:60]), seed
        assert np.array_equal(img.crop_array((0, 0, 64, 8)), whole[0:8]), seed


def test_damage_below_the_crop_is_refused_as_pillow_refuses_it():
    """A bogus marker segment near the end of a tall file: Pillow refuses the file, and so
    does a crop of its top rows, so no view depends on whether its crop reaches the damage
    (nor can a machine decoding whole images fail to replay it)."""
    bad, refused = damaged_below(np.random.default_rng(0))
    img = region.open_image(bad, "tall.jpg")
    assert isinstance(img, region.EncodedJpeg)
    with pytest.raises(DataError, match=re.escape(refused)):
        img.crop_array((0, 0, 64, 16))


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DEIT_PIPE_JPEG_REGION", "0")
    region._bound.cache_clear()
    data = _jpeg(np.random.default_rng(1), 30, 20, 90)
    assert isinstance(region.open_image(data, "x"), Image.Image)


@pytest.mark.parametrize("render", ["host", "device"])
def test_training_views_are_the_same_with_and_without_it(tmp_path, monkeypatch, render):
    """JPEGs larger than the views (crops that skip rows and columns): the same pixels
    and fingerprints whether the loader decodes regions or whole images."""
    rng = np.random.default_rng(2)
    for i in range(8):
        w, h = (int(v) for v in rng.integers(40, 130, 2))
        path = tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(rng, w, h, 85, subsampling=i % 3))
    on = _views(tmp_path, render)
    monkeypatch.setenv("DEIT_PIPE_JPEG_REGION", "0")
    region._bound.cache_clear()
    off = _views(tmp_path, render)
    assert torch.equal(on.image, off.image)
    assert torch.equal(on.fingerprint, off.fingerprint)


def test_a_store_made_decoding_whole_images_verifies_decoding_regions(
    imagefolder, tmp_path, monkeypatch
):
    url = tmp_path / "whole.zarr"
    monkeypatch.setenv("DEIT_PIPE_JPEG_REGION", "0")
    region._bound.cache_clear()
    args = ["precompute", "--data", f"imagefolder:{imagefolder}", "--out", str(url)]
    args += ["--epochs", "1", "--input-size", "16", "--repeats", "1", "--top-k", "3"]
    args += ["--teacher-model", "regnety_002", "--teacher-random-init", "--dask-workers", "0"]
    made = CliRunner().invoke(main, args)
    assert made.exit_code == 0, made.output
    monkeypatch.delenv("DEIT_PIPE_JPEG_REGION")
    region._bound.cache_clear()
    checked = CliRunner().invoke(main, ["verify", str(url), "--all", "--render", "host"])
    assert checked.exit_code == 0, checked.output
    assert region._bound() is not None


def test_a_header_larger_than_pillow_decodes_is_refused_before_any_allocation():
    """A 65500×65500 header on a few hundred bytes: libjpeg would allocate its whole
    coefficient array (17 GB) before it found the data missing; the extension refuses it
    on the header, whoever checked the file before."""
    import resource

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
    ext = region._bound()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = np.zeros((8, 8, 3), np.uint8)
    got = ext.region(bytes(data), False, 0, 0, 8, 8, out, out.strides[0])
    assert got == (True, "a 65500x65500 image: more pixels than Pillow decodes")
    luma, chroma = np.zeros((1, 1, 64), np.int16), np.zeros((2, 1, 1, 64), np.int16)
    quant = np.zeros((3, 64), np.uint16)
    got = ext.coefficients(
        bytes(data), False, 0, 0, 1, 1, luma, luma.strides[0], chroma, chroma.strides[1],
        chroma.strides[0], quant,
    )  # fmt: skip
    assert got == (True, "a 65500x65500 image: more pixels than Pillow decodes")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB
    with pytest.raises(DataError, match="decompression bomb|exceeds limit"):
        region.open_image(bytes(data), "bomb.jpg")
