import os

import numpy as np
import pytest
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.data import open_checked, open_source, scan
from deit_pipe.errors import DataError
from tests.conftest import truncated_jpeg_bytes


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


@pytest.mark.parametrize("content", [b"", truncated_jpeg_bytes(), b"hello, I am text"])
def test_unreadable_files_are_named(imagefolder, content):
    bad = imagefolder / "train" / "dog" / "bad.jpg"
    bad.write_bytes(content)
    src = open_source(f"imagefolder:{imagefolder}")
    index = src.split("train").paths.index("train/dog/bad.jpg")
    with pytest.raises(DataError, match="bad.jpg"):
        src.split("train").load(index)
    assert scan(src).bad[0][0] == "train/dog/bad.jpg"
    result = CliRunner().invoke(main, ["scan", "--data", f"imagefolder:{imagefolder}"])
    assert result.exit_code == 1 and "train/dog/bad.jpg" in result.output
    skipped = CliRunner().invoke(
        main, ["scan", "--data", f"imagefolder:{imagefolder}", "--skip-bad"]
    )
    assert skipped.exit_code == 0
    kept = open_checked(f"imagefolder:{imagefolder}", skip_bad=True)
    assert "train/dog/bad.jpg" not in kept.split("train").paths and len(kept.split("train")) == 18
    assert kept.skipped[0][0] == "train/dog/bad.jpg"
