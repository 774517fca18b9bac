"""Building a training run: data and targets, the model (incl. `--init-from`), optimizer,
schedule and EMA, resume. `build_trainer` returns the typed state the loop in `train.py` runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from deit_pipe.data import Source, ViewConfig, open_checked
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.sources.identity import content_fingerprint
from deit_pipe.device import resolve_device
from deit_pipe.errors import CheckpointError, ConfigError, DeitPipeError
from deit_pipe.student.checkpoint import load_checkpoint
from deit_pipe.student.config import TrainConfig
from deit_pipe.student.init_from import init_from, load_source
from deit_pipe.student.loader import ReplayLoader
from deit_pipe.student.losses import DistillationLoss
from deit_pipe.student.models import create_student, is_distilled
from deit_pipe.student.rundir import check_run_dir, refuse_changed_resume
from deit_pipe.student.store import Store, open_store
from deit_pipe.teacher import build_teacher

log = logging.getLogger(__name__)
DEFAULT_MODEL = "deit_tiny_distilled_patch16_224"


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Trainer:
    """Everything a training step and the loop around it touch."""

    cfg: TrainConfig  # resolved: no unset schedule field
    ctx: Context
    recipe: Recipe
    source: Source
    store: Store | None
    loader: ReplayLoader  # the run's batches: views, label and teacher targets
    model: torch.nn.Module  # the bare model (checkpoints, EMA, eval)
    ddp: torch.nn.Module  # what the step calls: DDP-wrapped and/or compiled
    criterion: DistillationLoss
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None
    run_info: dict
    step: int = 0
    saved_step: int | None = None  # the step of OUT/checkpoint.pt, once there is one

    @property
    def per_epoch(self) -> int:
        return self.loader.per_epoch

    @property
    def total_steps(self) -> int:
        return self.loader.total_steps

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def launch_env(environ=os.environ) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, or SLURM's under `srun` (as
    DeiT's `init_distributed_mode` reads them); (0, 1, 0) for a plain process."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0))
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        if "MASTER_ADDR" not in environ:
            raise ConfigError(
                "srun with several tasks: export MASTER_ADDR (the first node, e.g. `scontrol "
                "show hostnames $SLURM_JOB_NODELIST | head -n1`) and MASTER_PORT"
            )
        rank, world = int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"])
        return rank, world, int(environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def setup_distributed(device: str) -> Context:
    rank, world, local = launch_env()
    use_cuda = resolve_device(device).type == "cuda"
    if world == 1:
        return Context(device=torch.device("cuda" if use_cuda else "cpu"))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return Context(rank, world, local, dev)


def opened(cfg: TrainConfig) -> dict:
    """How the run's dataset is reached: fsspec options and the local data cache."""
    cache = DataCache.of(cfg.data_cache or None, cfg.data_cache_size)
    return {"data_options": cfg.data_options, "data_cache": cache}


def resolve_data(cfg: TrainConfig) -> tuple[Recipe, Source, Store | None]:
    """(recipe, source, store or None) for this run, refusing a store that cannot serve it."""
    if cfg.store:
        store = open_store(cfg.store, storage_options=cfg.store_options, teacher=cfg.teacher_name)
        source = store.open_data(cfg.data, **opened(cfg))
        return store.recipe, source, store
    if cfg.teacher_name:
        raise DeitPipeError("--teacher-name picks the teacher(s) of a store: give --store")
    if not cfg.data:
        raise DeitPipeError(
            "train needs --store STORE, or --data SPEC (with --teacher-model for online "
            "distillation)"
        )
    if cfg.follow:
        raise DeitPipeError("--follow follows a store that is being filled: give --store")
    source = open_checked(cfg.data, **opened(cfg))
    if cfg.recipe:
        return Recipe.from_dict(cfg.recipe), source, None
    return Recipe(view=ViewConfig.for_source(source)), source, None


def resolve_model(cfg: TrainConfig, recipe: Recipe, loaded: tuple | None) -> TrainConfig:
    """The model a run builds: as given, else the `--init-from` run's (`loaded`, from
    `load_source`) at this run's view size."""
    if cfg.model or loaded is None:
        return replace(cfg, model=cfg.model or DEFAULT_MODEL)
    source_cfg = loaded[1].get("run_config")
    if source_cfg is None:
        return replace(cfg, model=DEFAULT_MODEL)
    overrides = dict(source_cfg.get("model_overrides", {}))
    if "img_size" in overrides:
        overrides["img_size"] = recipe.view.input_size
    return replace(
        cfg, model=source_cfg["model"], model_overrides={**overrides, **cfg.model_overrides}
    )


def build_model(cfg: TrainConfig, ctx: Context, recipe: Recipe, num_classes: int, loaded=None):
    """(model on the device, its `--init-from` provenance or None)."""
    model = create_student(
        cfg.model, num_classes, drop_path=cfg.drop_path, seed=cfg.train_seed, **cfg.model_overrides
    )
    patch_embed = getattr(model, "patch_embed", None)
    expected = getattr(patch_embed, "img_size", None)
    size = recipe.view.input_size
    if expected is not None and tuple(expected) != (size, size):
        raise DeitPipeError(
            f"{cfg.model} takes {expected[0]}×{expected[1]} inputs but the views are "
            f"{size}×{size}; pass --img-size {size}"
        )
    patch = getattr(patch_embed, "patch_size", None)
    if patch is not None and size % patch[0]:  # timm would silently drop the last pixels
        raise ConfigError(
            f"--patch-size {patch[0]} does not divide the {size}×{size} views: choose a "
            f"divisor of {size}"
        )
    provenance = init_from(model, cfg.init_from, loaded) if cfg.init_from else None
    return model.to(ctx.device, memory_format=torch.channels_last), provenance


def build_online_teacher(cfg: TrainConfig, ctx: Context, source: Source, store):
    """The teacher to run online on the training views (`--teacher-model`), or None."""
    if cfg.distill != "none" and store is None and cfg.teacher is None:
        raise DeitPipeError(f"--distill {cfg.distill} needs --store or --teacher-model")
    if store is not None or cfg.teacher is None:
        return None
    model, _ = build_teacher(cfg.teacher, source.num_classes)
    model = model.to(ctx.device, memory_format=torch.channels_last)
    return torch.compile(model) if cfg.compile else model


def build_loader(cfg: TrainConfig, ctx: Context, recipe, source, store) -> ReplayLoader:
    """The run's loader: its batches, from step 0 (`run_loop` moves it to a resumed step)."""
    return ReplayLoader(
        store,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        data=source,
        recipe=recipe,
        teacher=build_online_teacher(cfg, ctx, source, store),
        distill=cfg.distill,
        tau=cfg.tau,
        smoothing=cfg.smoothing,
        device=ctx.device,
        render=cfg.render,
        loader_workers=cfg.loader_workers,
        cycle_epochs=cfg.cycle_epochs,
        follow=cfg.follow,
        follow_timeout=cfg.follow_timeout,
        rank=ctx.rank,
        world_size=ctx.world_size,
        max_steps=cfg.max_steps,
        check_before_yield=False,  # after the backward pass, so the device hashes meanwhile
    )


def build_optimization(cfg: TrainConfig, model: torch.nn.Module, ctx: Context, per_epoch: int):
    """timm AdamW (fused on CUDA), a per-step cosine schedule with warmup, optional EMA."""
    lr = cfg.lr * cfg.batch_size / 512
    impl = {"fused": True} if ctx.device.type == "cuda" else {"foreach": True}
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, **impl
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=per_epoch * cfg.epochs,
        lr_min=cfg.min_lr,
        warmup_t=int(cfg.warmup_epochs * per_epoch),
        warmup_lr_init=cfg.warmup_lr,
        t_in_epochs=False,
    )
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    return optimizer, scheduler, ema


def resume(tr: Trainer) -> None:
    """Continue a run from its checkpoint at its exact step, refusing changed settings (a run
    stopped before its first checkpoint starts over)."""
    path = tr.out / "checkpoint.pt"
    if not tr.cfg.resume or not path.exists():
        return
    state = load_checkpoint(path)
    if state["config"].get("store") != tr.cfg.store:
        raise CheckpointError(
            f"{path} belongs to a run on store {state['config'].get('store')}, not {tr.cfg.store}"
        )
    refuse_changed_resume(tr.out, state["config"], tr.run_info)
    tr.model.load_state_dict(state["model"])
    tr.optimizer.load_state_dict(state["optimizer"])
    tr.scheduler.load_state_dict(state["scheduler"])
    if tr.ema is not None and state.get("ema") is not None:
        tr.ema.module.load_state_dict(state["ema"])
    tr.step = tr.saved_step = int(state["step"])
    log.info("resuming at step %d", tr.step)


def build_trainer(cfg: TrainConfig) -> Trainer:
    ctx = setup_distributed(cfg.device)
    if ctx.main:
        check_run_dir(cfg.out, cfg.resume)
    recipe, source, store = resolve_data(cfg)
    loaded = load_source(cfg.init_from) if cfg.init_from else None  # read and hashed once
    cfg = resolve_model(cfg.resolved(recipe.name), recipe, loaded)
    loader = build_loader(cfg, ctx, recipe, source, store)
    per_epoch = loader.per_epoch
    model, provenance = build_model(cfg, ctx, recipe, source.num_classes, loaded)
    optimizer, scheduler, ema = build_optimization(cfg, model, ctx, per_epoch)
    ddp = model
    if ctx.world_size > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    tr = Trainer(
        cfg=cfg,
        ctx=ctx,
        recipe=recipe,
        source=source,
        store=store,
        loader=loader,
        model=model,
        ddp=torch.compile(ddp) if cfg.compile else ddp,
        criterion=DistillationLoss(
            cfg.distill, cfg.alpha, cfg.tau, cfg.kl_reduction, cfg.teacher_smoothing
        ),
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        run_info={},
    )
    tr.run_info = {
        **cfg.to_dict(),
        "recipe": recipe.to_dict(),
        "num_classes": source.num_classes,
        "classes": source.classes,
        "dataset": source.data,
        "dataset_fingerprint": source.fingerprint(),
        "dataset_content": content_fingerprint(source),
        "world_size": ctx.world_size,
        "steps_per_epoch": per_epoch,
        "distilled_model": is_distilled(model),
        "lr_scaled": cfg.lr * cfg.batch_size / 512,
        "store_identity": store.targets.identity if store else None,
        "init_from": provenance,
    }
    resume(tr)
    return tr
