"""Running the CLI in-process and checking that a refusal is one line naming its culprit."""

from __future__ import annotations

from click.testing import CliRunner

from deit_pipe.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, *needles) -> str:
    """A refusal: non-zero exit, one line of output naming what it must."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def precompute(url, *extra, data: str = "digits", epochs: int = 1):
    """`precompute` of a random-init regnety_002 teacher without dask, which must succeed
    (`extra` flags come last, so they may override the epochs)."""
    args = ["precompute", "--data", data, "--out", url, "--epochs", epochs]
    args += ["--teacher-model", "regnety_002", "--teacher-random-init", "--dask-workers", "0"]
    result = invoke(*args, *extra)
    assert result.exit_code == 0, result.output
    return result
