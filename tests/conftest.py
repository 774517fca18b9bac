from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import free_port


def write_jpeg(path: Path, seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


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


def truncated_jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[:200]


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
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.time() > deadline:
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
