"""Stage two: train a student replaying the plan's views, with targets from the store.

Single process or torchrun/DDP (NCCL on GPU, gloo on CPU). The global batch and the slots
each step consumes never depend on the world size. Randomness inside a step (drop-path) is
seeded from (seed, step, rank), so a run resumed at any step continues exactly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from deit_pipe.data import (
    PairDataset,
    StepSampler,
    ViewConfig,
    collate_views,
    open_checked,
    open_source,
)
from deit_pipe.data.plan import steps_per_epoch
from deit_pipe.data.recipe import Recipe
from deit_pipe.errors import DeitPipeError
from deit_pipe.pipeline.teacher import TeacherConfig, build_teacher
from deit_pipe.storage import TargetStore
from deit_pipe.student.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from deit_pipe.student.evaluate import evaluate
from deit_pipe.student.losses import DistillationLoss, mixed_label_targets
from deit_pipe.student.models import create_student, is_distilled, unwrap
from deit_pipe.student.targets import NoTeacher, OnlineTeacher, StoredTeacher

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out: str
    store: str | None = None  # offline distillation: plan + targets from the store
    storage_options: dict | None = None  # fsspec options for the store (never written out)
    data: str | None = None  # dataset (required without a store)
    teacher: TeacherConfig | None = None  # online distillation (comparison, tests)
    recipe: dict | None = None  # Recipe.to_dict(), when not read from a store
    model: str = "deit_tiny_distilled_patch16_224"
    model_overrides: dict = field(default_factory=dict)  # img_size, patch_size, depth, …
    drop_path: float = 0.1
    distill: str = "hard"
    alpha: float = 0.5
    tau: float = 1.0
    kl_reduction: str = "batchmean"
    teacher_smoothing: float = 0.0
    smoothing: float = 0.1
    epochs: int = 300
    batch_size: int = 1024  # global
    lr: float = 5e-4  # per 512 images of global batch
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5
    weight_decay: float = 0.05
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.99996
    seed: int = 0
    loader_workers: int = 0
    ckpt_every: int = 0  # steps; 0 = at epoch end only
    cycle_epochs: bool = False
    device: str = "auto"
    eval_batch_size: int = 256
    max_steps: int | None = None  # stop early (tests, smoke runs)
    resume: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("storage_options")  # may hold credentials
        d["teacher"] = self.teacher.to_dict() if self.teacher else None
        return d


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world == 1:
        return Context(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return Context(rank, world, local, dev)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(
        np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1
    )


def _resolve(cfg: TrainConfig):
    """(recipe, source, store or None) for this run, refusing a store that cannot serve it."""
    if cfg.store:
        store = TargetStore(cfg.store, cfg.storage_options)
        recipe = Recipe.from_dict(store.spec.plan)
        spec = store.spec.dataset["spec"]
        if cfg.data and cfg.data != spec:
            log.info("dataset %s given; the store was made from %s", cfg.data, spec)
        skipped = store.skipped().to_pylist()  # exclude exactly the files the teacher skipped
        source = open_source(cfg.data or spec, skip={r["path"]: r["reason"] for r in skipped})
        store.check_run(
            dataset_fingerprint=source.fingerprint(),
            plan=cfg.recipe if cfg.recipe else None,
            epochs=cfg.epochs,
            cycle_epochs=cfg.cycle_epochs,
        )
        return recipe, source, store
    if not cfg.data:
        raise DeitPipeError(
            "train needs --store STORE, or --data SPEC (with --teacher for online distillation)"
        )
    source = open_checked(cfg.data)
    recipe = Recipe(view=ViewConfig.for_source(source))
    return Recipe.from_dict(cfg.recipe) if cfg.recipe else recipe, source, None


def train(cfg: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train; returns the final eval. Writes config.json, metrics.jsonl and checkpoint.pt."""
    ctx = setup_distributed(cfg.device)
    out = Path(cfg.out)
    recipe, source, store = _resolve(cfg)
    train_split, num_classes = source.split("train"), source.num_classes
    model = create_student(
        cfg.model, num_classes, drop_path=cfg.drop_path, seed=cfg.seed, **cfg.model_overrides
    ).to(ctx.device, memory_format=torch.channels_last)
    expected = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if expected is not None and tuple(expected) != (recipe.view.input_size,) * 2:
        raise DeitPipeError(
            f"{cfg.model} takes {expected[0]}×{expected[1]} inputs but the views "
            f"are {recipe.view.input_size}×{recipe.view.input_size}; pass "
            f"--img-size {recipe.view.input_size}"
        )
    if cfg.distill != "none" and not cfg.store and cfg.teacher is None:
        raise DeitPipeError(f"--distill {cfg.distill} needs --store or --teacher")
    if store is not None:
        teacher = StoredTeacher(store, cfg.tau, train_split, source.spec, cfg.cycle_epochs)
    elif cfg.teacher is not None:
        tmodel, _ = build_teacher(cfg.teacher, num_classes)
        teacher = OnlineTeacher(
            tmodel.to(ctx.device, memory_format=torch.channels_last), cfg.tau, ctx.device
        )
    else:
        teacher = NoTeacher()
    criterion = DistillationLoss(
        cfg.distill, cfg.alpha, cfg.tau, cfg.kl_reduction, cfg.teacher_smoothing
    )
    per_epoch = steps_per_epoch(len(train_split), cfg.batch_size)
    if per_epoch == 0:
        raise DeitPipeError(
            f"global batch {cfg.batch_size} exceeds the {len(train_split)} views of an epoch"
        )
    total_steps = per_epoch * cfg.epochs
    lr = cfg.lr * cfg.batch_size / 512
    optimizer = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total_steps,
        lr_min=cfg.min_lr,
        warmup_t=int(cfg.warmup_epochs * per_epoch),
        warmup_lr_init=cfg.warmup_lr,
        t_in_epochs=False,
    )
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise CheckpointError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if cfg.resume:
        state = load_checkpoint(ckpt_path)
        if state["config"].get("store") != cfg.store:
            raise CheckpointError(
                f"{ckpt_path} belongs to a run on store "
                f"{state['config'].get('store')}, not {cfg.store}"
            )
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        step = int(state["step"])
        log.info("resuming at step %d", step)
    run_info = {
        **cfg.to_dict(),
        "recipe": recipe.to_dict(),
        "num_classes": num_classes,
        "classes": source.classes,
        "dataset": source.spec,
        "dataset_fingerprint": source.fingerprint(),
        "world_size": ctx.world_size,
        "steps_per_epoch": per_epoch,
        "distilled_model": is_distilled(model),
        "lr_scaled": lr,
        "store_identity": store.identity if store else None,
    }
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run_info, indent=2))
    ddp = model
    if ctx.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    metrics = (out / "metrics.jsonl").open("a") if ctx.main else None
    labels_all = torch.as_tensor(train_split.labels)
    eval_result: dict = {}
    try:
        while step < total_steps and (cfg.max_steps is None or step < cfg.max_steps):
            epoch, start = divmod(step, per_epoch)
            # Past the store's epochs (--cycle-epochs) the stored epoch's views are replayed.
            view_epoch = store.stored_epoch(epoch, cfg.cycle_epochs) if store else epoch
            epoch_plan = recipe.epoch_plan(view_epoch, len(train_split))
            teacher.start_epoch(epoch, cfg.epochs, epoch_plan)
            loader = DataLoader(
                PairDataset(train_split, epoch_plan, recipe.view),
                batch_sampler=StepSampler(
                    len(epoch_plan), cfg.batch_size, ctx.world_size, ctx.rank, start_step=start
                ),
                collate_fn=collate_views,
                num_workers=cfg.loader_workers,
                pin_memory=ctx.device.type == "cuda",
                generator=torch.Generator(),
            )
            tick = time.perf_counter()
            for batch in loader:
                step_start = time.perf_counter()
                record = _train_step(
                    cfg,
                    ctx,
                    ddp,
                    criterion,
                    optimizer,
                    teacher,
                    batch,
                    epoch_plan,
                    labels_all,
                    num_classes,
                    step,
                )
                step += 1
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(model, step=step)
                now = time.perf_counter()
                # img_s covers the whole step incl. rendering; step_s excludes rendering.
                record.update(
                    step=step,
                    epoch=epoch,
                    lr=optimizer.param_groups[0]["lr"],
                    img_s=cfg.batch_size / max(now - tick, 1e-9),
                    step_s=now - step_start,
                )
                tick = now
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if progress and ctx.main:
                    progress({**record, "total_steps": total_steps})
                if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                    _checkpoint(ctx, ckpt_path, model, optimizer, scheduler, ema, step, run_info)
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
            if step % per_epoch == 0:
                eval_result = _evaluate(cfg, ctx, model, ema, source, recipe)
                _checkpoint(ctx, ckpt_path, model, optimizer, scheduler, ema, step, run_info)
                if metrics:
                    metrics.write(
                        json.dumps({"epoch": epoch, "step": step, "eval": eval_result}) + "\n"
                    )
                    metrics.flush()
                if progress and ctx.main:
                    progress(
                        {
                            "epoch": epoch,
                            "step": step,
                            "eval": eval_result,
                            "total_steps": total_steps,
                        }
                    )
        if step % per_epoch:  # stopped by --max-steps mid-epoch: keep where we are
            _checkpoint(ctx, ckpt_path, model, optimizer, scheduler, ema, step, run_info)
    finally:
        if metrics:
            metrics.close()
        if store is not None:
            store.close()
    if ctx.world_size > 1:  # leave together: a rank exiting early aborts gloo peers
        dist.barrier()
        dist.destroy_process_group()
    return eval_result


def _train_step(
    cfg, ctx, model, criterion, optimizer, teacher, batch, epoch_plan, labels_all, num_classes, step
) -> dict:
    torch.manual_seed(step_seed(cfg.seed, step, ctx.rank))  # drop-path: a function of the step
    slots = batch["slot"].numpy()
    partners = epoch_plan.partner(slots)
    lam = torch.as_tensor(epoch_plan.lam[slots // 2], dtype=torch.float32)
    targets = mixed_label_targets(
        labels_all[epoch_plan.sample[slots]],
        labels_all[epoch_plan.sample[partners]],
        lam,
        num_classes,
        cfg.smoothing,
    )
    soft, hard = teacher.targets(slots, batch["fingerprint"].numpy(), batch["image"])
    dev = ctx.device
    images = batch["image"].to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        outputs = model(images)
    outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
    loss, terms = criterion(
        outputs,
        targets.to(dev),
        soft.to(dev) if soft is not None else None,
        hard.to(dev) if hard is not None else None,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    optimizer.step()
    # Loss terms are averaged over ranks; the slot sum is summed (a cheap check that the
    # ranks together consumed exactly the step's slots).
    values = torch.stack(
        [
            loss.detach().double(),
            *(t.double() for t in terms.values()),
            torch.tensor(float(slots.sum()), dtype=torch.float64, device=dev),
        ]
    )
    if ctx.world_size > 1:
        dist.all_reduce(values)
        values[:-1] /= ctx.world_size
    names = ["loss", *terms, "slots_sum"]
    return {n: float(v) for n, v in zip(names, values.cpu(), strict=True)}


def _evaluate(cfg, ctx, model, ema, source, recipe) -> dict:
    if "val" not in source.splits:
        return {}
    kw = dict(
        batch_size=cfg.eval_batch_size, device=ctx.device, rank=ctx.rank, world_size=ctx.world_size
    )
    result = evaluate(model, source.split("val"), recipe.view, **kw)
    if ema is not None:
        result.update(
            {
                f"ema_{k}": v
                for k, v in evaluate(ema.module, source.split("val"), recipe.view, **kw).items()
            }
        )
    return result


def _checkpoint(ctx, path, model, optimizer, scheduler, ema, step, run_info) -> None:
    if not ctx.main:
        return
    save_checkpoint(
        path,
        {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,  # plain model keys
            "scaler": None,  # bf16 autocast needs no loss scaling
            "step": step,
            "config": run_info,
            "store_identity": run_info["store_identity"],
        },
    )
