"""`deit-pipe verify`: re-render stored views on this machine and compare fingerprints."""

import json
import shutil

import pytest
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.pipeline.verify import verify
from tests.cli_utils import precompute
from tests.helpers import write_jpeg
from tests.store_utils import tamper_fingerprint


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    url = tmp_path_factory.mktemp("verify") / "digits.zarr"
    precompute(url, epochs=2)
    return url


def test_a_good_store_verifies(digits_store):
    result = CliRunner().invoke(main, ["verify", str(digits_store), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["mismatches"] == 0 and report["dataset_matches"]
    # The default sample spreads over both stored epochs and val.
    assert [(e["split"], e["epoch"]) for e in report["epochs"]] == [
        ("train", 0),
        ("train", 1),
        ("val", 0),
    ]
    assert all(e["checked"] > 100 for e in report["epochs"])
    text = CliRunner().invoke(main, ["verify", str(digits_store), "--sample", "40"])
    assert text.exit_code == 0 and "OK: 120 views re-rendered" in text.output


def test_a_tampered_fingerprint_is_found(digits_store, tmp_path):
    url = tmp_path / "tampered.zarr"
    shutil.copytree(digits_store, url)
    tamper_fingerprint(str(url), "train", 1, 7, 12345)
    report = verify(str(url), all_views=True)
    assert not report.ok and report.mismatches == 1
    bad = report.epochs[1]
    assert (bad.epoch, bad.mismatches, bad.first_mismatch["slot"]) == (1, 1, 7)
    assert report.epochs[0].mismatches == report.epochs[2].mismatches == 0
    result = CliRunner().invoke(main, ["verify", str(url), "--all"])
    assert result.exit_code == 1
    assert "1 of 3234 re-rendered views differ" in result.output
    assert "train epoch 1 slot 7 (sample" in result.output


def test_a_changed_image_file_is_named_and_a_moved_dataset_verifies(imagefolder, tmp_path):
    url = tmp_path / "folder.zarr"
    args = ("--input-size", "32", "--top-k", "3", "--repeats", "1")  # every image, every epoch
    precompute(url, *args, data=f"imagefolder:{imagefolder}", epochs=2)
    moved = tmp_path / "elsewhere"
    shutil.copytree(imagefolder, moved)  # the same files on another machine's path
    ok = CliRunner().invoke(main, ["verify", str(url), "--data", f"imagefolder:{moved}", "--all"])
    assert ok.exit_code == 0, ok.output
    write_jpeg(moved / "train" / "dog" / "2.jpg", seed=999)  # new pixels, same name
    result = CliRunner().invoke(
        main, ["verify", str(url), "--data", f"imagefolder:{moved}", "--all", "--json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.output.split("\nerror:")[0])
    assert not report["dataset_matches"]
    named = {report["epochs"][i]["first_mismatch"]["file"] for i in (0, 1)}
    partners = {report["epochs"][i]["first_mismatch"].get("mixed_with") for i in (0, 1)}
    assert "train/dog/2.jpg" in named | partners
    assert report["epochs"][2]["mismatches"] == 0  # val images are untouched


def test_every_damaged_chunk_is_listed_with_the_repair_that_mends_it(digits_store, tmp_path):
    """Chunks that fail their crc32c in two epochs: verify goes on past the first, names each
    damaged shard array (no raw checksum bytes), and `precompute --repair` mends them."""
    url = tmp_path / "damaged.zarr"
    shutil.copytree(digits_store, url)
    for epoch, name in ((0, "topk_values"), (1, "fingerprint")):
        chunk = sorted((url / "train" / name / "c" / str(epoch)).rglob("*"))[-1]
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["verify", str(url)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 damaged shard(s), first: " in result.output and "--repair" in result.output
    assert "b'" not in result.output  # no raw checksum bytes
    report = verify(str(url))
    assert [(e.epoch, len(e.damaged)) for e in report.epochs] == [(0, 1), (1, 1), (0, 0)]
    assert "train/fingerprint epoch 1" in report.epochs[1].damaged[0]
    args = ["--epochs", "2", "--teacher-model", "regnety_002", "--teacher-random-init"]
    repaired = CliRunner().invoke(
        main, ["precompute", "--data", "digits", "--out", str(url), *args, "--dask-workers", "0",
               "--repair"],
    )  # fmt: skip
    assert repaired.exit_code == 0, repaired.output
    assert verify(str(url), all_views=True).ok
