"""`make bench-replay`'s small mode runs end to end, so the script cannot rot: a teacher,
a verified store, online and offline students over two seeds, the JSON and the plot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_replay_benchmark_small_mode_runs(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "replay_accuracy.py"), "--small"]
    done = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "replay.json").read_text())
    assert set(result["rows"]) == {"online hard", "hard E=1"}
    for row in result["rows"].values():
        assert len(row["top1"]) == 2 and all(0 <= t <= 1 for t in row["top1"])
    assert result["rows"]["hard E=1"]["bytes_per_image"] > 0
    assert (tmp_path / "replay.png").stat().st_size > 0
    assert "| online hard |" in done.stdout
