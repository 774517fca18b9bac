"""Several teachers in one store: added later, read alone or as a weighted ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deit_pipe.storage import TargetStore, dense_soft
from tests.cli_utils import invoke, one_line
from tests.store_utils import data_files

PRE = ["precompute", "--data", "fake:400", "--teacher-random-init", "--batch-size", "100"]
PRE += ["--dask-workers", "0", "--preset", "small", "--epochs", "2", "--top-k", "3"]
SMALL = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
SMALL += ["--num-heads", "2", "--batch-size", "64", "--epochs", "1"]
A, B = "regnety_002", "regnety_004"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    url = tmp_path_factory.mktemp("teachers") / "s.zarr"
    assert invoke(*PRE, "--out", url, "--teacher-model", A).exit_code == 0
    first = data_files(url)
    assert invoke(*PRE, "--out", url, "--teacher-model", B).exit_code == 0
    after = data_files(url)  # the first teacher's arrays are untouched by the second's
    assert all(after[k] == v for k, v in first.items() if not k.endswith("zarr.json"))
    return url


def _by_hand(t, slots, tau: float, classes: int) -> np.ndarray:
    """A teacher's stored distribution at τ from the raw arrays: exact on its top-k, the
    rest of the mass spread evenly."""
    z, lse = t.values[slots].astype(np.float64), t.lse[slots, t.temperatures.index(tau)]
    top = np.exp(z / tau - lse[:, None].astype(np.float64))
    dense = np.repeat(((1 - top.sum(1)) / (classes - z.shape[1]))[:, None], classes, axis=1)
    np.put_along_axis(dense, t.indices[slots].astype(np.int64), top, axis=1)
    return dense


def test_the_ensemble_is_the_weighted_mean_of_the_teachers(store):
    spec = TargetStore(str(store)).spec
    assert spec.teacher_names == [A, B]
    alone = [TargetStore(str(store), teacher=n).read_epoch(1) for n in (A, B)]
    both = TargetStore(str(store), teacher=f"{A}=0.7,{B}=0.3").read_epoch(1)
    slots = np.array([0, 5, 77, 399])
    for tau in (1.0, 3.0):
        want = 0.7 * _by_hand(alone[0], slots, tau, 10) + 0.3 * _by_hand(alone[1], slots, tau, 10)
        got = dense_soft(*both.soft_parts(slots, tau), 10).double().numpy()
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert np.allclose(got.sum(1), 1, atol=1e-6)
    mean = 0.7 * _by_hand(alone[0], slots, 1.0, 10) + 0.3 * _by_hand(alone[1], slots, 1.0, 10)
    assert both.hard(slots).tolist() == mean.argmax(1).tolist()
    np.testing.assert_array_equal(both.fingerprint, alone[0].fingerprint)
    # Equal weights by default; the default reader is the first teacher alone.
    even = TargetStore(str(store), teacher=f"{A},{B}").read_epoch(1)
    halves = (alone[0].soft(slots, 1.0) + alone[1].soft(slots, 1.0)) / 2
    assert torch.allclose(even.soft(slots, 1.0), halves, atol=1e-6)
    assert np.array_equal(TargetStore(str(store)).read_epoch(1).indices, alone[0].indices)
    # One teacher or an ensemble: the same members with the same shapes (`StoredTargets`).
    from deit_pipe.storage.epoch import StoredTargets

    for targets in (alone[0], both):
        assert isinstance(targets, StoredTargets)
        assert targets.top1.shape == targets.fingerprint.shape and targets.top1.dtype == np.int64
        assert targets.hard(slots).tolist() == targets.top1[slots].tolist()
        assert targets.soft(slots, 1.0).shape == (len(slots), 10)
        top, ids, tail = targets.soft_parts(slots, 1.0)
        assert top.shape == ids.shape and tail.shape == (len(slots),)


def test_a_student_distils_from_the_ensemble_and_the_audit_shows_each_teacher(store, tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "train", "--store", store, "--out", run, "--teacher-name", f"{A}=0.7,{B}=0.3",
        "--distill", "soft", *SMALL, "--max-steps", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["teacher_name"] == f"{A}=0.7,{B}=0.3"
    report = tmp_path / "audit"
    result = invoke("audit", "--store", store, "--run", run, "--out", report, "--train-views", 0)
    assert result.exit_code == 0, result.output
    doc = json.loads((report / "agreement.json").read_text())
    assert {"teacher", f"teacher {A}", f"teacher {B}"} <= set(doc["classifiers"])
    assert doc["store"]["teacher"] == f"{A}=0.7,{B}=0.3"
    shown = invoke("inspect", store).output
    assert f"{B} · checkpoint random init · 2/2 epochs complete" in shown


def test_unknown_or_clashing_teacher_names_are_one_line(store, tmp_path):
    train = ["train", "--store", store, "--out", tmp_path / "r", *SMALL, "--teacher-name"]
    one_line(invoke(*train, "nope"), "holds no teacher 'nope'", A)
    one_line(invoke(*train, f"{A}=-1,{B}"), "positive weight")
    assert not (tmp_path / "r").exists()
    before = data_files(store)
    clash = invoke(*PRE, "--out", store, "--teacher-model", "regnety_006", "--teacher-name", A)
    one_line(clash, f"another teacher named '{A}'", "--teacher-name")
    bad_name = invoke(*PRE, "--out", store, "--teacher-model", A, "--teacher-name", "a/b")
    one_line(bad_name, "--teacher-name")
    assert data_files(store) == before
