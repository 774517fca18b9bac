"""`export`: a run's student in timm's folder layout, loaded by timm alone, answers exactly
as `deit-pipe eval` does; its model card carries eval's and audit's numbers."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.evaluate import predict
from deit_pipe.student.metrics import classifier_metrics
from deit_pipe.student.runs import evaluate_checkpoint, load_run
from deit_pipe.student.tblog import scalars
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig
from tests.cli_utils import invoke, one_line

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    HAS_TB = True
except ImportError:  # the `test` extra installs it; elsewhere the TensorBoard tests skip
    HAS_TB = False
needs_tb = pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (test extra)")
TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
IMAGES = 48  # val images the fresh process classifies
# A fresh interpreter with timm alone: the folder must carry everything (no deit_pipe).
TIMM_ONLY = r"""
import json, sys
import numpy as np, timm, torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
images, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for folder in sys.argv[4:]:
    m = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    tf = create_transform(**resolve_data_config(model=m))
    x = torch.stack([tf(Image.open(f"{images}/{i}.png").convert("RGB")) for i in range(count)])
    with torch.no_grad():
        np.save(f"{out}/{folder.replace('/', '_')}.npy", m(x).numpy())
assert not any(k.startswith("deit_pipe") for k in sys.modules), "deit_pipe was imported"
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A tiny distilled student (with EMA) trained one epoch from a digits store, audited."""
    root = tmp_path_factory.mktemp("export")
    url = str(root / "store.zarr")
    recipe = Recipe(view=ViewConfig.for_source(open_source("digits")))
    teacher = TeacherConfig("regnety_002", random_init=True)
    job = Job(url=url, data="digits", recipe=recipe, teacher=teacher, batch_size=256)
    precompute(job, StoreRequest(epochs=1, shard_views=512), workers=0)
    run = root / "run"
    cfg = TrainConfig(
        out=str(run),
        store=url,
        model="deit_tiny_distilled_patch16_224",
        model_overrides=TINY,
        distill="hard",
        epochs=1,
        batch_size=128,
        warmup_epochs=0.2,
        ema=True,
        ema_decay=0.9,
        tensorboard=HAS_TB,
    )
    train(cfg)
    report = root / "audit"
    result = invoke("audit", "--store", url, "--run", run, "--out", report, "--train-views", 64)
    assert result.exit_code == 0, result.output
    return run, report


@pytest.fixture(scope="module")
def val_pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("val")
    split = open_source("digits").split("val")
    for i in range(IMAGES):
        split.load(i).save(folder / f"{i}.png")  # lossless: the same pixels eval decodes
    return folder


EXPORTS = [(False, None, "avg"), (True, "cls", "cls"), (False, "dist", "dist")]


def test_timm_alone_reproduces_eval(audited, val_pngs, tmp_path):
    run, _ = audited
    folders = []
    for ema, head, _ in EXPORTS:
        out = tmp_path / f"ema{int(ema)}-{head}"
        args = ["export", run, "--out", out, *(["--ema"] if ema else [])]
        result = invoke(*args, *(["--head", head] if head else []))
        assert result.exit_code == 0, result.output
        folders.append(out)
    done = subprocess.run(
        [sys.executable, "-c", TIMM_ONLY, str(val_pngs), str(tmp_path), str(IMAGES)]
        + [str(f) for f in folders],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    loaded = load_run(run)
    split = open_source("digits").split("val")
    for (ema, _, head), out in zip(EXPORTS, folders, strict=True):
        ours = predict(loaded.model(ema), split, loaded.recipe.view, indices=range(IMAGES))
        theirs = np.load(tmp_path / f"{str(out).replace('/', '_')}.npy")
        np.testing.assert_allclose(theirs, ours[head].numpy(), rtol=0, atol=1e-6)
        config = json.loads((out / "config.json").read_text())
        assert config["label_names"] == [str(i) for i in range(10)]
        assert config["model_args"]["depth"] == 1 and config["model_args"]["patch_size"] == 8
        assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
        assert "license" not in config["pretrained_cfg"]  # facebook's, not this student's


def card_rows(text: str, title: str) -> dict[str, list[float]]:
    section = text.split(title, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| ([\d.| –]+)\|$", section, flags=re.M)
    return {h: [float(v) for v in cells.split("|") if v.strip()] for h, cells in rows}


def test_card_numbers_are_eval_and_audit(audited, tmp_path):
    run, report = audited
    out = tmp_path / "model"
    result = invoke("export", run, "--out", out, "--audit", report)
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    evaluated = evaluate_checkpoint(run)["heads"]
    loaded = load_run(run)
    split = open_source("digits").split("val")
    logits = predict(loaded.model(), split, loaded.recipe.view)
    table = card_rows(card, "## Evaluation on val")
    assert set(table) == {"cls", "dist", "avg"}
    doc = json.loads((report / "agreement.json").read_text())
    for head, row in table.items():
        m = classifier_metrics(torch.softmax(logits[head], 1).numpy(), split.labels, 10)
        keys = ("top1", "top5", "precision", "recall", "f1", "auc")
        assert row == [round(m[k], 4) for k in keys]
        assert row[:2] == [round(evaluated[head][k], 4) for k in ("top1", "top5")]
        label = {"cls": "cls head", "dist": "dist head", "avg": "cls+dist"}[head]
        audit_m = doc["metrics"][f"deit_tiny⚗ hard / {label}"]
        assert row == [round(audit_m[k], 4) for k in keys]  # the audit saw the same views
    agreement = card_rows(card, "## Agreement with the teacher")
    train_agree = doc["train_view_agreement"]["deit_tiny⚗ hard"]
    teacher = doc["classifiers"].index("teacher")
    for head, (disagree, agree) in agreement.items():
        label = {"cls": "cls head", "dist": "dist head", "avg": "cls+dist"}[head]
        i = doc["classifiers"].index(f"deit_tiny⚗ hard / {label}")
        assert disagree == round(doc["matrix"][i][teacher], 4)
        assert agree == round(train_agree[head], 4)
    cfg = json.loads((run / "config.json").read_text())
    for text in (cfg["dataset_fingerprint"], cfg["store"], "regnety_002", "τ = 1", "α = 0.5"):
        assert text in card
    assert "![curves](curves.png)" in card and (out / "curves.png").stat().st_size > 0


def test_refusals(audited, tmp_path):
    run, _ = audited
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    one_line(invoke("export", run, "--out", theirs), "notes.txt", "did not write")
    assert (theirs / "notes.txt").read_text() == "mine"
    (theirs / "notes.txt").unlink()
    (theirs / "README.md").write_text("my card")  # a name export writes, in an unmarked folder
    one_line(invoke("export", run, "--out", theirs), "--force")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor record
    (damaged / "checkpoint.pt").write_bytes(bytes(data))
    one_line(invoke("export", damaged, "--out", tmp_path / "m"), "fails its checksum")
    assert not (tmp_path / "m").exists()
    # A rerun over its own output replaces it.
    assert invoke("export", run, "--out", tmp_path / "again").exit_code == 0
    assert invoke("export", run, "--out", tmp_path / "again", "--head", "cls").exit_code == 0


def events(run) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}


@needs_tb
def test_tensorboard_mirrors_metrics_jsonl(audited):
    run, report = audited
    logged = events(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, dict[int, float]] = {}
    for record in records:
        for tag, value in scalars(record).items():
            expected.setdefault(tag, {})[record["step"]] = value
    assert {"train/loss", "train/lr", "train/img_s", "eval/avg/top1", "eval/ema_dist/top5"} <= set(
        expected
    )
    train_tags = {t: v for t, v in logged.items() if not t.startswith("audit")}
    assert set(train_tags) == set(expected)
    for tag, by_step in expected.items():  # event files hold float32
        assert train_tags[tag] == {s: float(np.float32(v)) for s, v in by_step.items()}, tag
    # `audit` added its agreement at the checkpoint's step, as agreement.json has it
    doc = json.loads((report / "agreement.json").read_text())
    step = load_run(run).checkpoint["step"]
    for head, label in (("cls", "cls head"), ("avg", "cls+dist")):
        top1 = doc["metrics"][f"deit_tiny⚗ hard / {label}"]["top1"]
        assert logged[f"audit/{head}/top1"] == {step: float(np.float32(top1))}
    agree = doc["train_view_agreement"]["deit_tiny⚗ hard"]["dist"]
    assert logged["audit/dist/train_view_agreement"] == {step: float(np.float32(agree))}


def test_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    result = invoke("train", "--data", "digits", "--out", tmp_path / "run", "--tensorboard")
    one_line(result, "--tensorboard needs the tensorboard package")
    assert not (tmp_path / "run").exists()


def test_an_export_is_shareable_and_an_unfinished_run_says_so(audited, tmp_path):
    run, _ = audited
    out = tmp_path / "done"
    assert invoke("export", run, "--out", out).exit_code == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"], modes  # not owner-only
    assert "Unfinished" not in (out / "README.md").read_text()
    short = tmp_path / "short"
    cfg = TrainConfig(
        out=str(short), store=str(run.parent / "store.zarr"), model_overrides=TINY, epochs=1,
        batch_size=128, max_steps=2, device="cpu",
    )  # fmt: skip
    train(cfg)
    result = invoke("export", short, "--out", tmp_path / "early")
    assert result.exit_code == 0, result.output
    assert "stopped at step 2 of 11" in " ".join(result.output.split())
    assert (
        "**Unfinished run**: exported at step 2 of 11" in (tmp_path / "early/README.md").read_text()
    )


def test_tensorboard_where_its_folder_is_a_file_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tb").write_text("mine")
    result = invoke("train", "--data", "digits", "--out", run, "--tensorboard", "--resume")
    one_line(result, f"{run / 'tb'} is a file")
    assert (run / "tb").read_text() == "mine" and sorted(p.name for p in run.iterdir()) == ["tb"]


def test_deit_pipes_own_outputs_are_named_as_such_when_refused(audited, tmp_path):
    run, report = audited
    store = run.parent / "store.zarr"
    before = sorted(p.name for p in run.iterdir())
    one_line(invoke("export", run, "--out", run), f"{run} is a training run", "not a folder")
    assert sorted(p.name for p in run.iterdir()) == before
    trained = invoke("train", "--store", store, "--out", store, "--device", "cpu")
    one_line(trained, f"{store} is a target store, not a folder for the run")
    one_line(invoke("export", run, "--out", report), "is deit-pipe's audit report")
