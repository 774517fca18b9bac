"""`train --follow`: a student trains while the precompute is still filling the store."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.storage import TargetStore

STUDENT = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
STUDENT += ["--num-heads", "2", "--epochs", "3", "--batch-size", "128", "--device", "cpu"]


def precompute_cmd(url) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deit_pipe",
        "precompute",
        *("--data", "digits", "--out", str(url), "--epochs", "3", "--teacher-model", "regnety_002"),
        *(
            "--teacher-random-init",
            "--dask-workers",
            "0",
            "--shard-views",
            "64",
            "--batch-size",
            "32",
        ),
    ]


def train_cmd(url, out, *extra) -> list[str]:
    return [sys.executable, "-m", "deit_pipe", "train", "--store", str(url), "--out", str(out)] + [
        *STUDENT,
        *extra,
    ]


def wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    """Poll `condition` while `proc` runs: no wall-clock window, so a slow host only waits
    longer (the process's own end, or pytest's, bounds it)."""
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}"
        time.sleep(0.1)


@pytest.fixture
def half_store(tmp_path):
    """A store whose precompute was SIGKILLed once epoch 0 was complete."""
    url = tmp_path / "filling.zarr"
    proc = subprocess.Popen(
        precompute_cmd(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def epoch0_done() -> bool:
        try:
            return bool(TargetStore(str(url)).progress().done["train"][0].all())
        except Exception:  # not created yet
            return proc.poll() is not None

    wait_until(epoch0_done, proc, "epoch 0 was done")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the precompute finished before it was killed"
    assert TargetStore(str(url)).progress().complete_epochs() in ([0], [0, 1])
    return url


def weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa["step"] == wb["step"] == 33
    for name, tensor in wa["model"].items():
        assert torch.equal(tensor, wb["model"][name]), name


@pytest.mark.slow
def test_a_follower_waits_for_the_teacher_and_matches_a_later_run(half_store, tmp_path):
    follower = tmp_path / "follower"
    proc = subprocess.Popen(
        train_cmd(half_store, follower, "--follow", "--follow-timeout", "300"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def evaluated_epoch0() -> bool:
        metrics = follower / "metrics.jsonl"
        return metrics.exists() and '"eval"' in metrics.read_text()

    wait_until(evaluated_epoch0, proc, "the follower's first evaluation")
    # The follower has trained every epoch the store holds once its checkpoint is at their
    # last step: it can only wait now, on an epoch nobody is computing.
    last = 11 * len(TargetStore(str(half_store)).progress().complete_epochs())

    def trained_what_is_stored() -> bool:
        try:
            return weights(follower)["step"] == last
        except (OSError, RuntimeError, EOFError):  # no checkpoint yet (written atomically)
            return False

    wait_until(trained_what_is_stored, proc, "the follower trained every stored epoch")
    assert proc.poll() is None and TargetStore(str(half_store)).progress().missing()
    resumed = subprocess.run(precompute_cmd(half_store), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    straight = tmp_path / "straight"  # a process like the follower's: same threads, same sums
    subprocess.run(train_cmd(half_store, straight), check=True, capture_output=True)
    assert_same_weights(follower, straight)
    shown = json.loads(CliRunner().invoke(main, ["inspect", str(half_store), "--json"]).output)
    assert shown["progress"]["views_done"] == shown["progress"]["views_total"]


@pytest.mark.slow
def test_a_stalled_teacher_times_out_then_resume_follow_finishes(half_store, tmp_path):
    follower = tmp_path / "follower"
    stalled = subprocess.run(
        train_cmd(half_store, follower, "--follow", "--follow-timeout", "3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stalled.returncode == 1
    error = [line for line in stalled.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no shard completed for 3 s" in error[0], stalled.stderr[-2000:]
    assert "--resume --follow" in error[0]
    assert weights(follower)["step"] == 11  # the checkpoint of epoch 0 is intact
    shown = CliRunner().invoke(main, ["inspect", str(half_store)])
    assert "epochs complete: 0" in shown.output and "views ·" in shown.output
    assert subprocess.run(precompute_cmd(half_store), capture_output=True).returncode == 0
    again = subprocess.run(
        train_cmd(half_store, follower, "--resume", "--follow"), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-2000:]
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(half_store, straight), check=True, capture_output=True)
    assert_same_weights(follower, straight)
