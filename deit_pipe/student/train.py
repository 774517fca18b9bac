"""Stage two: train a student replaying the plan's views, with targets from the store.

Single process or torchrun/DDP (NCCL on GPU, gloo on CPU). The global batch and the slots
each step consumes never depend on the world size. Randomness inside a step (drop-path) is
seeded from (seed, step, rank), so a run resumed at any step continues exactly. One
DataLoader serves the whole run (its workers persist and prefetch across epochs), and a
step never waits for the device: losses are read back every `log_every` steps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist

from deit_pipe.errors import DivergedError
from deit_pipe.outputs import make_dir, write_atomic
from deit_pipe.storage.lock import WriterLock
from deit_pipe.student import tblog
from deit_pipe.student.checkpoint import save_checkpoint
from deit_pipe.student.config import TrainConfig
from deit_pipe.student.evaluate import evaluate
from deit_pipe.student.loader import Batch, step_seed
from deit_pipe.student.rendertrial import RenderTrial, render_trial
from deit_pipe.student.rundir import truncate_metrics
from deit_pipe.student.trainer import Trainer, build_trainer

__all__ = ["TrainConfig", "train"]


class MetricsWriter:
    """`metrics.jsonl` (rank 0): a line per step, and per evaluated epoch; with `tb`, the
    same scalars as TensorBoard events."""

    def __init__(self, path: Path | None, tb=None):
        self.file = path.open("a") if path is not None else None
        self.tb = tb

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            tblog.write_record(self.tb, record)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train; returns the last evaluation. Writes config.json, metrics.jsonl, checkpoint.pt."""
    if cfg.tensorboard:
        tblog.require(cfg.out)
    tr = build_trainer(cfg)
    with ExitStack() as held:
        if tr.ctx.main:  # rank 0 writes the run directory, and holds it while it does
            make_dir(tr.out, "run directory")
            held.enter_context(WriterLock(str(tr.out), "train", what="this run directory"))
            truncate_metrics(tr.out, tr.step)
            write_atomic(tr.out / "config.json", json.dumps(tr.run_info, indent=2).encode())
        tb = None
        if tr.ctx.main and cfg.tensorboard:
            tb = tblog.open_writer(tr.out, purge_step=tr.step)
        metrics = MetricsWriter(tr.out / "metrics.jsonl" if tr.ctx.main else None, tb)
        report = progress if tr.ctx.main and progress else (lambda _: None)
        try:
            result = run_loop(tr, metrics, report)
        finally:
            metrics.close()
            tr.loader.close()
            if tr.store is not None:
                tr.store.close()
    if tr.ctx.world_size > 1:  # leave together: a rank exiting early aborts gloo peers
        dist.barrier()
        dist.destroy_process_group()
    return result


def end_step(tr: Trainer) -> int:
    """The step this run stops after: the last, or `max_steps`."""
    return tr.loader.end


def run_loop(tr: Trainer, metrics: MetricsWriter, report: Callable[[dict], None]) -> dict:
    loader = tr.loader
    loader.load_state_dict({**loader.state_dict(), "step": tr.step})  # resumed: from here
    loader.on_wait = lambda epoch, done, total: report(
        {"waiting": {"epoch": epoch, "done": done, "total": total}, "total_steps": tr.total_steps}
    )
    trial = _render_trial(tr)
    pending: list[tuple[dict, dict[str, torch.Tensor]]] = []  # steps not yet read back
    result: dict = {}
    tick = time.perf_counter()
    while True:
        start = time.perf_counter()
        try:
            batch = next(loader)
        except StopIteration:
            break
        except torch.cuda.OutOfMemoryError:
            if trial is None or loader.render != "device":  # asked for: the user's to change
                raise
            trial.device_failed()  # this step again, from a host loader
            loader.set_render(trial.take_switch())
            torch.cuda.empty_cache()
            continue
        values = train_step(tr, batch)
        info, tick = _advance(tr, batch, tick, start)
        pending.append((info, values))
        result = _after_step(tr, batch, trial, pending, metrics, report) or result
    flush_steps(tr, pending, metrics, report)
    if tr.step % tr.per_epoch:  # stopped by max_steps mid-epoch: keep where we are
        save(tr)
    return result


def _render_trial(tr: Trainer) -> RenderTrial | None:
    """The trial that times the host and the device renderers over the run's first steps,
    where `--render` leaves the choice to it (None: nothing to choose)."""
    return render_trial(
        tr.cfg.render,
        tr.ctx.device,
        loader_workers=tr.cfg.loader_workers,
        steps_left=end_step(tr) - tr.step,
        batch_size=tr.cfg.batch_size,
        world_size=tr.ctx.world_size,
        trial=tr.cfg.render_trial,
    )


def _advance(tr: Trainer, batch: Batch, tick: float, start: float) -> tuple[dict, float]:
    """Count the step just taken (the lr schedule and the EMA follow it); returns its record
    and the time it ended. `img_s` covers the whole step since the last one ended (`tick`),
    incl. waiting for views; `step_s` the step alone from `start` (on a GPU, its launch: the
    device runs asynchronously)."""
    tr.step += 1
    tr.scheduler.step_update(tr.step)
    if tr.ema is not None:
        tr.ema.update(tr.model, step=tr.step)
    now = time.perf_counter()
    lr = tr.optimizer.param_groups[0]["lr"]
    info = {
        "step": tr.step,
        "epoch": batch.epoch,
        "lr": lr,
        "img_s": tr.cfg.batch_size / max(now - tick, 1e-9),
        "step_s": now - start,
    }
    return info, now


def _after_step(
    tr: Trainer,
    batch: Batch,
    trial: RenderTrial | None,
    pending: list,
    metrics: MetricsWriter,
    report: Callable[[dict], None],
) -> dict | None:
    """What a step's end calls for: read the pending losses back (every `log_every` steps,
    and before a checkpoint or an epoch's end), checkpoint, evaluate at an epoch's end, and
    tell a render trial still choosing. Returns the evaluation of an epoch it ended."""
    result = None
    epoch_done = tr.step % tr.per_epoch == 0
    if len(pending) >= tr.cfg.log_every or epoch_done or _checkpoint_due(tr):
        flush_steps(tr, pending, metrics, report)
    saved = _checkpoint_due(tr)
    if saved:
        save(tr)
    if epoch_done:
        result = end_epoch(tr, batch.epoch, metrics, report)
    if trial is not None and trial.chosen is None:
        trial_step(tr, trial, batch.waited or saved or epoch_done, metrics, report)
    return result


def trial_step(
    tr: Trainer, trial: RenderTrial, interrupted: bool, metrics: MetricsWriter, report
) -> None:
    """Tell the render trial a step is done; switch renderer where it says; once it has
    chosen, say what it measured."""
    trial.stepped(interrupted)
    switch = trial.take_switch()
    if switch is not None:
        tr.loader.set_render(switch)  # the next step's views: the same bytes
    if trial.chosen is not None:
        record = {"step": tr.step, "render_trial": trial.summary()}
        metrics.write(record)
        report({**record, "total_steps": tr.total_steps})


def _checkpoint_due(tr: Trainer) -> bool:
    return bool(tr.cfg.ckpt_every) and tr.step % tr.cfg.ckpt_every == 0


def train_step(tr: Trainer, batch: Batch) -> dict[str, torch.Tensor]:
    """One optimisation step; returns its loss terms as device tensors (nothing read back)."""
    torch.manual_seed(step_seed(tr.cfg.train_seed, batch.step, batch.rank))  # drop-path
    dev = tr.ctx.device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        outputs = tr.ddp(batch.images)
    outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
    loss, terms = tr.criterion(outputs, batch.label_targets, batch.teacher_soft, batch.teacher_hard)
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    watched = {"loss": loss.detach(), **terms}
    if tr.cfg.clip_grad:  # the norm is computed anyway: watched, read back with the loss
        norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), tr.cfg.clip_grad)
        watched["grad_norm"] = norm.detach().float()
    # Every replayed view must be the one its targets were made from, before the update it
    # would feed. Asked this late, device-rendered views are hashed while the device runs
    # the forward and backward passes launched above.
    batch.check()
    tr.optimizer.step()
    slots_sum = torch.tensor(float(batch.slots.sum()), dtype=torch.float64, device=dev)
    return {**watched, "slots_sum": slots_sum}  # the slot sum last: it is summed, not averaged


def flush_steps(tr: Trainer, pending: list, metrics: MetricsWriter, report) -> None:
    """Read back the pending steps' losses in one transfer (one all-reduce under DDP) and
    write their records. Loss terms are averaged over ranks; the slot sum is summed (a cheap
    check that the ranks together consumed exactly each step's slots)."""
    if not pending:
        return
    names = list(pending[0][1])
    values = torch.stack([torch.stack([v[n].double() for n in names]) for _, v in pending])
    if tr.ctx.world_size > 1:
        dist.all_reduce(values)
        values[:, :-1] /= tr.ctx.world_size
    rows = values.cpu().tolist()
    steps = [info for info, _ in pending]
    pending.clear()
    for info, row in zip(steps, rows, strict=True):
        record = {**dict(zip(names, row, strict=True)), **info}
        metrics.write(record)
        report({**record, "total_steps": tr.total_steps})
        for name in ("loss", "grad_norm"):  # every rank sees the same all-reduced values
            if name in record and not math.isfinite(record[name]):
                raise diverged(tr, f"the {name.replace('_', ' ')} is {record[name]}", info)


def diverged(tr: Trainer, what: str, info: dict) -> DivergedError:
    """The one line a diverged run stops with: where, and which checkpoint is kept."""
    kept = (
        f"the last good checkpoint (step {tr.saved_step}) is kept in {tr.out / 'checkpoint.pt'}"
        if tr.saved_step is not None
        else "no checkpoint was written"
    )
    return DivergedError(
        f"training diverged at step {info['step']} (epoch {info['epoch']}): {what}; {kept}; "
        f"lower --lr{'' if tr.cfg.clip_grad else ' (or set --clip-grad)'} and train again "
        "into a new --out"
    )


def end_epoch(tr: Trainer, epoch: int, metrics: MetricsWriter, report) -> dict | None:
    """Evaluate (every `eval_every` epochs and the last) and checkpoint at an epoch's end."""
    result = None
    last = tr.step == tr.total_steps
    if (epoch + 1) % tr.cfg.eval_every == 0 or last:
        result = evaluate_heads(tr)
        render = tr.loader.render
        record = {"epoch": epoch, "step": tr.step, "eval": result, "render": render}
        if render == "device":  # views whose ops no kernel covers, rendered by Pillow
            record["host_rendered"] = tr.loader.host_rendered
        metrics.write(record)
        report({**record, "total_steps": tr.total_steps})
    save(tr)
    return result


def evaluate_heads(tr: Trainer) -> dict:
    if "val" not in tr.source.splits:
        return {}
    kw = dict(
        batch_size=tr.cfg.eval_batch_size,
        device=tr.ctx.device,
        render=tr.loader.render,
        rank=tr.ctx.rank,
        world_size=tr.ctx.world_size,
    )
    val = tr.source.split("val")
    result = evaluate(tr.model, val, tr.recipe.view, **kw)
    if tr.ema is not None:
        ema = evaluate(tr.ema.module, val, tr.recipe.view, **kw)
        result.update({f"ema_{k}": v for k, v in ema.items()})
    return result


def save(tr: Trainer) -> None:
    """Write OUT/checkpoint.pt (rank 0), never from non-finite weights: a loss can still be
    finite at the step whose update made them so. Every rank checks (same weights under
    DDP), so all stop together."""
    weights = [*tr.model.parameters(), *(tr.ema.module.parameters() if tr.ema else ())]
    if not bool(torch.stack([torch.isfinite(p).all() for p in weights]).all()):
        info = {"step": tr.step, "epoch": max(tr.step - 1, 0) // tr.per_epoch}
        raise diverged(tr, "the weights are no longer finite", info)
    if not tr.ctx.main:
        return
    save_checkpoint(
        tr.out / "checkpoint.pt",
        {
            "model": tr.model.state_dict(),
            "optimizer": tr.optimizer.state_dict(),
            "scheduler": tr.scheduler.state_dict(),
            "ema": tr.ema.module.state_dict() if tr.ema is not None else None,  # plain keys
            "step": tr.step,
            "config": tr.run_info,
            "store_identity": tr.run_info["store_identity"],
        },
    )
    tr.saved_step = tr.step
