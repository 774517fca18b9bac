"""Dataset sources (`digits`, `fake`, `imagefolder`, `wds`): what each lists and how it
identifies itself; bad specs, roots, folders and files refused naming them; files a source
does not read counted and named in `scan` and the log."""

import io
import os
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deit_pipe.cli import main
from deit_pipe.data import open_checked, open_source, scan
from deit_pipe.errors import DataError
from tests.cli_utils import invoke
from tests.helpers import truncated_jpeg_bytes


def test_digits_is_real_stratified_and_rgb():
    src = open_source("digits")
    train, val = src.split("train"), src.split("val")
    assert (len(train), len(val)) == (1437, 360) and src.classes == [str(i) for i in range(10)]
    assert src.split("train").load(0).size == (32, 32) and train.load(0).mode == "RGB"
    np.testing.assert_allclose(
        np.bincount(val.labels) / len(val), np.bincount(train.labels) / len(train), atol=0.01
    )
    assert src.fingerprint() == open_source("digits").fingerprint()
    assert src.default_hflip == 0.0


def test_fake_is_deterministic():
    a, b = open_source("fake:50"), open_source("fake:50:16")
    assert len(a.split("train")) == 50 and len(a.split("val")) == 10
    assert np.array_equal(
        np.asarray(a.split("train").load(7)),
        np.asarray(open_source("fake:50").split("train").load(7)),
    )
    assert b.split("train").load(0).size == (16, 16) and a.fingerprint() != b.fingerprint()


def test_imagefolder_lists_classes_paths_and_fingerprint(imagefolder):
    src = open_source(f"imagefolder:{imagefolder}")
    assert src.classes == ["cat", "dog", "eel"]
    train = src.split("train")
    assert (
        len(train) == 18
        and train.paths[0] == "train/cat/0.jpg"
        and train.labels.tolist()[:7] == [0] * 6 + [1]
    )
    assert train.load(5).mode == "RGB"
    fp = src.fingerprint()
    (imagefolder / "train" / "cat" / "0.jpg").write_bytes(b"x" * 10)
    assert open_source(f"imagefolder:{imagefolder}").fingerprint() != fp


@pytest.mark.parametrize("spec", ["bogus", "fake:x", "imagefolder:", "cifar10:"])
def test_bad_specs(spec):
    with pytest.raises(DataError, match="spec"):
        open_source(spec)


def _error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    return result.output.strip().splitlines()[-1]


def test_missing_root(tmp_path):
    assert str(tmp_path / "nope") in _error(["scan", "--data", f"imagefolder:{tmp_path / 'nope'}"])
    assert "cifar10 not found" in _error(["scan", "--data", f"cifar10:{tmp_path}"])


def test_empty_class_folder(imagefolder):
    (imagefolder / "train" / "fox").mkdir()
    msg = _error(["scan", "--data", f"imagefolder:{imagefolder}"])
    assert "empty class folder" in msg and "fox" in msg


def test_val_class_unknown_to_train(imagefolder):
    (imagefolder / "val" / "yak").mkdir()
    (imagefolder / "val" / "yak" / "a.jpg").write_bytes(
        (imagefolder / "val" / "cat" / "v0.jpg").read_bytes()
    )
    msg = _error(["scan", "--data", f"imagefolder:{imagefolder}"])
    assert "val class not in train" in msg and "yak" in msg


def test_path_escaping_the_root(imagefolder, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((imagefolder / "train" / "cat" / "0.jpg").read_bytes())
    os.symlink(outside, imagefolder / "train" / "cat" / "link.jpg")
    msg = _error(["scan", "--data", f"imagefolder:{imagefolder}"])
    assert "escapes the dataset root" in msg and "link.jpg" in msg


def _apng_out_of_sequence() -> bytes:
    """A two-frame APNG without its second fcTL: Pillow raises SyntaxError on load (Pillow's
    own Tests/images/chunk_no_fctl.png, found by benchmarks/corpus_check.py)."""
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    data, at, kept, fctl = buf.getvalue(), 8, [buf.getvalue()[:8]], 0
    while at < len(data):
        end = at + 12 + struct.unpack(">I", data[at : at + 4])[0]
        fctl += data[at + 4 : at + 8] == b"fcTL"
        if not (data[at + 4 : at + 8] == b"fcTL" and fctl == 2):
            kept.append(data[at:end])
        at = end
    return b"".join(kept)


@pytest.mark.parametrize(
    "name,content",
    [
        ("bad.jpg", b""),
        ("bad.jpg", truncated_jpeg_bytes()),
        ("bad.jpg", b"hello, I am text"),
        ("bad.png", _apng_out_of_sequence()),
    ],
)
def test_unreadable_files_are_named(imagefolder, name, content):
    bad = imagefolder / "train" / "dog" / name
    bad.write_bytes(content)
    src = open_source(f"imagefolder:{imagefolder}")
    index = src.split("train").paths.index(f"train/dog/{name}")
    with pytest.raises(DataError, match=name):
        src.split("train").load(index)
    assert scan(src).bad[0][0] == f"train/dog/{name}"
    result = CliRunner().invoke(main, ["scan", "--data", f"imagefolder:{imagefolder}"])
    assert result.exit_code == 1 and f"train/dog/{name}" in result.output
    assert "Traceback" not in result.output
    skipped = CliRunner().invoke(
        main, ["scan", "--data", f"imagefolder:{imagefolder}", "--skip-bad"]
    )
    assert skipped.exit_code == 0
    kept = open_checked(f"imagefolder:{imagefolder}", skip_bad=True)
    assert f"train/dog/{name}" not in kept.split("train").paths
    assert len(kept.split("train")) == 18 and kept.skipped[0][0] == f"train/dog/{name}"


def test_files_a_source_does_not_read_are_counted_and_named_in_scan_and_the_log(
    imagefolder, tmp_path, monkeypatch, caplog
):
    import io
    import json
    import tarfile

    from benchmarks.layouts import write_wds
    from deit_pipe.data import open_source

    (imagefolder / "train" / "cat" / "x.gif").write_bytes(b"GIF89a")
    (imagefolder / "train" / "cat" / ".DS_Store").write_bytes(b"")  # hidden: no data
    result = invoke("scan", "--data", f"imagefolder:{imagefolder}")
    assert result.exit_code == 0 and "1 ignored" in result.output
    assert "train/cat/x.gif: unsupported extension .gif" in result.output
    with caplog.at_level("WARNING"):
        for _ in range(2):  # opened twice, said once
            open_source(f"imagefolder:{imagefolder}")
    assert sum("x.gif" in r.getMessage() for r in caplog.records) == 1

    monkeypatch.setenv("DEIT_PIPE_CACHE", str(tmp_path / "cache"))
    for name in ("x.gif", ".DS_Store"):  # the tar is made of the images only
        (imagefolder / "train" / "cat" / name).unlink()
    wds = tmp_path / "wds"
    write_wds(imagefolder, wds)
    with tarfile.open(wds / "train-000000.tar", "a") as tar:  # a second image for key 000000
        member = tarfile.TarInfo("000000.png")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"\x89PNG"))
    result = invoke("scan", "--data", f"wds:{wds}", "--json")
    assert result.exit_code == 0, result.output
    ignored = json.loads(result.output)["ignored"]
    assert ignored == [
        {"path": "train-000000.tar:000000.png", "reason": "repeats an earlier image's key"}
    ]
