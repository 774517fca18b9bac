"""Object stores end to end, against a real S3-protocol server (moto) on 127.0.0.1.

The server checks credentials (IAM auth on), so a wrong key is refused as by AWS.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import s3fs
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.place import Place
from deit_pipe.storage import TargetStore
from tests.helpers import free_port


def _precompute_args(url: str, opts: dict, *extra: str) -> list[str]:
    return [
        "precompute",
        "--data",
        "digits",
        "--out",
        url,
        "--epochs",
        "1",
        "--teacher-model",
        "regnety_002",
        "--teacher-random-init",
        "--shard-views",
        "256",
        "--storage-options",
        json.dumps(opts),
        *extra,
    ]


def _objects(opts: dict, prefix: str) -> dict[str, bytes]:
    """Every data object of a store (not the metadata and `done_at`: they record times)."""
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    keys = [k for k in fs.find(prefix) if not k.endswith("zarr.json") and "/done_at/" not in k]
    return {k.removeprefix(prefix): fs.cat_file(k) for k in keys}


@pytest.mark.slow
def test_precompute_inspect_verify_train_audit_on_s3(s3, tmp_path):
    url, opts = "s3://stores/digits.zarr", json.dumps(s3)
    run = CliRunner().invoke(main, _precompute_args(url, s3, "--dask-workers", "2"))
    assert run.exit_code == 0, run.output
    shown = CliRunner().invoke(main, ["inspect", url, "--json", "--storage-options", opts])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["complete"]
    # The same options from the environment variable.
    checked = CliRunner().invoke(
        main, ["verify", url, "--sample", "64"], env={"DEIT_PIPE_STORAGE_OPTIONS": opts}
    )
    assert checked.exit_code == 0 and "0 differ" in checked.output, checked.output
    student = tmp_path / "student"
    trained = CliRunner().invoke(
        main,
        [
            "train",
            "--store",
            url,
            "--storage-options",
            opts,
            "--out",
            str(student),
            *("--img-size", "32", "--patch-size", "8", "--depth", "1"),
            *("--embed-dim", "32", "--num-heads", "2", "--epochs", "1"),
            *("--batch-size", "128", "--max-steps", "2", "--device", "cpu"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert s3["secret"] not in (student / "config.json").read_text()  # credentials stay out
    audited = CliRunner().invoke(
        main,
        ["audit", "--store", url, "--run", str(student), "--out", str(tmp_path / "audit")],
        env={"DEIT_PIPE_STORAGE_OPTIONS": opts},
    )
    assert audited.exit_code == 0, audited.output
    assert (tmp_path / "audit" / "agreement.json").is_file()


@pytest.mark.slow
def test_sigkill_during_precompute_then_resume_gives_the_same_bytes(s3):
    straight, killed = "s3://stores/straight.zarr", "s3://stores/killed.zarr"
    small = ("--dask-workers", "0", "--batch-size", "64")
    args = _precompute_args(straight, s3, *small)
    args[args.index("256")] = "128"  # several shards, to kill in between
    assert CliRunner().invoke(main, args).exit_code == 0
    args[args.index(straight)] = killed
    cmd = [sys.executable, "-m", "deit_pipe", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while proc.poll() is None:  # no wall-clock window: a slow host only takes longer
        time.sleep(0.2)
        try:
            done = int(TargetStore(Place(killed, s3)).progress().done["train"].sum())
        except Exception:  # not created yet
            continue
        if done >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "precompute finished before it could be killed"
    assert TargetStore(Place(killed, s3)).progress().missing("train")
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _objects(s3, "stores/straight.zarr"), _objects(s3, "stores/killed.zarr")
    assert len(a) > 20 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing bucket", "bucket 'nobucket' does not exist"),
        ("wrong credentials", "access denied"),
        ("unreachable endpoint", "cannot reach the storage endpoint"),
    ],
)
def test_storage_failures_are_one_clear_line(s3, case, message):
    url, opts = "s3://stores/digits.zarr", dict(s3)
    if case == "missing bucket":
        url = "s3://nobucket/digits.zarr"
    elif case == "wrong credentials":
        opts["secret"] = "not-the-secret"
    else:
        opts["client_kwargs"] = {
            **s3["client_kwargs"],
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
        }
        opts["config_kwargs"] = {"retries": {"max_attempts": 1}}  # botocore's, not the verdict
    data = message if case != "missing bucket" else "bucket does not exist"
    for args, needle in (
        (["inspect", url], message),
        (_precompute_args(url, opts)[:-2], message),
        (["scan", "--data", f"parquet:{url.removesuffix('/digits.zarr')}/pq"], data),
    ):
        result = CliRunner().invoke(main, [*args, "--storage-options", json.dumps(opts)])
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert line.startswith("error:") and "\n" not in line and needle in line, line


def test_parquet_and_imagefolder_on_s3_make_the_local_views(s3, imagefolder, tmp_path):
    from benchmarks.layouts import write_parquet

    local = tmp_path / "pq"
    write_parquet(imagefolder, local)
    fs = s3fs.S3FileSystem(**s3, skip_instance_cache=True)
    fs.put(str(local), "stores/data/pq", recursive=True)
    fs.put(str(imagefolder), "stores/data/imgs", recursive=True)
    opts = json.dumps(s3)
    pre = ["precompute", "--teacher-model", "regnety_002", "--teacher-random-init", "--epochs", "1"]
    pre += ["--input-size", "32", "--top-k", "3", "--repeats", "1", "--dask-workers", "0"]
    pre += ["--order", "global"]  # one order for both layouts
    made = {}
    for name, spec in [
        ("local", f"parquet:{local}"),
        ("parquet", "parquet:s3://stores/data/pq"),
        ("imagefolder", "imagefolder:s3://stores/data/imgs"),
    ]:
        store = tmp_path / f"{name}.zarr"  # a local store beside data on S3
        cached = ["--data-cache", str(tmp_path / "cache")] if name == "parquet" else []
        run = CliRunner().invoke(
            main, [*pre, *cached, "--data", spec, "--out", str(store), "--storage-options", opts]
        )
        assert run.exit_code == 0, run.output
        made[name] = TargetStore(str(store)).read_arrays(0, "train")["fingerprint"]
    assert (made["parquet"] == made["local"]).all() and (made["imagefolder"] == made["local"]).all()
    shards = sorted(p.name for p in local.rglob("*.parquet"))
    copies = [p for p in (tmp_path / "cache").iterdir() if len(p.name) == 32]
    assert len(copies) == len(shards)  # the parquet run read its shards from local copies
    # The same dataset wherever it lives: its identity is its content.
    from deit_pipe.data import open_source

    for local_spec, remote in [
        (f"parquet:{local}", "parquet:s3://stores/data/pq"),
        (f"imagefolder:{imagefolder}", "imagefolder:s3://stores/data/imgs"),
    ]:
        here, there = open_source(local_spec), open_source(remote, data_options=s3)
        assert here.fingerprint() == there.fingerprint()
    # Forked loader workers open their own clients (the parent's already read).
    import torch

    train = there.split("train")
    loader = torch.utils.data.DataLoader(
        range(len(train)), batch_size=None, num_workers=2, multiprocessing_context="fork",
        collate_fn=lambda i: np.asarray(train.load(i)),
    )  # fmt: skip
    forked = list(loader)
    assert all(
        np.array_equal(a, np.asarray(here.split("train").load(i))) for i, a in enumerate(forked)
    )
    student = tmp_path / "student"
    trained = CliRunner().invoke(
        main,
        [
            "train", "--store", str(tmp_path / "parquet.zarr"), "--out", str(student),
            *("--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"),
            *("--num-heads", "2", "--epochs", "1", "--batch-size", "8", "--device", "cpu"),
        ],
        env={"DEIT_PIPE_STORAGE_OPTIONS": opts},
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    # eval reads the run's val images from S3 through a data cache, as train does
    cache = tmp_path / "eval-cache"
    evaluated = CliRunner().invoke(
        main, ["eval", "--checkpoint", str(student), "--data-cache", str(cache), "--json"],
        env={"DEIT_PIPE_STORAGE_OPTIONS": opts},
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert any(len(p.name) == 32 for p in cache.iterdir())  # a shard's local copy


def test_data_and_store_each_take_their_own_storage_options(s3, imagefolder):
    fs = s3fs.S3FileSystem(**s3, skip_instance_cache=True)
    fs.put(str(imagefolder), "stores/own/imgs", recursive=True)
    wrong = json.dumps({**s3, "secret": "not-the-secret"})
    scan = ["scan", "--data", "imagefolder:s3://stores/own/imgs"]
    ok = CliRunner().invoke(
        main, [*scan, "--storage-options", wrong, "--data-storage-options", json.dumps(s3)]
    )
    assert ok.exit_code == 0, ok.output
    refused = CliRunner().invoke(main, [*scan, "--data-storage-options", wrong])
    line = refused.output.strip()
    assert refused.exit_code == 1 and "\n" not in line and "s3://stores/own/imgs" in line, line
    bad = CliRunner().invoke(main, [*scan, "--data-storage-options", "[1]"])
    assert "--data-storage-options must be a JSON object" in bad.output


@pytest.mark.parametrize(
    "bad",
    [
        {"key": 5, "secret": [1]},  # values of the wrong type
        {"nonsense_kwarg": 1},  # a key no backend takes
        {"client_kwargs": {"endpoint_url": 5}},
    ],
    ids=["wrong types", "unknown key", "endpoint of the wrong type"],
)
def test_storage_options_a_backend_refuses_are_one_line(s3, tmp_path, bad):
    """Options s3fs or botocore refuse deep inside, on every command and both flags."""
    merged = {**s3, **bad}
    if "client_kwargs" in bad:
        merged["client_kwargs"] = {**s3["client_kwargs"], **bad["client_kwargs"]}
    text = json.dumps(merged)
    for args in (
        ["inspect", "s3://stores/nothing-here", "--storage-options", text],
        ["scan", "--data", "imagefolder:s3://stores/own/imgs", "--data-storage-options", text],
    ):
        result = CliRunner().invoke(main, args)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 1 and len(lines) == 1, result.output[-2000:]
        assert lines[0].startswith("error: ") and "Traceback" not in result.output
