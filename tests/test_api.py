"""The public Python API (`deit_pipe.__all__`): a user's own training loop — plain PyTorch,
Lightning, Accelerate — replays a store exactly as `deit-pipe train` does."""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
from dataclasses import is_dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import deit_pipe as dp
from deit_pipe.cli import main
from tests.store_utils import tamper_fingerprint

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
TINY = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
TINY += ["--num-heads", "2"]
RUN = ["--epochs", "1", "--batch-size", "128", "--train-seed", "3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("api") / "digits.zarr")
    made = CliRunner().invoke(
        main,
        [
            "precompute", "--data", "digits", "--out", url, "--epochs", "1",
            "--teacher-model", "regnety_002", "--teacher-random-init", "--dask-workers", "0",
            "--top-k", "3",
        ],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    return url


def example(name: str):
    """An example script as a module (its folder on the path: they import own_loop)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def train_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_own_loop_is_deit_pipe_train_bit_for_bit(store, tmp_path):
    trained = CliRunner().invoke(
        main,
        ["train", "--store", store, "--out", str(tmp_path / "run"), *TINY, *RUN,
         "--max-steps", "6", "--device", "cpu"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    example("own_loop").main(["--store", store, "--out", str(tmp_path / "own"), *TINY, *RUN,
                              "--steps", "6"])  # fmt: skip
    own = json.loads((tmp_path / "own" / "losses.json").read_text())
    assert own == train_losses(tmp_path / "run") and len(own) == 6
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert same_weights(torch.load(tmp_path / "own" / "model.pt", weights_only=True), ckpt)


@pytest.mark.slow
def test_own_loop_under_torchrun_is_deit_pipe_train_on_two_ranks(store, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = [*TINY, *RUN]
    train = [sys.executable, "-m", "deit_pipe", "train", "--store", store, "--device", "cpu"]
    train += ["--out", str(tmp_path / "run"), *flags, "--max-steps", "4", "--nproc-per-node", "2"]
    own = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    own += [str(EXAMPLES / "own_loop.py"), "--store", store, "--out", str(tmp_path / "own")]
    own += [*flags, "--steps", "4"]
    for cmd in (train, own):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads((tmp_path / "own" / "losses.json").read_text())
    assert losses == train_losses(tmp_path / "run") and len(losses) == 4
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert same_weights(torch.load(tmp_path / "own" / "model.pt", weights_only=True), ckpt)


def _batches(loader, n: int) -> list[dict]:
    return [
        {
            "step": b.step,
            "slots": b.slots.tolist(),
            "images": b.images.clone(),
            "labels": b.label_targets.clone(),
            "hard": b.teacher_hard.clone(),
            "soft": b.teacher_soft.clone(),
        }
        for b in itertools.islice(loader, n)
    ]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["step"] == y["step"]
        and x["slots"] == y["slots"]
        and all(torch.equal(x[k], y[k]) for k in ("images", "labels", "hard", "soft"))
        for x, y in zip(a, b, strict=True)
    )


def test_a_loader_resumed_from_its_state_yields_the_same_batches(store):
    opened = dp.open_store(store)
    kw = dict(batch_size=64, epochs=1, distill="soft", device="cpu", loader_workers=1)
    loader = dp.ReplayLoader(opened, **kw)
    first = _batches(loader, 3)
    state = loader.state_dict()
    rest = _batches(loader, 3)
    loader.close()
    resumed = dp.ReplayLoader(opened, **kw)
    resumed.load_state_dict(state)
    again = _batches(resumed, 3)
    assert [b["step"] for b in first] == [0, 1, 2] and [b["step"] for b in rest] == [3, 4, 5]
    assert _same(again, rest)
    assert not _same(again, first)
    with pytest.raises(dp.DeitPipeError, match="global batch 64, not 32"):
        dp.ReplayLoader(opened, **{**kw, "batch_size": 32}).load_state_dict(state)
    with pytest.raises(dp.DeitPipeError, match="replays only in its own order"):
        dp.ReplayLoader(opened, **{**kw, "order": "blocks:4"})


def test_a_store_that_does_not_replay_stops_a_users_loop_before_the_optimiser(store, tmp_path):
    import shutil

    copy = tmp_path / "other.zarr"
    shutil.copytree(store, copy)
    tamper_fingerprint(str(copy), "train", 0, 5, 12345)  # views of another recipe, say
    opened = dp.open_store(copy)
    loader = dp.ReplayLoader(opened, batch_size=128, epochs=1, device="cpu")
    model = torch.nn.Linear(4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stepped = []
    optimizer.register_step_post_hook(lambda *a: stepped.append(1))
    with pytest.raises(dp.ReplayError, match="slot 5 of epoch 0"):
        for _ in loader:
            optimizer.step()
    assert not stepped and same_weights(model.state_dict(), before)


@pytest.mark.parametrize("name", ["lightning_loop", "accelerate_loop"])
def test_lightning_and_accelerate_examples_learn_what_own_loop_learns(store, tmp_path, name):
    args = ["--store", store, *TINY, *RUN, "--steps", "2"]
    example("own_loop").main([*args, "--out", str(tmp_path / "own")])
    example(name).main([*args, "--out", str(tmp_path / name)])
    own = json.loads((tmp_path / "own" / "losses.json").read_text())
    theirs = json.loads((tmp_path / name / "losses.json").read_text())
    assert theirs == own and len(own) == 2


def test_every_public_name_is_documented_with_its_arguments():
    api = (ROOT / "docs" / "API.md").read_text()
    for name in dp.__all__:
        obj = getattr(dp, name)
        doc = inspect.getdoc(obj) or ""
        assert doc, f"{name} has no docstring"
        assert re.search(rf"^##+ `?{name}\b", api, flags=re.M), f"docs/API.md lacks {name}"
        if is_dataclass(obj) or (inspect.isclass(obj) and issubclass(obj, Exception)):
            continue
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = [p for p in inspect.signature(target).parameters if p != "self"]
        if params:
            assert "Args:" in doc, f"{name}'s docstring has no Args: section"
        if inspect.isfunction(obj):
            assert "Returns:" in doc, f"{name}'s docstring has no Returns: section"


def test_an_online_teacher_through_the_loader_gives_the_stored_targets(store):
    """A comparison run: the store's views, the teacher run on them live instead of read —
    the same teacher (a seeded random RegNetY, as the store's) gives the stored top-1."""
    opened = dp.open_store(store)
    kw = dict(batch_size=128, epochs=1, device="cpu", max_steps=3)
    teacher = dp.create_teacher("regnety_002", opened.num_classes, random_init=True)
    online = dp.ReplayLoader(opened, teacher=teacher, **kw)
    offline = dp.ReplayLoader(opened, **kw)
    for live, stored in zip(online, offline, strict=True):
        assert torch.equal(live.images, stored.images)
        assert torch.equal(live.teacher_hard, stored.teacher_hard)
        assert live.teacher_topk is None and stored.teacher_topk.indices.shape[1] == 3
        assert torch.equal(stored.teacher_topk.indices[:, 0], stored.teacher_hard)
