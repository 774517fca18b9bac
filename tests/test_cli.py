import subprocess
import sys

from click.testing import CliRunner
from PIL import Image

from deit_pipe import __version__
from deit_pipe.cli import main


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
