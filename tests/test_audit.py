import json

import numpy as np
import pytest
import timm
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from deit_pipe.audit import classifier_metrics, disagreement_matrix
from deit_pipe.cli import main
from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig

TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
RECIPE = Recipe(view=ViewConfig.for_source(open_source("digits")))


def test_matrix_on_hand_built_predictions():
    names, m = disagreement_matrix(
        {"a": np.array([0, 1, 2, 3]), "b": np.array([0, 1, 0, 0]), "c": np.array([1, 1, 2, 0])}
    )
    assert names == ["a", "b", "c"]
    expected = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    np.testing.assert_allclose(m, expected)
    np.testing.assert_allclose(m, m.T)


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), 200)
    labels = rng.integers(0, 6, 200)
    m = classifier_metrics(probs, labels, 6)
    pred = probs.argmax(1)
    assert m["top1"] == pytest.approx((pred == labels).mean())
    assert m["precision"] == pytest.approx(
        precision_score(labels, pred, average="macro", zero_division=0)
    )
    assert m["recall"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    top5 = np.argsort(-probs, 1)[:, :5]
    assert m["top5"] == pytest.approx((top5 == labels[:, None]).any(1).mean())


def digits_job(url: str) -> Job:
    return Job(
        url=url,
        data="digits",
        recipe=RECIPE,
        batch_size=256,
        teacher=TeacherConfig("regnety_002", random_init=True),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    url = str(root / "store.zarr")
    job = digits_job(url)
    precompute(job, StoreRequest(epochs=1, shard_views=512), workers=0)
    runs = []
    for name, model, distill in [
        ("plain", "deit_tiny_patch16_224", "none"),
        ("hard", "deit_tiny_distilled_patch16_224", "hard"),
    ]:
        cfg = TrainConfig(
            out=str(root / name),
            store=url,
            model=model,
            model_overrides=TINY,
            distill=distill,
            epochs=1,
            batch_size=128,
            warmup_epochs=0.2,
        )
        train(cfg)
        runs.append(root / name)
    return url, runs, root


def test_audit_of_two_runs_writes_everything(setup, tmp_path, monkeypatch):
    url, runs, _ = setup
    real_create = timm.create_model

    def no_teacher(name, *a, **kw):
        assert not name.startswith("regnet"), "audit must not construct a teacher"
        return real_create(name, *a, **kw)

    monkeypatch.setattr(timm, "create_model", no_teacher)
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        main,
        [
            "audit",
            "--store",
            url,
            "--run",
            str(runs[0]),
            "--run",
            str(runs[1]),
            "--out",
            str(out),
            "--train-views",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("agreement.json", "agreement.png", "curves.png", "report.md"):
        assert (out / name).is_file()
    doc = json.loads((out / "agreement.json").read_text())
    assert doc["classifiers"][:2] == ["ground truth", "teacher"]
    assert doc["classifiers"][2:] == [
        "vit_tiny none",
        "deit_tiny⚗ hard / cls head",
        "deit_tiny⚗ hard / dist head",
        "deit_tiny⚗ hard / cls+dist",
    ]
    m = np.array(doc["matrix"])
    assert m.shape == (6, 6) and (m >= 0).all() and (m <= 1).all()
    np.testing.assert_allclose(np.diag(m), 0)
    np.testing.assert_allclose(m, m.T)
    for metrics in doc["metrics"].values():
        assert set(metrics) == {"top1", "top5", "precision", "recall", "f1", "auc"}
    assert {"store", "runs", "train_view_agreement"} <= set(doc)
    assert doc["train_view_agreement"]["deit_tiny⚗ hard"]["views"] >= 64
    with Image.open(out / "agreement.png") as img:
        assert img.size[0] >= 600 and img.size[1] >= 500
    with Image.open(out / "curves.png") as img:
        assert img.size == (1210, 440)
    assert "Table 4" in (out / "report.md").read_text()


def test_run_on_another_dataset_is_refused(setup, tmp_path):
    url, _, root = setup
    other = root / "fake-run"
    train(
        TrainConfig(
            out=str(other),
            data="fake:64",
            model="deit_tiny_patch16_224",
            model_overrides=TINY,
            distill="none",
            epochs=1,
            batch_size=32,
            max_steps=1,
        )
    )
    result = CliRunner().invoke(
        main, ["audit", "--store", url, "--run", str(other), "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 1 and "trained on dataset fake:64" in result.output


def test_store_without_val_says_how_to_make_it(setup, tmp_path):
    _, runs, _ = setup
    url = str(tmp_path / "train-only.zarr")
    job = digits_job(url)
    precompute(job, StoreRequest(epochs=1, splits=("train",), shard_views=512), workers=0)
    result = CliRunner().invoke(
        main, ["audit", "--store", url, "--run", str(runs[0]), "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 1 and "precompute --split val" in result.output
