"""Every bad input: one line naming the culprit, a non-zero exit, nothing created: bad
values, numbers that would size an allocation, flags that contradict or lack what they
modify."""

import os
from pathlib import Path

import pytest
import timm
import torch

from deit_pipe.data import open_source
from deit_pipe.errors import StoreAccessError
from deit_pipe.storage.io import storage_errors
from tests.cli_utils import invoke, one_line
from tests.small_store_utils import SMALL, A

PRE = ["precompute", "--data", "fake:40", "--teacher-model", "regnety_002", "--teacher-random-init"]
PRE += ["--epochs", "1", "--batch-size", "40", "--dask-workers", "0", "--preset", "small"]
TINY = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
TINY += ["--num-heads", "2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    url = tmp_path_factory.mktemp("s") / "s.zarr"
    assert invoke(*PRE, "--out", url).exit_code == 0
    return url


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "11"], "--top-k 11 exceeds the dataset's 10 classes"),
        (["--batch-size", "0"], "--batch-size"),
        (["--shard-views", "0"], "--shard-views"),
        (["--shard-views", "7"], "--shard-views must be even"),
        (["--input-size", "0"], "--input-size"),
        (["--temperatures", "abc"], "--temperatures"),
        (["--temperatures", "1,0"], "τ must be finite and positive, got 0"),
        (["--repeats", "0"], "--repeats"),
        (["--reprob", "1.5"], "--reprob"),
        (["--remode", "blur"], "--remode"),
        (["--mixup", "-1"], "--mixup"),
        (["--aa", "nonsense"], "--aa"),
        (["--loader-workers", "-1"], "--loader-workers"),
        (["--nonexistent-flag"], "--nonexistent-flag"),
    ],
)
def test_bad_precompute_values_create_nothing(tmp_path, args, needle):
    out = tmp_path / "s.zarr"
    one_line(invoke(*PRE, "--out", out, *args), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--epochs", "0"], "--epochs must be ≥ 1"),
        (["--batch-size", "0"], "--batch-size must be ≥ 2"),
        (["--batch-size", "-4"], "--batch-size must be ≥ 2"),
        (["--batch-size", "9"], "--batch-size must be even"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--lr", "nan"], "--lr must be > 0 and ≤ 10, got nan"),
        (["--lr", "inf"], "--lr must be > 0 and ≤ 10, got inf"),
        (["--lr", "1e30"], "--lr must be > 0 and ≤ 10, got 1e+30"),
        (["--min-lr", "inf"], "--min-lr must be in [0, 10], got inf"),
        (["--warmup-lr", "-1"], "--warmup-lr must be in [0, 10], got -1"),
        (["--warmup-epochs", "inf"], "--warmup-epochs must be in [0, 100000], got inf"),
        (["--weight-decay", "nan"], "--weight-decay must be in [0, 10], got nan"),
        (["--clip-grad", "inf"], "--clip-grad must be finite and > 0, got inf"),
        (["--smoothing", "nan"], "--smoothing must be in [0, 1], got nan"),
        (["--tau", "inf"], "--tau must be > 0 and ≤ 100, got inf"),
        (["--epochs", "1000000000000"], "--epochs must be ≤ 100000"),
        (["--eval-every", "0"], "--eval-every must be ≥ 1"),
        (["--tau", "0"], "--tau must be > 0"),
        (["--drop-path", "2"], "--drop-path must be in [0, 1]"),
        (["--embed-dim", "30", "--num-heads", "4"], "divisible by num_heads"),
        (["--patch-size", "7"], "--patch-size 7 does not divide the 32×32 views"),
        ([], "holds 1 training epochs but this run needs 60"),  # the preset's epochs
        (["--plan-seed", "3"], "--plan-seed sets the views' recipe"),  # ignored silently before
        (["--reprob", "0.5"], "--reprob sets the views' recipe"),
    ],
)
def test_bad_train_values_are_refused_before_the_run_exists(tmp_path, store, args, needle):
    out = tmp_path / "run"
    epochs = [] if not args else ["--epochs", "1"]
    result = invoke("train", "--store", store, "--out", out, *TINY, "--batch-size", "16",
                    *epochs, "--max-steps", "1", *args)  # fmt: skip
    one_line(result, needle)
    assert not out.exists()


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, store):
    out = tmp_path / "run"
    base = ["train", "--store", store, "--out", out, *TINY, "--epochs", "1", "--max-steps", "1"]
    assert invoke(*base, "--batch-size", "16").exit_code == 0
    config = (out / "config.json").read_bytes()
    one_line(invoke(*base, "--batch-size", "8", "--resume"), "batch_size 16 → 8")
    one_line(invoke(*base, "--batch-size", "16", "--distill", "soft", "--resume"), "distill")
    assert (out / "config.json").read_bytes() == config
    assert invoke(*base, "--batch-size", "16", "--resume", "--max-steps", "2").exit_code == 0
    one_line(invoke(*base, "--batch-size", "16"), "already holds a run; pass --resume")


def test_outputs_never_go_into_a_users_folder(tmp_path, store):
    users = tmp_path / "docs"
    users.mkdir()
    (users / "notes.md").write_text("my own notes")
    run = ["train", "--store", store, "--out", users, *TINY, "--epochs", "1", "--batch-size", "16"]
    one_line(invoke(*run), "holds files deit-pipe did not write (notes.md)")
    one_line(invoke("train", "--store", store, "--out", "", *TINY), "--out is empty")
    one_line(invoke("audit", "--store", store, "--run", tmp_path, "--out", users), "notes.md")
    one_line(invoke("demo", "--out", users, "--quick"), "notes.md")
    assert (users / "notes.md").read_text() == "my own notes"
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    one_line(invoke(*run[:4], blocker / "run", *run[5:]), "cannot create the run directory")
    one_line(invoke(*PRE, "--out", blocker / "s.zarr"), "Not a directory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_refused(tmp_path, store):
    one_line(invoke(*PRE, "--out", tmp_path / "c.zarr", "--device", "cuda"), "--device cuda")
    train = ["train", "--store", store, "--out", tmp_path / "r", *TINY, "--epochs", "1"]
    one_line(invoke(*train, "--batch-size", "16", "--device", "cuda"), "--device cuda")
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "r").exists()


def test_teacher_weights_of_another_size_name_the_key_and_shapes(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(timm.create_model("regnety_002", num_classes=10).state_dict(), path)
    args = [a for a in PRE if a != "--teacher-random-init"] + ["--out", tmp_path / "t.zarr"]
    args[args.index("regnety_002")] = "regnety_004"
    one_line(
        invoke(*args, "--teacher-checkpoint", path), f"{path} does not fit regnety_004", "shape"
    )
    assert not (tmp_path / "t.zarr").exists()


def test_a_pickle_that_holds_code_is_refused_saying_why(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    args = [a for a in PRE if a != "--teacher-random-init"] + ["--out", tmp_path / "t.zarr"]
    one_line(invoke(*args, "--teacher-checkpoint", path), "weights_only=True) refused", "system")


def test_scans_follow_no_link_out_of_a_class_or_round_a_loop(imagefolder):
    cat, dog = imagefolder / "train" / "cat", imagefolder / "train" / "dog"
    (cat / "loop").symlink_to(cat)  # back up into itself
    (cat / "dogs").symlink_to(dog)  # into another class
    (dog / "nested").mkdir()
    (cat / "more").symlink_to(dog / "nested")  # out of the class: not cat's images
    source = open_source(f"imagefolder:{imagefolder}")
    labels = source.split("train").labels.tolist()
    assert labels.count(0) == 6 and labels.count(1) == 6 and len(labels) == 18


def test_a_local_permission_error_names_the_path_not_credentials(tmp_path):
    with pytest.raises(StoreAccessError) as info, storage_errors(str(tmp_path)):
        raise PermissionError(13, "Permission denied", str(tmp_path / "zarr.json"))
    assert "permission denied" in str(info.value) and "credentials" not in str(info.value)
    with pytest.raises(StoreAccessError, match="credentials"), storage_errors("s3://b/s.zarr"):
        raise PermissionError(13, "Forbidden")


def test_views_refuses_bad_values_and_replaces_a_file_only_when_forced(tmp_path):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my own picture")
    views = ["views", "--data", "fake:40", "--count", "2"]
    for args, needle in [
        (["--count", "0"], "--count must be between 1 and 512, got 0"),
        (["--epoch", "-1"], "--epoch must be in [0, 100000), got -1"),
        (["--out", tmp_path / "x.txt"], "x.txt: the picture is written as .png"),
        (["--out", mine], f"{mine} exists: pass --force"),
        (["--out", tmp_path / "dir.png", "--force"], "is a directory"),
    ]:
        (tmp_path / "dir.png").mkdir(exist_ok=True)
        one_line(invoke(*views, "--out", tmp_path / "new.png", *args), needle)
    assert mine.read_bytes() == b"my own picture" and not (tmp_path / "new.png").exists()
    assert invoke(*views, "--out", tmp_path / "new.png").exit_code == 0
    assert invoke(*views, "--out", mine, "--force").exit_code == 0
    assert mine.read_bytes().startswith(b"\x89PNG")


def test_audit_replaces_only_a_report_it_marked_unless_forced(tmp_path, store):
    run = tmp_path / "run"
    train = ["train", "--store", store, "--out", run, *TINY, "--epochs", "1", "--batch-size", "16"]
    assert invoke(*train, "--max-steps", "1").exit_code == 0
    users = tmp_path / "docs"
    users.mkdir()
    (users / "report.md").write_text("my report")  # only a name the audit writes too
    audit = ["audit", "--store", store, "--run", run, "--train-views", "0", "--out"]
    one_line(invoke(*audit, users), "report.md, which deit-pipe did not mark", "--force")
    assert [p.name for p in users.iterdir()] == ["report.md"]
    assert (users / "report.md").read_text() == "my report"
    assert invoke(*audit, tmp_path / "a").exit_code == 0
    assert invoke(*audit, tmp_path / "a").exit_code == 0  # its own earlier report: replaced
    assert invoke(*audit, users, "--force").exit_code == 0
    assert (users / "report.md").read_text() != "my report"


def test_a_demo_rerun_never_removes_a_users_file_inside_its_folders(tmp_path):
    from deit_pipe.outputs import mark_output

    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.json").write_text("{}")  # a demo's name, in a folder no demo marked
    one_line(invoke("demo", "--out", old, "--quick"), "summary.json", "--force")
    demo = tmp_path / "demo"
    (demo / "teacher.zarr" / "train").mkdir(parents=True)
    (demo / "teacher.zarr" / "train" / "NOTES.txt").write_text("mine")
    (demo / "audit").mkdir()
    mark_output(demo, "demo")
    one_line(invoke("demo", "--out", demo, "--quick"), "teacher.zarr/train/NOTES.txt")
    (demo / "audit" / "notes.md").write_text("mine")
    one_line(invoke("demo", "--out", demo, "--quick", "--force"), "notes.md")
    assert (demo / "teacher.zarr" / "train" / "NOTES.txt").read_text() == "mine"
    assert (old / "summary.json").read_text() == "{}"


def test_a_config_json_with_a_bad_value_or_an_unknown_key_is_refused_naming_it(tmp_path, store):
    import json

    config = tmp_path / "config.json"
    run = ["train", "--config", config, "--out", tmp_path / "run"]
    for doc, needle in [
        ({"distill": "hard", "store": str(store), "lr": "fast"}, "key 'lr' must be a number"),
        ({"distill": "hard", "store": str(store), "epochs": 1.5}, "'epochs' must be a whole"),
        ({"distill": "hard", "learning_rate": 0.1, "lr_typo": 1}, "unknown key 'learning_rate'"),
        ({"distill": "hard", "teacher": {"name": "x"}}, "key 'teacher' is malformed"),
    ]:
        config.write_text(json.dumps(doc))
        one_line(invoke(*run), f"--config {config}", needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("poison", ["loss", "grad norm", "weights"])
def test_a_diverged_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, store, monkeypatch, poison
):
    """A NaN loss read back at step 3, an infinite gradient norm there (--clip-grad), or
    weights made NaN by step 4's update while its loss was still finite: the run stops with
    one line, exit 1, and the step-2 checkpoint stays."""
    import deit_pipe.student.train as train_module
    from deit_pipe.student.checkpoint import load_checkpoint

    original = train_module.train_step

    def poisoned(tr, batch):
        values = original(tr, batch)
        if poison == "loss" and tr.step == 2:  # the third step
            values["loss"] = values["loss"] * float("nan")
        if poison == "weights" and tr.step == 3:  # the fourth, whose end saves
            next(tr.model.parameters()).data.fill_(float("nan"))
        return values

    clip = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip_poisoned(parameters, max_norm):
        calls.append(1)
        norm = clip(parameters, max_norm)
        return norm * float("inf") if len(calls) == 3 else norm

    monkeypatch.setattr(train_module, "train_step", poisoned)
    if poison == "grad norm":
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_poisoned)
    out = tmp_path / "run"
    result = invoke("train", "--store", store, "--out", out, *TINY, "--batch-size", "16",
                    "--epochs", "3", "--cycle-epochs", "--clip-grad", "1")  # fmt: skip
    step = 4 if poison == "weights" else 3
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.output  # after the progress
    assert "Traceback" not in result.output and result.output.rstrip().endswith(errors[0])
    assert f"training diverged at step {step} (epoch 1)" in errors[0], errors[0]
    assert "the last good checkpoint (step 2) is kept" in errors[0]
    said = {"loss": "loss is nan", "grad norm": "grad norm is inf", "weights": "weights are no"}
    assert said[poison] in errors[0], errors[0]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_damaged_group_metadata_file_is_one_line_on_inspect_and_repair(tmp_path, store):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    (copy / "train" / "zarr.json").write_text("{}")
    one_line(invoke("inspect", copy), "train/zarr.json is damaged", "restore it")
    repaired = invoke(*PRE, "--out", copy, "--repair")
    one_line(repaired, "train/zarr.json is damaged", "--overwrite")
    assert (copy / "train" / "zarr.json").read_text() == "{}"


PRE_DIGITS = [
    "precompute",
    "--data",
    "digits",
    "--teacher-model",
    "regnety_002",
    "--teacher-random-init",
]
PRE_DIGITS += ["--out", "s.zarr", "--epochs", "1", "--dask-workers", "0"]
HUGE = str(10**12)


@pytest.mark.parametrize(
    "args,needle",
    [
        ([*PRE_DIGITS, "--input-size", "100000", "--dry-run"], "--input-size must be in [8, 4096]"),
        ([*PRE_DIGITS, "--batch-size", HUGE, "--dry-run"], "--batch-size"),
        ([*PRE_DIGITS, "--input-size", "4096", "--batch-size", "65536", "--dry-run"], "GiB"),
        ([*PRE_DIGITS[:-4], "--dask-workers", "0", "--epochs", HUGE, "--dry-run"], "--epochs"),
        ([*PRE_DIGITS, "--shard-views", str(2**30), "--dry-run"], "--shard-views must be ≤"),
        ([*PRE_DIGITS, "--loader-workers", "100000"], "--loader-workers must be ≤"),
        (["train", "--store", "none.zarr", "--out", "run", "--img-size", "100000"], "--img-size"),
        (["train", "--store", "none.zarr", "--out", "run", "--batch-size", HUGE], "--batch-size"),
        (["views", "--data", "digits", "--input-size", "100000"], "--input-size"),
        (["views", "--data", "digits", "--epoch", HUGE], "--epoch"),
        (["verify", "none.zarr", "--sample", "-1"], "--sample"),
        (["verify", "none.zarr", "--loader-workers", "-1"], "--loader-workers"),
        (["verify", "none.zarr", "--loader-workers", "100000"], "--loader-workers"),
        (["scan", "--data", "digits", "--threads", "0"], "--threads"),
        (
            ["audit", "--store", "none.zarr", "--run", "r", "--out", "a", "--train-views", "-1"],
            "--train-views",
        ),  # fmt: skip
        (
            ["scan", "--data", "digits", "--storage-options", '{"client_kwargs":5}'],
            "--storage-options 'client_kwargs' must be a JSON object, got 5",
        ),  # fmt: skip
        (["verify", "none.zarr", "--storage-options", '{"config_kwargs":[1]}'], "config_kwargs"),
    ],
)
def test_numbers_that_size_allocations_are_bounded_in_one_line(tmp_path, monkeypatch, args, needle):
    """Each is refused before anything is allocated or created (the dry run of
    --input-size 100000 took 23.6 GB before)."""
    monkeypatch.chdir(tmp_path)
    one_line(invoke(*args), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--teacher-model", A], "--teacher-model runs a teacher online"),
        (["--teacher-random-init"], "--teacher-random-init runs a teacher online"),
        (["--teacher-checkpoint", "t.pth"], "--teacher-checkpoint runs a teacher online"),
    ],
)
def test_an_online_teacher_beside_a_store_is_refused_not_ignored(made, tmp_path, extra, needle):
    run = tmp_path / "run"
    one_line(invoke("train", "--store", made, "--out", run, *SMALL, *extra), needle, "--store")
    assert not run.exists()


def test_teacher_flags_without_what_they_modify_are_refused(tmp_path):
    run = ["train", "--data", "digits", "--out", tmp_path / "run", *SMALL]
    one_line(invoke(*run, "--teacher-pretrained"), "--teacher-pretrained", "--teacher-model")
    one_line(invoke(*run, "--teacher-name", A), "--teacher-name", "--store")
    assert not (tmp_path / "run").exists()
