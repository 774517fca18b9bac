import json

from click.testing import CliRunner
from PIL import Image

from deit_pipe.cli import main


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["teacher_top1"] <= 1
    assert set(summary["students"]) == {"deit none", "deit⚗ hard"}
    assert set(summary["students"]["deit⚗ hard"]) == {"cls", "dist", "avg"}
    assert set(summary["students"]["deit none"]) == {"cls"}
    assert set(summary["seconds"]) == {
        "teacher",
        "precompute",
        "student deit none",
        "student deit⚗ hard",
        "audit",
    }
    assert 0 < summary["store_bytes_per_view"] < 100
    assert all(0 <= v <= 1 for v in summary["disagreement_with_teacher"].values())
    for name in ("agreement.json", "report.md", "agreement.png", "curves.png"):
        assert (out / "audit" / name).is_file()
    with Image.open(out / "audit" / "agreement.png") as img:
        assert img.size[0] > 600
    assert "deit-pipe demo on digits" in result.output and "bytes/view" in result.output
