"""Fixtures the test files share: a tiny imagefolder dataset, a one-step run made from it,
the small fake store several files damage, and a moto S3 server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, write_jpeg


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A tiny ImageNet-layout dataset: 3 classes, 6 train and 2 val images each."""
    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(6):
            write_jpeg(root / "train" / name / f"{i}.jpg", seed=100 * c + i)
        for i in range(2):
            write_jpeg(root / "val" / name / f"v{i}.jpg", seed=1000 + 100 * c + i)
    return root


@pytest.fixture
def trained(imagefolder, tmp_path) -> tuple[Path, Path, Path]:
    """(dataset root, store, run): an imagefolder store with val, and a one-step run."""
    from tests.cli_utils import invoke
    from tests.run_utils import TINY, pre

    store, run = tmp_path / "s.zarr", tmp_path / "run"
    done = invoke(*pre(f"imagefolder:{imagefolder}"), "--out", store)
    assert done.exit_code == 0, done.output
    train = ["train", "--store", store, "--out", run, *TINY, "--epochs", "1"]
    done = invoke(*train, "--batch-size", "6", "--max-steps", "1")
    assert done.exit_code == 0, done.output
    return imagefolder, store, run


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> Path:
    """One teacher, one epoch of 100 fake images in two train shards, and val (made once a
    session: tests only read it, or copy it before they damage it)."""
    from tests.cli_utils import invoke
    from tests.small_store_utils import PRE

    url = tmp_path_factory.mktemp("made") / "s.zarr"
    done = invoke(*PRE, "--out", url)
    assert done.exit_code == 0, done.output
    return url


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server with one IAM user allowed everything and a bucket; yields options."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # The first 3 requests (the IAM set-up below) are unauthenticated, every later one is checked.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait for the server itself to listen; the deadline only ends a server that never
        # does (a loaded host just waits longer), and one that exits fails at once.
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert server.poll() is None, "the moto server exited before it listened"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client = dict(endpoint_url=endpoint, region_name="us-east-1")
        import boto3

        iam = boto3.client("iam", aws_access_key_id="x", aws_secret_access_key="x", **client)
        iam.create_user(UserName="deit")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*"}]}
        policy["Statement"][0]["Resource"] = "*"
        iam.put_user_policy(UserName="deit", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="deit")["AccessKey"]
        creds = dict(
            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
        )
        boto3.client("s3", **creds, **client).create_bucket(Bucket="stores")
        yield {
            "key": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
            "client_kwargs": client,
        }
    finally:
        server.kill()
        server.wait()
