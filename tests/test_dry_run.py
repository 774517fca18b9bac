"""`precompute --dry-run`: the cost of a store (views, bytes, throughput, loader workers,
memory) printed, nothing written, and an output path that is a user's file or folder refused."""

import math
import re

from tests.cli_utils import invoke, one_line, precompute
from tests.small_store_utils import PRE


def test_dry_run_prints_the_cost_and_writes_nothing(tmp_path):
    url = tmp_path / "never.zarr"
    result = precompute(url, "--dry-run", "--epochs", "18")
    assert "dry run: 26,226 views (25,866 train + 360 val; 18 training epochs)" in result.output
    assert "bytes/view" in result.output and "views/s (measured here" in result.output
    given = precompute(url, "--dry-run", "--targets", "hard", "--throughput", "100")
    assert "≈ 9.3 bytes/view" in given.output and "(given, cpu)" in given.output
    # 100 teacher views/s against this machine's measured render rate per loader worker.
    rate = float(re.search(r"render:\s+([\d,.]+) views/s", given.output)[1].replace(",", ""))
    assert f"--loader-workers {max(1, math.ceil(100 / rate))} per device" in given.output
    assert not url.exists()


def test_a_dry_run_refuses_a_users_file_as_out_and_states_its_memory(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    dry = [*PRE[:-2], "--dry-run", "--throughput", "5", "--out"]
    one_line(invoke(*dry, mine), str(mine), "is a file")
    folder = tmp_path / "photos"
    (folder / "a.jpg").parent.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    one_line(invoke(*dry, folder), "not a deit-pipe store", "a.jpg")
    assert mine.read_text() == "mine" and [p.name for p in folder.iterdir()] == ["a.jpg"]
    planned = invoke(*dry, tmp_path / "new.zarr")
    assert planned.exit_code == 0, planned.output
    memory = [line for line in planned.output.splitlines() if line.startswith("memory:")]
    assert len(memory) == 1 and "GiB a device" in memory[0] and "teacher weights" in memory[0]
    assert not (tmp_path / "new.zarr").exists()
