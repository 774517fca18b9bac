"""Train a DeiT student on a deit-pipe store with a plain PyTorch loop of your own.

    python examples/own_loop.py --store STORE --out DIR --steps N [--batch-size B]
        [--epochs E] [--train-seed S]
    torchrun --nproc-per-node 2 examples/own_loop.py --store STORE --out DIR --steps N

Its defaults are `deit-pipe train`'s for a `--store` run (model, optimiser, schedule), so
the same flags give the same run: `deit-pipe train --store STORE --max-steps N` learns the
same weights. Writes DIR/losses.json (the per-step training losses, averaged over ranks)
and DIR/model.pt (the student's weights). Only public names of deit_pipe are used; the
Lightning and Accelerate examples reuse this file's pieces.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import deit_pipe as dp


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=None, help="stop after N steps")
    p.add_argument("--batch-size", type=int, default=1024, help="global batch")
    p.add_argument("--epochs", type=int, default=None, help="[the store's preset's]")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--distill", choices=["none", "soft", "hard"], default="hard")
    p.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    for flag in ("img-size", "patch-size", "depth", "embed-dim", "num-heads"):
        p.add_argument(f"--{flag}", type=int, default=None)  # small students (tests)
    return p.parse_args(argv)


def student(args, store: dp.Store, device: torch.device) -> torch.nn.Module:
    """`deit-pipe train`'s student: seeded init, the store's preset's drop-path."""
    arch = ("img_size", "patch_size", "depth", "embed_dim", "num_heads")
    model = dp.create_student(
        args.model,
        store.num_classes,
        drop_path=store.schedule.drop_path,
        seed=args.train_seed,
        **{k: getattr(args, k) for k in arch if getattr(args, k) is not None},
    )
    return model.to(device, memory_format=torch.channels_last)


def optimization(args, model, store: dp.Store, loader: dp.ReplayLoader):
    """`deit-pipe train`'s AdamW and per-step cosine schedule with warmup (timm's)."""
    schedule, per_epoch = store.schedule, loader.per_epoch
    fast = {"fused": True} if loader.device.type == "cuda" else {"foreach": True}
    optimizer = create_optimizer_v2(
        model,
        opt="adamw",
        lr=schedule.lr * args.batch_size / 512,  # the preset's lr is per 512 images
        weight_decay=schedule.weight_decay,
        **fast,
    )
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=per_epoch * loader.epochs,
        lr_min=schedule.min_lr,
        warmup_t=int(schedule.warmup_epochs * per_epoch),
        warmup_lr_init=schedule.warmup_lr,
        t_in_epochs=False,
    )
    return optimizer, scheduler


def forward_loss(model, criterion, batch: dp.Batch) -> torch.Tensor:
    """The step's loss: drop-path seeded by (seed, step, rank), bf16 autocast on CUDA."""
    device = batch.images.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        outputs = model(batch.images)
    # a distilled DeiT gives (class head, distillation head); other models one tensor
    outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
    loss, _ = criterion(outputs, batch.label_targets, batch.teacher_soft, batch.teacher_hard)
    return loss


def setup() -> torch.device:
    """One process, or one rank of torchrun (gloo on the CPU, NCCL on GPUs)."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def main(argv=None) -> None:
    args = parse_args(argv)
    device = setup()
    world = dist.get_world_size() if dist.is_initialized() else 1
    store = dp.open_store(args.store)
    loader = dp.ReplayLoader(  # rank and world size from torch.distributed
        store,
        batch_size=args.batch_size,
        epochs=args.epochs,
        distill=args.distill,
        device=device,
        max_steps=args.steps,
    )
    model = student(args, store, device)
    step_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer, scheduler = optimization(args, model, store, loader)
    criterion = dp.distillation_loss(args.distill)
    losses = []
    for batch in loader:  # every view checked against the store before it is yielded
        torch.manual_seed(dp.step_seed(args.train_seed, batch.step, batch.rank))
        loss = forward_loss(step_model, criterion, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(batch.step + 1)
        mean = loss.detach().double()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
    if not dist.is_initialized() or dist.get_rank() == 0:
        save(args.out, losses, model)
    if dist.is_initialized():
        dist.destroy_process_group()


def save(out: Path, losses: list[float], model: torch.nn.Module) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "losses.json").write_text(json.dumps(losses))
    torch.save(model.state_dict(), out / "model.pt")


if __name__ == "__main__":
    main()
