import json

import pytest
from click.testing import CliRunner
from PIL import Image

from deit_pipe.cli import main

METRICS = {"top1", "top5", "precision", "recall", "f1", "auc"}


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["classifiers"]
    # The teacher, the ViT baseline (no token, no teacher) and DeiT⚗'s three heads.
    assert set(rows) == {"teacher regnety_002", "vit none", "deit⚗ hard"}
    assert set(rows["vit none"]) == {"cls"} and set(rows["deit⚗ hard"]) == {"cls", "dist", "avg"}
    for heads in rows.values():
        for metrics in heads.values():
            assert set(metrics) == METRICS
            assert all(0 <= metrics[k] <= 1 for k in METRICS - {"auc"})
    assert set(summary["disagreement_with_teacher"]) == {"vit none", "deit⚗ hard"}
    assert set(summary["seconds"]) == {"teacher", "precompute", "students", "audit"}
    # --quick stores 1 epoch for 2 student epochs: both runs replayed stored epoch 0 twice
    for run in ("vit_none", "deit_distilled_hard"):
        assert json.loads((out / run / "config.json").read_text())["cycle_epochs"] is True
    # The kernels rendered the stored views; the students replayed them with Pillow (auto on
    # a CPU) and every fingerprint agreed, or training would have stopped.
    made = summary["rendering"]["store"]
    assert made["render"] == "device" and made["kernels"] == made["views"] > 0
    assert set(summary["rendering"]["students"].values()) == {"host"}
    assert summary["recipe"] == "small" and 0 < summary["store_bytes_per_view"] < 100
    report = (out / "audit" / "report.md").read_text()
    assert "vit_tiny none" in report and "deit_tiny⚗ hard / dist head" in report
    for name in ("agreement.json", "report.md", "agreement.png", "curves.png"):
        assert (out / "audit" / name).is_file()
    with Image.open(out / "audit" / "agreement.png") as img:
        assert img.size[0] > 600
    assert "deit-pipe demo on digits" in result.output and "bytes/view" in result.output
    assert "through the tensor kernels" in result.output
    assert "vit none" in result.output and "deit⚗ hard · dist" in result.output
