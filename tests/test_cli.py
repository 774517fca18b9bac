import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from deit_pipe import __version__
from deit_pipe.cli import main
from tests.cli_utils import invoke


def test_help_and_version():
    runner = CliRunner()
    assert "Usage" in runner.invoke(main, ["--help"]).output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    out = subprocess.run(
        [sys.executable, "-m", "deit_pipe", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "views" in out.stdout and "scan" in out.stdout


def test_views_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        main, ["views", "--data", "digits", "--count", "12", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size[0] > 400 and img.size[1] > 100
    assert "cutmix" in result.output or "mixup" in result.output


def test_the_cli_loads_without_torch_timm_or_zarr():
    """`--help` must answer fast: option choices come from `deit_pipe.choices`."""
    code = "import sys, deit_pipe.cli; print([m for m in ('torch', 'timm', 'zarr') "
    code += "if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nproc_per_node_in_either_form_relaunches_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append(cmd) or 0)
    for flag in (["--nproc-per-node=2"], ["--nproc-per-node", "2"]):
        args = ["train", *flag, "--out", "r", "--store", "s.zarr"]
        monkeypatch.setattr(sys, "argv", ["deit-pipe", *args])
        assert CliRunner().invoke(main, args).exit_code == 0
        cmd = calls[-1]
        assert "--nproc-per-node=2" in cmd and "2" not in cmd[cmd.index("deit_pipe") :]
        assert cmd[-4:] == ["--out", "r", "--store", "s.zarr"]


def test_srun_tasks_become_ranks():
    from deit_pipe.errors import ConfigError
    from deit_pipe.student.trainer import launch_env

    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert launch_env({**slurm, "MASTER_ADDR": "node1"}) == (3, 8, 1)
    assert launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **slurm}) == (1, 2, 1)
    assert launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1, 0)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launch_env(slurm)


def test_a_run_repeats_from_its_own_config(tmp_path):
    import torch

    store = tmp_path / "s.zarr"
    pre = [
        "precompute",
        "--data",
        "fake:40",
        "--teacher-model",
        "regnety_002",
        "--teacher-random-init",
    ]
    pre += ["--epochs", "1", "--batch-size", "40", "--dask-workers", "0", "--out", store]
    assert invoke(*pre).exit_code == 0
    tiny = ["--img-size", "32", "--patch-size", "8", "--depth", "1", "--embed-dim", "32"]
    first = ["train", "--store", store, "--out", tmp_path / "a", *tiny, "--num-heads", "2"]
    first += ["--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--train-seed", "5"]
    assert invoke(*first).exit_code == 0
    config = tmp_path / "a" / "config.json"
    assert invoke("train", "--config", config, "--out", tmp_path / "b").exit_code == 0
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same run, the same weights
    again = invoke("train", "--config", config, "--out", tmp_path / "c", "--lr", "1e-3")
    assert again.exit_code == 0, again.output
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["lr"] == 1e-3 and saved["train_seed"] == 5 and saved["batch_size"] == 16
    # A config.json saved before `seed` was renamed `train_seed` still repeats the run.
    old = json.loads(config.read_text())
    old["seed"] = old.pop("train_seed")
    (tmp_path / "old.json").write_text(json.dumps(old))
    repeated = invoke("train", "--config", tmp_path / "old.json", "--out", tmp_path / "d")
    assert repeated.exit_code == 0, repeated.output
    d = torch.load(tmp_path / "d" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], d[k]) for k in a)


def test_old_flag_spellings_work_for_one_release_with_a_note(tmp_path):
    scanned = invoke("scan", "--data", "digits", "--workers", "2")
    assert scanned.exit_code == 0, scanned.output
    assert "note: scan --workers is now --threads" in scanned.output
    old = ["precompute", "--data", "digits", "--teacher", "regnety_002", "--random-init"]
    old += ["--workers=0", "--seed", "3", "--recipe", "small", "--epochs", "1"]
    dry = invoke(*old, "--out", tmp_path / "s.zarr", "--dry-run")
    assert dry.exit_code == 0, dry.output
    for was, now in [("--teacher", "--teacher-model"), ("--workers", "--dask-workers"),
                     ("--seed", "--plan-seed"), ("--recipe", "--preset"),
                     ("--random-init", "--teacher-random-init")]:  # fmt: skip
        assert f"note: precompute {was} is now {now}" in dry.output
    assert "regnety_002" in dry.output and not (tmp_path / "s.zarr").exists()
    assert "note:" not in invoke("scan", "--data", "digits", "--threads", "2").output
