import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from unittest.mock import patch

import pytest
import torch
import zarr
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.errors import ReplayError, StoreMismatchError
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.train import TrainConfig, train
from tests.store_utils import resign_meta, tamper_fingerprint
from tests.train_utils import RECIPE, TEACHER, TINY, TINY_ARGS, base_cfg, losses


@pytest.fixture(scope="module")
def exact_store(tmp_path_factory):
    """k = C, float32: the stored targets are the teacher's full softmax."""
    url = str(tmp_path_factory.mktemp("exact") / "exact.zarr")
    job = Job(url=url, data="digits", recipe=RECIPE, teacher=TEACHER, batch_size=256)
    precompute(job, StoreRequest(epochs=2, k=10, value_dtype="float32", shard_views=512), workers=0)
    return url


@pytest.mark.parametrize("distill,tau,alpha", [("soft", 3.0, 0.1), ("hard", 1.0, 0.5)])
def test_offline_equals_online(exact_store, tmp_path, distill, tau, alpha):
    offline = base_cfg(tmp_path / "off", store=exact_store, distill=distill, tau=tau, alpha=alpha)
    online = base_cfg(
        tmp_path / "on",
        data="digits",
        teacher=TEACHER,
        recipe=RECIPE.to_dict(),
        distill=distill,
        tau=tau,
        alpha=alpha,
    )
    train(offline)
    train(online)
    off, on = losses(tmp_path / "off"), losses(tmp_path / "on")
    assert len(off) == len(on) == 5
    for a, b in zip(off, on, strict=True):
        assert a["slots_sum"] == b["slots_sum"]
        for key in ("loss", "base", "teacher"):
            assert abs(a[key] - b[key]) < 1e-5, (key, a, b)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(exact_store, tmp_path):
    args = [
        "--store",
        exact_store,
        *TINY_ARGS,
        "--epochs",
        "2",
        "--batch-size",
        "128",
        "--warmup-epochs",
        "0.5",
        "--ckpt-every",
        "3",
        "--device",
        "cpu",
    ]
    straight = tmp_path / "straight"
    cmd = [sys.executable, "-m", "deit_pipe", "train", "--out", str(straight), *args]
    subprocess.run(cmd, check=True, capture_output=True)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deit_pipe", "train", "--out", str(killed), *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while proc.poll() is None:  # no wall-clock window: a slow host only takes longer
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 15:  # mid epoch 1
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 11 < step < 22 and step % 11  # a mid-epoch checkpoint of epoch 1
    again = CliRunner().invoke(main, ["train", "--out", str(killed), *args])
    assert again.exit_code == 1 and "--resume" in again.output
    subprocess.run([*cmd, "--resume"], check=True, capture_output=True)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 22
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.slow
def test_ddp_on_cpu_consumes_the_same_slots(exact_store, tmp_path):
    """Two ranks take the single process's steps; with a render trial (steps 1-4 on the
    host, 5-8 on the kernels, then the ranks' agreed choice) they stay in step."""
    common = [
        "--store",
        exact_store,
        *TINY_ARGS,
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--max-steps",
        "9",
        "--drop-path",
        "0",
        "--device",
        "cpu",
    ]
    single = tmp_path / "single"
    assert CliRunner().invoke(main, ["train", "--out", str(single), *common]).exit_code == 0
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deit_pipe",
            "train",
            "--out",
            str(ddp),
            *common,
            "--nproc-per-node",
            "2",
            "--render-trial",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    trial = [r for r in map(json.loads, (ddp / "metrics.jsonl").open()) if "render_trial" in r]
    assert [r["step"] for r in trial] == [8]
    for a, b in zip(losses(single), losses(ddp), strict=True):
        assert a["slots_sum"] == b["slots_sum"]
        assert abs(a["loss"] - b["loss"]) < 1e-4


@pytest.mark.parametrize("render", ["host", "device"])
def test_tampered_fingerprint_stops_training(exact_store, tmp_path, render):
    """Checked before the step's update (device-rendered views: after the backward pass,
    from fingerprints hashed late), so the run stops with nothing learnt from the view."""
    import shutil

    url = str(tmp_path / "tampered.zarr")
    shutil.copytree(exact_store, url)
    from deit_pipe.data.plan.recipe import Recipe as R

    plan = R.from_dict(zarr.open_group(url, mode="r").attrs["deit_pipe"]["plan"])
    assert plan.view.input_size == 32
    tamper_fingerprint(url, "train", 0, 7, 12345)
    stepped = []
    with (
        pytest.raises(ReplayError, match="slot 7 of epoch 0"),
        patch.object(torch.optim.AdamW, "step", lambda *a, **k: stepped.append(1)),
    ):
        train(base_cfg(tmp_path / "run", store=url, distill="hard", render=render))
    assert stepped == []


def test_store_plan_with_another_input_size_stops_at_replay(exact_store, tmp_path):
    import shutil

    url = str(tmp_path / "resized.zarr")
    shutil.copytree(exact_store, url)

    def resize(meta):
        meta["plan"]["transform"]["input_size"] = 48
        meta["plan"]["input_size"] = 48

    resign_meta(url, resize)
    with pytest.raises(ReplayError, match="replayed view differs"):
        train(
            base_cfg(
                tmp_path / "run",
                store=url,
                distill="hard",
                model_overrides={**TINY, "img_size": 48},
            )
        )


def test_store_for_another_dataset_is_refused(exact_store, tmp_path):
    with pytest.raises(StoreMismatchError, match="made for dataset digits"):
        train(base_cfg(tmp_path / "run", store=exact_store, data="fake:200", distill="hard"))
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--out",
            str(tmp_path / "cli"),
            "--store",
            exact_store,
            "--data",
            "fake:200",
            *TINY_ARGS,
        ],
    )
    assert result.exit_code == 1 and "made for dataset digits" in result.output


def test_plain_supervised_training_and_eval_cli(tmp_path):
    out = tmp_path / "plain"
    args = [
        "train",
        "--out",
        str(out),
        "--data",
        "digits",
        "--model",
        "resnet10t",
        "--distill",
        "none",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--max-steps",
        "2",
        "--drop-path",
        "0",
        "--aa",
        "none",
        "--reprob",
        "0",
        "--mixup",
        "0",
        "--cutmix",
        "0",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["mix"]["mixup_alpha"] == 0 and cfg["store"] is None
    ev = CliRunner().invoke(main, ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json"])
    assert ev.exit_code == 0, ev.output
    assert set(json.loads(ev.output)["heads"]) == {"cls"}
    replace(base_cfg(out), distill="none")  # configs are plain dataclasses


def test_cycle_epochs_replays_the_stored_epochs(exact_store, tmp_path):
    cfg = base_cfg(
        tmp_path / "cycle",
        store=exact_store,
        distill="hard",
        epochs=3,
        max_steps=24,
        cycle_epochs=True,
    )
    train(cfg)  # epoch 2 replays stored epoch 0: fingerprints must match
    rows = losses(tmp_path / "cycle")
    assert rows[-1]["epoch"] == 2 and rows[-1]["step"] == 24
    with pytest.raises(Exception, match="--cycle-epochs"):
        train(base_cfg(tmp_path / "nocycle", store=exact_store, distill="hard", epochs=3))


def test_ema_weights_are_kept_evaluated_and_checkpointed(tmp_path):
    from deit_pipe.student.runs import evaluate_checkpoint

    cfg = TrainConfig(
        out=str(tmp_path / "ema"),
        data="fake:64",
        model="deit_tiny_patch16_224",
        model_overrides=TINY,
        distill="none",
        epochs=1,
        batch_size=32,
        ema=True,
        ema_decay=0.5,
        clip_grad=1.0,
    )
    result = train(cfg)
    assert {"cls", "ema_cls"} <= set(result)
    state = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)
    assert state["ema"] is not None and state["step"] == 2
    ema_eval = evaluate_checkpoint(tmp_path / "ema" / "checkpoint.pt", ema=True, device="cpu")
    assert ema_eval["heads"]["cls"]["top1"] == pytest.approx(result["ema_cls"]["top1"])


def test_one_loader_worker_serves_every_epoch_and_changes_nothing(
    exact_store, tmp_path, monkeypatch
):
    """The run-long DataLoader keeps its worker process across epochs (same PID)."""
    from deit_pipe.data.loaders.dataset import ReplayDataset

    original_item = ReplayDataset.__getitem__
    seen = tmp_path / "rendered-by"  # one empty file per (epoch, process) that rendered
    seen.mkdir()

    def item_recording_pid(self, item):
        (seen / f"{item[0]}-{os.getpid()}").touch()
        return original_item(self, item)

    monkeypatch.setattr(ReplayDataset, "__getitem__", item_recording_pid)
    cfg = dict(store=exact_store, distill="hard", epochs=2, max_steps=None)
    train(base_cfg(tmp_path / "workers", loader_workers=1, **cfg))
    pids: dict[int, set] = {}
    for mark in seen.iterdir():
        epoch, pid = (int(v) for v in mark.name.split("-"))
        pids.setdefault(epoch, set()).add(pid)
    assert set(pids) == {0, 1} and len(set.union(*pids.values())) == 1
    assert os.getpid() not in set.union(*pids.values())
    train(base_cfg(tmp_path / "inline", **cfg))
    a, b = losses(tmp_path / "workers"), losses(tmp_path / "inline")
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len(a) == 22
