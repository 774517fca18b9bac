"""`precompute --targets hard`: a store of the teacher's top-1 class and the fingerprint only
trains exactly as a soft store does, and is refused for soft distillation."""

import json

import pytest
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.errors import DeitPipeError
from deit_pipe.storage import TargetStore
from deit_pipe.student.train import TrainConfig, train
from tests.cli_utils import precompute

TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    precompute(root / "soft.zarr")
    precompute(root / "hard.zarr", "--targets", "hard")
    return root / "soft.zarr", root / "hard.zarr"


def test_a_hard_store_holds_the_top1_and_trains_exactly_like_a_soft_one(stores, tmp_path):
    soft, hard = stores
    s, h = TargetStore(str(soft)), TargetStore(str(hard))
    assert h.spec.targets == "hard" and h.spec.k == 1 and h.spec.temperatures == ()
    assert (s.read_epoch(0).indices[:, 0] == h.read_epoch(0).indices[:, 0]).all()
    assert (s.read_epoch(0).fingerprint == h.read_epoch(0).fingerprint).all()
    info = json.loads(CliRunner().invoke(main, ["inspect", str(hard), "--json"]).output)
    soft_info = json.loads(CliRunner().invoke(main, ["inspect", str(soft), "--json"]).output)
    # 12 B/view is the ImageNet-scale target (store benchmark); on 1,797 views zarr's
    # metadata files alone weigh ~3 B/view.
    assert info["targets"] == "hard" and info["bytes_per_view"] < soft_info["bytes_per_view"] / 2
    runs = {}
    for name, url in (("soft", soft), ("hard", hard)):
        out = tmp_path / name
        cfg = TrainConfig(
            out=str(out), store=str(url), model_overrides=TINY, epochs=1, batch_size=128,
            max_steps=3, device="cpu",
        )  # fmt: skip
        train(cfg)
        runs[name] = [
            json.loads(x)["loss"] for x in (out / "metrics.jsonl").open() if '"loss"' in x
        ]
    assert runs["soft"] == runs["hard"]
    soft_cfg = TrainConfig(out=str(tmp_path / "x"), store=str(hard), distill="soft")
    with pytest.raises(DeitPipeError, match="holds the teacher's top-1 class only"):
        train(soft_cfg)
