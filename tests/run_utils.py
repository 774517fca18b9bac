"""A one-step run made through the CLI from an imagefolder store (the `trained` fixture), for
tests that damage its checkpoint or its dataset: the precompute command and a tiny student."""

from __future__ import annotations

TINY = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
TINY += ["--num-heads", "2"]


def pre(data: str) -> list:
    return ["precompute", "--data", data, "--teacher-model", "regnety_002", "--teacher-random-init",
            "--epochs", "1", "--batch-size", "32", "--dask-workers", "0", "--preset", "small",
            "--input-size", "32", "--top-k", "3"]  # fmt: skip
