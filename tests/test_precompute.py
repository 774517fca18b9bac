import json
import os
import signal
import subprocess
import sys
import time

import cloudpickle
import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

import tests.precompute_utils as putils
from deit_pipe.cli import main
from deit_pipe.data import ViewConfig, collate_views, finish, open_source, stored_views
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import pending, precompute, prepare_store, run
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.storage import TargetStore
from deit_pipe.teacher import TeacherConfig, build_teacher

TEACHER = TeacherConfig("regnety_002", random_init=True)
ARRAYS = ("values", "indices", "lse", "fingerprint")


def digits_job(url, **kw) -> Job:
    recipe = Recipe(view=ViewConfig.for_source(open_source("digits")))
    return Job(url=str(url), data="digits", recipe=recipe, teacher=TEACHER, batch_size=128, **kw)


def assert_same_store(a, b, epochs=1, splits=("train", "val")):
    sa, sb = TargetStore(str(a)), TargetStore(str(b))
    for split in splits:
        for e in range(epochs if split == "train" else 1):
            ea, eb = sa.read_epoch(e, split), sb.read_epoch(e, split)
            for name in ARRAYS:
                np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    url = tmp_path_factory.mktemp("ref") / "ref.zarr"
    precompute(digits_job(url), StoreRequest(epochs=1, shard_views=256), workers=0)
    return url


@pytest.mark.slow
def test_one_and_two_dask_workers_give_identical_stores(tmp_path, reference):
    for workers in (1, 2):
        url = tmp_path / f"w{workers}.zarr"
        summary = precompute(
            digits_job(url), StoreRequest(epochs=1, shard_views=256), workers=workers
        )
        assert summary.views == 1437 + 360 and summary.tasks == 6 + 2
        assert_same_store(url, reference)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_store(tmp_path, reference):
    url = tmp_path / "killed.zarr"
    cmd = [
        sys.executable,
        "-m",
        "deit_pipe",
        "precompute",
        "--data",
        "digits",
        "--out",
        str(url),
        "--epochs",
        "1",
        "--teacher-model",
        "regnety_002",
        "--teacher-random-init",
        "--shard-views",
        "64",
        "--batch-size",
        "32",
        "--dask-workers",
        "0",
        "--preset",
        "deit",  # the reference's recipe (digits would default to `small`)
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    done = 0
    while proc.poll() is None:  # no wall-clock window: a slow host only takes longer
        time.sleep(0.2)
        try:
            done = int(TargetStore(str(url)).progress().done["train"].sum())
        except Exception:  # store not created yet
            continue
        if done >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "precompute finished before it could be killed"
    assert len(pending_after := TargetStore(str(url)).progress().missing("train")) > 0
    assert len(pending_after) < 23
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert TargetStore(str(url)).progress().missing("train") == []
    assert_same_store(url, reference)


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_survived(tmp_path, reference, monkeypatch):
    monkeypatch.setenv("DEIT_PIPE_TEST_MARKER", str(tmp_path / "died"))
    cloudpickle.register_pickle_by_value(putils)
    url = tmp_path / "retry.zarr"
    job = digits_job(url)
    writer = prepare_store(job, StoreRequest(epochs=1, shard_views=256))
    run(job, pending(writer), workers=2, task_fn=putils.die_once)
    assert_same_store(url, reference)
    # dask's default MALLOC_TRIM_THRESHOLD_ pins glibc's mmap threshold (twice the kernel
    # time in a precompute: see _run_dask); OMP_NUM_THREADS follows --threads-per-worker
    settings = json.loads((tmp_path / "died").read_text())
    assert settings == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}


def test_stored_logits_match_the_teacher_on_independently_rendered_views(reference):
    store = TargetStore(str(reference))
    recipe = Recipe.from_dict(store.spec.recipe)
    teacher, _ = build_teacher(TEACHER, 10)
    pairs = stored_views(open_source("digits"), recipe, "train", 0)
    targets = store.read_epoch(0)
    for pair in (0, 5, 300):  # one pair at a time, finished on its own, outside any task
        views = finish(collate_views([pairs[pair]]), recipe.view, torch.device("cpu"))
        with torch.inference_mode():
            logits = teacher(views).float()
        slots = [2 * pair, 2 * pair + 1]
        assert logits.argmax(1).tolist() == targets.indices[slots, 0].astype(int).tolist()
        top = logits.topk(10, dim=1).values.numpy()
        np.testing.assert_allclose(
            targets.values[slots].astype(np.float32), top, rtol=1e-3, atol=1e-3
        )


def _imagefolder_cmd(root, url, *extra):
    return [
        "precompute",
        "--data",
        f"imagefolder:{root}",
        "--out",
        str(url),
        "--epochs",
        "1",
        "--teacher-model",
        "regnety_002",
        "--teacher-random-init",
        "--input-size",
        "32",
        "--dask-workers",
        "0",
        "--shard-views",
        "64",
        "--top-k",
        "3",
        "--repeats",
        "1",
        *extra,
    ]


def test_corrupt_image_fails_naming_it_then_skip_bad_completes(imagefolder, tmp_path):
    (imagefolder / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    url = tmp_path / "bad.zarr"
    result = CliRunner().invoke(main, _imagefolder_cmd(imagefolder, url))
    assert result.exit_code == 1 and "broken.jpg" in result.output
    assert not TargetStore(str(url)).progress().done["train"].any()
    ok = CliRunner().invoke(main, _imagefolder_cmd(imagefolder, tmp_path / "ok.zarr", "--skip-bad"))
    assert ok.exit_code == 0, ok.output
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "ok.zarr")])
    assert "skipped" in shown.output and "train/dog/broken.jpg" in shown.output


def test_teacher_checkpoint_errors(imagefolder, tmp_path):
    wrong_classes = tmp_path / "five.pth"
    torch.save(
        {"model": timm.create_model("regnety_002", num_classes=5).state_dict()}, wrong_classes
    )
    other_arch = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", num_classes=3).state_dict(), other_arch)
    cases = [
        (["--teacher-checkpoint", str(wrong_classes)], "predicts 5 classes; the dataset has 3"),
        (["--teacher-checkpoint", str(tmp_path / "nope.pth")], "checkpoint not found"),
        (["--teacher-checkpoint", str(other_arch)], "does not fit regnety_002"),
    ]
    for extra, message in cases:
        args = [
            a
            for a in _imagefolder_cmd(imagefolder, tmp_path / "t.zarr")
            if a != "--teacher-random-init"
        ]
        result = CliRunner().invoke(main, args + extra)
        assert result.exit_code == 1 and message in result.output, result.output


def test_checkpoint_with_model_key_and_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    state = timm.create_model("regnety_002", num_classes=3).state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "t.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "t.safetensors")
    for name in ("t.pth", "t.safetensors"):
        model, info = build_teacher(TeacherConfig("regnety_002", str(tmp_path / name)), 3)
        assert len(info["checkpoint_sha256"]) == 64 and not model.training
        assert torch.equal(model.state_dict()["head.fc.weight"], state["head.fc.weight"])


def test_different_job_on_existing_store_is_refused(imagefolder, tmp_path):
    url = tmp_path / "job.zarr"
    assert CliRunner().invoke(main, _imagefolder_cmd(imagefolder, url)).exit_code == 0
    again = CliRunner().invoke(main, _imagefolder_cmd(imagefolder, url))
    assert again.exit_code == 0 and "0 shards" in again.output
    other = CliRunner().invoke(main, _imagefolder_cmd(imagefolder, url, "--plan-seed", "1"))
    assert other.exit_code == 1 and "different job" in other.output and "plan.seed" in other.output


@pytest.fixture
def external_cluster():
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, as dask-jobqueue starts."""
    import socket
    from pathlib import Path

    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask_cli = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [
        subprocess.Popen(
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            **quiet,
        )
    ]
    try:
        for name in ("w0", "w1"):
            procs.append(
                subprocess.Popen(
                    [dask_cli, "worker", address, "--nthreads", "1", "--name", name]
                    + ["--no-dashboard", "--host", "127.0.0.1"],
                    **quiet,
                )
            )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_precompute_on_an_external_dask_cluster(external_cluster, tmp_path, reference):
    url = tmp_path / "cluster.zarr"
    args = [
        "precompute",
        "--data",
        "digits",
        "--out",
        str(url),
        "--epochs",
        "1",
        "--teacher-model",
        "regnety_002",
        "--teacher-random-init",
        "--shard-views",
        "256",
        "--batch-size",
        "128",
        "--scheduler",
        external_cluster,
        "--preset",
        "deit",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "8 shards, 1,797 views" in result.output
    assert_same_store(url, reference)
    # GPU tasks on workers that declare no GPU resource would wait forever: refused instead.
    gpu = CliRunner().invoke(main, [*args, "--device", "cuda", "--overwrite"])
    assert gpu.exit_code == 1
    (error,) = [line for line in gpu.output.splitlines() if line.startswith("error:")]
    assert "none of the 2 dask workers" in error and "--resources GPU=1" in error


def test_an_unreachable_scheduler_is_one_line(tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = CliRunner().invoke(
            main,
            ["precompute", "--data", "digits", "--out", str(tmp_path / "x.zarr"), "--epochs", "1"]
            + [
                "--teacher-model",
                "regnety_002",
                "--teacher-random-init",
                "--scheduler",
                "tcp://127.0.0.1:9",
            ],
        )
    assert result.exit_code == 1
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9" in result.output


def test_files_of_the_wrong_kind_are_named_as_such(imagefolder, tmp_path):
    """A text file, a model state dict and a safetensors file where other kinds belong."""
    from safetensors.torch import save_file

    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    weights = timm.create_model("resnet10t", num_classes=3).state_dict()
    torch.save(weights, tmp_path / "plain.pth")
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / "m.safetensors")
    args = [
        a
        for a in _imagefolder_cmd(imagefolder, tmp_path / "t.zarr")
        if a != "--teacher-random-init"
    ]
    teacher = CliRunner().invoke(main, [*args, "--teacher-checkpoint", str(text)])
    assert teacher.exit_code == 1
    assert f"teacher checkpoint {text} is not a PyTorch checkpoint" in teacher.output
    assert "list index" not in teacher.output
    cases = [
        (text, "is not a PyTorch checkpoint (.pth/.pt from torch.save) or a .safetensors file"),
        (tmp_path / "plain.pth", "is a PyTorch file but not a deit-pipe run checkpoint"),
        (tmp_path / "m.safetensors", "is a safetensors model file, not a deit-pipe run checkpoint"),
    ]
    for path, message in cases:
        result = CliRunner().invoke(main, ["eval", "--checkpoint", str(path)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.count("\n") == 1


def test_render_processes_serve_every_shard_and_change_nothing(tmp_path, reference):
    """With --loader-workers, one pool of render processes outlives the shards it renders."""
    from deit_pipe.pipeline.tasks import render_pool

    job = digits_job(tmp_path / "pool.zarr", loader_workers=1)
    tasks = pending(prepare_store(job, StoreRequest(epochs=1, shard_views=256)))
    run(job, tasks[:2], workers=0)
    pids = render_pool(job).pids
    run(job, tasks[2:], workers=0)
    assert render_pool(job).pids == pids and len(pids) == 1 and os.getpid() not in pids
    assert_same_store(tmp_path / "pool.zarr", reference)
