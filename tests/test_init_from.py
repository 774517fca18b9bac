"""`train --init-from` (DeiT's --finetune semantics), eval at another resolution, TrainConfig."""

import json

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from deit_pipe.cli import main
from deit_pipe.errors import InitFromError
from deit_pipe.student.config import TrainConfig
from deit_pipe.student.init_from import init_from
from deit_pipe.student.models import create_student

DEIT, VIT = "deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224"
ARCH = dict(patch_size=8, depth=1, embed_dim=32, num_heads=2)
TINY_ARGS = ["--patch-size", "8", "--depth", "1", "--embed-dim", "32", "--num-heads", "2"]


def source_file(tmp_path, name=DEIT, classes=10, img_size=32, kind="pth", **arch):
    model = create_student(name, classes, img_size=img_size, seed=7, **{**ARCH, **arch})
    path = tmp_path / f"{name}-{classes}-{img_size}.{kind}"
    state = model.state_dict()
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save({"model": state, "epoch": 3}, path)
    return model, path


def test_pos_embed_is_timm_bicubic_resampling_and_the_rest_is_copied(tmp_path):
    source, path = source_file(tmp_path, kind="safetensors")
    student = create_student(DEIT, 10, img_size=48, **ARCH)  # grid 4×4 → 6×6
    info = init_from(student, str(path))
    expected = resample_abs_pos_embed(
        source.pos_embed.detach(), [6, 6], num_prefix_tokens=2, interpolation="bicubic"
    )
    assert torch.equal(student.pos_embed.detach(), expected)
    assert torch.equal(student.pos_embed[:, :2], source.pos_embed[:, :2])  # cls, dist kept
    for key in ("cls_token", "dist_token", "blocks.0.attn.qkv.weight", "head_dist.weight"):
        assert torch.equal(student.state_dict()[key], source.state_dict()[key]), key
    assert len(info["sha256"]) == 64 and info["kind"] == "model file"
    assert any("4×4 to 6×6" in n for n in info["notices"])


def test_a_plain_source_into_a_distilled_student_and_back(tmp_path, caplog):
    vit, path = source_file(tmp_path, name=VIT)
    student = create_student(DEIT, 10, img_size=32, **ARCH)
    notices = init_from(student, str(path))["notices"]
    assert any("no distillation token" in n for n in notices)
    assert "head_dist starts as a copy of head" in notices
    assert torch.equal(student.dist_token, vit.cls_token)
    assert torch.equal(student.head_dist.weight, vit.head.weight)
    assert torch.equal(student.pos_embed[:, 1], vit.pos_embed[:, 0])
    assert "head_dist starts as a copy of head" in caplog.text  # said, not only recorded
    _, distilled = source_file(tmp_path)
    plain = create_student(VIT, 10, img_size=32, **ARCH)
    assert any("dropped" in n for n in init_from(plain, str(distilled))["notices"])


def test_another_class_count_reinitialises_the_heads(tmp_path):
    _, path = source_file(tmp_path, classes=1000)
    student = create_student(DEIT, 3, img_size=32, **ARCH)
    fresh = student.head.weight.detach().clone()
    notices = init_from(student, str(path))["notices"]
    assert "head predicts 1000 classes in the source, 3 here: re-initialised" in notices
    assert any(n.startswith("head_dist predicts 1000") for n in notices)
    assert torch.equal(student.head.weight, fresh)


def test_another_architecture_is_refused_naming_both_shapes(tmp_path):
    _, path = source_file(tmp_path, embed_dim=48, num_heads=2)
    student = create_student(DEIT, 10, img_size=32, **ARCH)
    with pytest.raises(InitFromError, match=r"is \(1, 1, 48\) in the source, \(1, 1, 32\) here"):
        init_from(student, str(path))
    resnet = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), resnet)
    with pytest.raises(InitFromError, match="another architecture"):
        init_from(student, str(resnet))
    with pytest.raises(InitFromError, match="timm:TAG"):
        init_from(student, str(tmp_path / "missing"))


def test_train_config_resolves_alpha_and_tau_from_the_mode():
    soft, hard = TrainConfig(out="x", distill="soft"), TrainConfig(out="x")
    assert (soft.alpha, soft.tau) == (0.1, 3.0) and (hard.alpha, hard.tau) == (0.5, 1.0)
    assert TrainConfig(out="x", distill="soft", tau=2.0).tau == 2.0
    small = TrainConfig(out="x").resolved("small")
    assert small.preset == "small" and small.epochs == 60 and small.lr == pytest.approx(1.6e-2)
    assert TrainConfig(out="x", lr=1e-3).resolved("small").lr == 1e-3  # given beats preset
    with pytest.raises(Exception, match="distill must be one of none, soft, hard"):
        TrainConfig(out="x", distill="medium")


def _precompute(url, size):
    args = ["precompute", "--data", "digits", "--out", str(url), "--epochs", "1"]
    args += ["--teacher-model", "regnety_002", "--teacher-random-init", "--dask-workers", "0"]
    args += ["--input-size", str(size), "--split", "train"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def test_fine_tune_at_a_higher_resolution_from_a_run(tmp_path):
    store32, store48 = tmp_path / "s32.zarr", tmp_path / "s48.zarr"
    _precompute(store32, 32)
    _precompute(store48, 48)
    base = ["--epochs", "1", "--batch-size", "128", "--max-steps", "2", "--device", "cpu"]
    run32 = tmp_path / "r32"
    first = CliRunner().invoke(
        main, ["train", "--store", str(store32), "--out", str(run32), "--img-size", "32"]
        + TINY_ARGS + base,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    run48 = tmp_path / "r48"
    tuned = CliRunner().invoke(
        main,
        ["train", "--store", str(store48), "--out", str(run48), "--init-from", str(run32)]
        + ["--preset", "finetune", "--lr", "1e-4"] + base,
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    config = json.loads((run48 / "config.json").read_text())
    assert config["model_overrides"] == {**ARCH, "img_size": 48}  # the source run's model
    assert config["init_from"]["source"] == str(run32 / "checkpoint.pt")
    assert len(config["init_from"]["sha256"]) == 64 and config["preset"] == "finetune"
    assert config["weight_decay"] == 1e-8 and config["lr"] == 1e-4
    at48 = CliRunner().invoke(
        main, ["eval", "--checkpoint", str(run32), "--input-size", "48", "--json"]
    )
    assert at48.exit_code == 0, at48.output
    assert json.loads(at48.output)["input_size"] == 48
    odd = CliRunner().invoke(main, ["eval", "--checkpoint", str(run32), "--input-size", "50"])
    assert odd.exit_code == 1 and "not a multiple of its 8-pixel patches" in odd.output
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    args = [
        "train",
        "--store",
        str(store48),
        "--out",
        str(tmp_path / "w"),
        "--init-from",
        str(text),
    ]
    wrong = CliRunner().invoke(main, args + base)
    assert wrong.exit_code == 1 and "is not a PyTorch checkpoint" in wrong.output
