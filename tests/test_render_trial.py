"""`train --render auto`: a trial times both renderers and keeps the faster, and a run that
switches renderer mid-way learns exactly what a run on one renderer learns."""

import json

import pytest
import torch
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.data.device.render import device_pixels
from deit_pipe.student import loader as loader_module
from deit_pipe.student.rendertrial import PAYS, RenderTrial, render_trial, window_steps
from tests.train_utils import TINY_ARGS, losses

ARGS = ["train", "--data", "digits", *TINY_ARGS, "--epochs", "2", "--batch-size", "128"]
ARGS += ["--distill", "none", "--drop-path", "0", "--device", "cpu", "--max-steps", "13"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir) -> list[tuple]:
    return [(r["step"], r["loss"], r["slots_sum"]) for r in losses(run_dir)]


def same_weights(a, b) -> bool:
    a = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def host_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trial") / "host"
    done = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--render", "host"])
    assert done.exit_code == 0, done.output
    return out


@pytest.mark.parametrize("winner", ["host", "device"])
def test_a_run_that_tries_both_renderers_learns_what_a_host_run_learns(
    host_run, tmp_path, monkeypatch, winner
):
    """Steps 1-3 warm the host loader, 4-5 are timed; 6-8 warm the kernels' loader, 9-10
    are timed; from step 11 the winner renders (the timings decide in real runs: here the
    winner is imposed, so that both outcomes are seen). Every step's loss, and the weights at
    the end, are the host run's."""
    rendered = []  # the steps whose views the kernels rendered

    def counting(batch, device, **kw):  # the training loader's batches (not eval's)
        if batch.device_views is not None:
            rendered.append(batch.device_views["count"])
        return device_pixels(batch, device, **kw)

    measured = RenderTrial._faster
    monkeypatch.setattr(loader_module, "device_pixels", counting)
    monkeypatch.setattr(RenderTrial, "_faster", lambda self: (measured(self), winner)[1])
    out = tmp_path / "auto"
    done = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--render-trial", "2"])
    assert done.exit_code == 0, done.output
    assert f"the {winner} renders from here" in " ".join(done.output.split())
    rows = records(out)
    trial = [r["render_trial"] for r in rows if "render_trial" in r]
    assert len(trial) == 1 and trial[0]["chosen"] == winner and trial[0]["steps"] == 2
    assert trial[0]["host_img_s"] > 0 and trial[0]["device_img_s"] > 0
    assert len(rendered) == (5 if winner == "host" else 13 - 5)
    assert steps(out) == steps(host_run) and len(steps(out)) == 13
    assert same_weights(host_run, out)
    # the epoch's evaluation (step 11) says who rendered then
    assert [r["render"] for r in rows if "eval" in r] == [winner]


def test_a_device_out_of_memory_in_the_trial_leaves_the_host_rendering(
    host_run, tmp_path, monkeypatch
):
    """The kernels' first step runs out of the GPU's memory: that step is taken again from
    a host loader, the trial keeps its windows and chooses the host, and the run is the
    host run."""
    calls = []

    def out_of_memory(batch, device, **kw):
        if batch.device_views is None:
            return device_pixels(batch, device, **kw)
        calls.append(batch.device_views["count"])
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loader_module, "device_pixels", out_of_memory)
    out = tmp_path / "auto"
    done = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--render-trial", "2"])
    assert done.exit_code == 0, done.output
    assert "device out of memory: the host renders" in " ".join(done.output.split())
    rows = records(out)
    trial = [(r["step"], r["render_trial"]) for r in rows if "render_trial" in r]
    assert [step for step, _ in trial] == [10] and trial[0][1]["chosen"] == "host"
    assert trial[0][1]["device_out_of_memory"] is True and trial[0][1]["device_img_s"] == 0
    assert calls == [128]  # once: the step went on from the host
    assert steps(out) == steps(host_run) and same_weights(host_run, out)


def test_a_device_out_of_memory_after_the_trial_turns_the_run_to_the_host(
    host_run, tmp_path, monkeypatch
):
    """The device won the trial (imposed), then a step's kernels run out of memory: the
    run goes on from the host at that step, and learns what the host run learns."""
    calls = []

    def out_of_memory_at_step_12(batch, device, **kw):
        if batch.device_views is None:
            return device_pixels(batch, device, **kw)
        calls.append(batch.device_views["count"])
        if len(calls) == 7:  # steps 6-10 in the trial, 11 and then 12 on the device
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return device_pixels(batch, device, **kw)

    measured = RenderTrial._faster
    monkeypatch.setattr(loader_module, "device_pixels", out_of_memory_at_step_12)
    monkeypatch.setattr(RenderTrial, "_faster", lambda self: (measured(self), "device")[1])
    out = tmp_path / "auto"
    done = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--render-trial", "2"])
    assert done.exit_code == 0, done.output
    assert len(calls) == 7 and [r["render"] for r in records(out) if "eval" in r] == ["device"]
    assert steps(out) == steps(host_run) and len(steps(out)) == 13
    assert same_weights(host_run, out)


def test_a_window_that_meets_an_evaluation_starts_again(host_run, tmp_path):
    """The epoch ends at step 11: a timed window over it is timed again from step 12."""
    out = tmp_path / "auto"
    args = [*ARGS[:-1], "16", "--out", str(out), "--render-trial", "4"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    trial = [r for r in records(out) if "render_trial" in r]
    # host: warm 1-3, timed 4-7; device: warm 8-10, timed 11 (eval) → again 12-15
    assert [r["step"] for r in trial] == [15]


def test_which_runs_try_both_renderers():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    warm, timed = window_steps(8)
    assert (warm, timed) == (11, 32)
    needed = PAYS * 2 * (warm + timed)
    kw = dict(loader_workers=8, batch_size=256)
    trial = render_trial("auto", cuda, steps_left=needed, **kw)
    assert (trial.warm, trial.timed, trial.path) == (11, 32, "host")
    assert render_trial("auto", cuda, steps_left=needed - 1, **kw) is None  # too short to pay
    assert render_trial("auto", cpu, steps_left=10**6, **kw) is None  # Pillow is faster there
    assert render_trial("auto", cuda, steps_left=10**6, trial=0, **kw) is None
    assert render_trial("host", cuda, steps_left=10**6, trial=5, **kw) is None  # asked for
    assert render_trial("auto", cpu, steps_left=3, trial=5, **kw).timed == 5  # forced


def test_a_bad_trial_length_is_refused_before_the_run_exists(tmp_path):
    out = tmp_path / "run"
    done = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--render-trial", "-1"])
    assert done.exit_code != 0 and "--render-trial must be ≥ 0, got -1" in done.output
    assert not out.exists()


def test_a_run_resumes_on_the_other_renderer(host_run, tmp_path):
    """Who renders is how a run executes, not what it learns: a resume may change it."""
    out = tmp_path / "resumed"
    first = [*ARGS[:-1], "6", "--out", str(out), "--render", "host"]
    assert CliRunner().invoke(main, first).exit_code == 0
    done = CliRunner().invoke(main, [*ARGS, "--out", str(out), "--render", "device", "--resume"])
    assert done.exit_code == 0, done.output
    assert same_weights(host_run, out)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--render-trial", "100000"], "--render-trial must be ≤ 10000"),
        (["--render", "host", "--render-trial", "5"], "with --render host it would do nothing"),
        (["--render", "device", "--render-trial", "5"], "with --render device it would do"),
    ],
)
def test_a_render_trial_that_cannot_run_is_one_line(tmp_path, flags, needle):
    result = CliRunner().invoke(main, [*ARGS, "--out", str(tmp_path / "run"), *flags])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "run").exists()
