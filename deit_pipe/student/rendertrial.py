"""`train --render auto`: which renderer feeds this run faster is measured, not assumed.

Pillow in the loader workers and the kernels on the student's device give the same bytes
(`data.device.render`), so a run may switch between them at any step and learn exactly the
same thing. Which one is faster depends on all of the run at once: the GPU (the kernels are
float64 and integer work, cheap on an H100, dear on a GPU with 1/64-rate FP64), the model's
own step time, the host's cores and the loader workers. So on CUDA, for a run long enough
to pay for it, `auto` times a window of steps with each renderer, after a warm-up that lets
a new loader's workers fill their queue, and keeps the faster. A window that meets an
evaluation, a checkpoint or a wait for the teacher starts again after it, so only training
steps are timed. Under DDP the windows fall on the same steps on every rank and the ranks
agree on the slowest rank's times. A step whose kernels run out of the GPU's memory is taken
again from a host loader, and the host it is: a run sized to fill the GPU with Pillow's
views must not fail for having been offered the kernels. On a CPU `auto` takes the host
without a trial: there the kernels measure 2x (32² views) to 12x (224²) slower than Pillow
(BENCHMARKS.md); `render_trial` forces one anywhere.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from deit_pipe.choices import RENDERERS

log = logging.getLogger(__name__)
PAYS = 20  # a trial runs only where the run has this many times its steps left


def window_steps(loader_workers: int) -> tuple[int, int]:
    """(warm-up, timed) steps per renderer. A new loader's workers deliver their first
    batches together, so the warm-up covers a round of them and the timed window four."""
    return loader_workers + 3, max(10, 4 * loader_workers)


@dataclass
class RenderTrial:
    """The trial's state: feed it each finished step (`stepped`); it says when to switch."""

    warm: int
    timed: int
    batch_size: int  # global: img/s are the run's
    device: torch.device
    world_size: int = 1
    path: str = "host"  # the window being timed
    seconds: dict[str, float] = field(default_factory=dict)
    chosen: str | None = None
    switch: str | None = None  # the renderer the next step needs, until the loader has it
    failed: bool = False  # the kernels ran out of the device's memory: the host renders
    _left: int = 0  # warm-up steps still to go
    _count: int = 0  # steps timed so far
    _start: float = 0.0

    def __post_init__(self) -> None:
        self._left = self.warm

    def stepped(self, interrupted: bool) -> None:
        """After a step (and its evaluation or checkpoint, if any): sets `switch` to the
        renderer the next step needs where it changes."""
        self.switch = self._next(interrupted) if self.chosen is None else None

    def take_switch(self) -> str | None:
        """The renderer the loader must switch to from the next step, once (None: keep)."""
        switch, self.switch = self.switch, None
        return switch

    def device_failed(self) -> None:
        """The kernels ran out of the device's memory (the step was not taken): the host
        renders from that step, and for good. During the trial the device's window counts
        as never faster and keeps its steps, so DDP ranks still decide together."""
        self.failed, self.switch = True, "host"
        if self.chosen is not None:
            self.chosen = "host"
        log.warning("render trial: the device ran out of memory rendering; the host renders")

    def _next(self, interrupted: bool) -> str | None:
        if self._left:
            self._left -= 1
            if not self._left:
                self._restart()
            return None
        if interrupted:  # that step's evaluation, checkpoint or wait is nobody's speed
            self._restart()
            return None
        self._count += 1
        if self._count < self.timed:
            return None
        # Only the device's window can fail: the host's ended before the kernels ran.
        self.seconds[self.path] = math.inf if self.failed else self._now() - self._start
        if self.path == "host":
            self.path, self._left = "device", self.warm
            return "device"
        self.chosen = self._faster()
        log.info("render trial: %s", self.summary())
        rendering = "host" if self.failed else "device"
        return self.chosen if self.chosen != rendering else None

    def summary(self) -> dict:
        """What the trial measured, for metrics.jsonl and the log."""
        rates = {f"{p}_img_s": self.timed * self.batch_size / s for p, s in self.seconds.items()}
        oom = {"device_out_of_memory": True} if self.failed else {}
        return {"steps": self.timed, **rates, "chosen": self.chosen, **oom}

    def _faster(self) -> str:
        times = torch.tensor([self.seconds[p] for p in RENDERERS], dtype=torch.float64)
        if self.world_size > 1:  # every rank picks the same, from the slowest rank's times
            times = times.to(self.device)
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
            times = times.cpu()
        self.seconds = dict(zip(RENDERERS, times.tolist(), strict=True))
        return "device" if self.seconds["device"] < self.seconds["host"] else "host"

    def _restart(self) -> None:
        self._count, self._start = 0, self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":  # the queued steps are part of the window
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def render_trial(
    render: str,
    device: torch.device,
    *,
    loader_workers: int,
    steps_left: int,
    batch_size: int,
    world_size: int = 1,
    trial: int | None = None,
) -> RenderTrial | None:
    """The trial a run with `--render render` makes, or None. `trial` is the number of
    steps timed per renderer: None sizes it from the loader workers and runs it on CUDA
    where the run has `PAYS` times its steps left; 0 never runs one."""
    if render != "auto" or trial == 0:
        return None
    warm, timed = window_steps(loader_workers)
    if trial is None and (device.type != "cuda" or steps_left < PAYS * 2 * (warm + timed)):
        return None
    return RenderTrial(warm, timed if trial is None else trial, batch_size, device, world_size)
