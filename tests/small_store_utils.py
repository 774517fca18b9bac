"""The small store several feature files damage or refuse (the `made` fixture): 100 fake
images, one teacher (A), one epoch in two train shards (64 + 36 views) and val; the command
that makes it, a second teacher's name (B) and a tiny one-step student."""

from __future__ import annotations

PRE = ["precompute", "--data", "fake:100", "--teacher-random-init", "--batch-size", "50"]
PRE += ["--dask-workers", "0", "--preset", "small", "--epochs", "1", "--top-k", "3"]
PRE += ["--teacher-model", "regnety_002", "--shard-views", "64"]  # train: a shard of 64, one of 36
SMALL = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
SMALL += ["--num-heads", "2", "--batch-size", "16", "--epochs", "1", "--max-steps", "1"]
A, B = "regnety_002", "regnety_004"
