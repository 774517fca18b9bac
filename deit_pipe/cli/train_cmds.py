"""`train` and `eval`: students from a store (or online, or plain supervised)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from deit_pipe.cli import (
    build_recipe,
    console,
    main,
    progress_bar,
    recipe_options,
    storage_options_option,
    teacher_config,
)


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--store", default=None, help="Target store (offline distillation).")
@click.option("--data", "spec", default=None, help="Dataset spec (without --store).")
@click.option("--teacher", default=None, help="Run this timm teacher online instead of a store.")
@click.option("--teacher-checkpoint", type=click.Path(path_type=Path), default=None)
@click.option("--teacher-pretrained", is_flag=True)
@click.option("--teacher-random-init", is_flag=True)
@click.option("--model", default="deit_tiny_distilled_patch16_224", show_default=True)
@click.option("--img-size", type=int, default=None)
@click.option("--patch-size", type=int, default=None)
@click.option("--depth", type=int, default=None)
@click.option("--embed-dim", type=int, default=None)
@click.option("--num-heads", type=int, default=None)
@click.option("--drop-path", type=float, default=0.1, show_default=True)
@click.option(
    "--distill", type=click.Choice(["none", "soft", "hard"]), default="hard", show_default=True
)
@click.option(
    "--alpha", type=float, default=None, help="Teacher weight λ [default: 0.5 hard, 0.1 soft]."
)
@click.option("--tau", type=float, default=None, help="Temperature [default: 1 hard, 3 soft].")
@click.option(
    "--kl-reduction",
    type=click.Choice(["batchmean", "numel"]),
    default="batchmean",
    show_default=True,
)
@click.option("--teacher-smoothing", type=float, default=0.0, show_default=True)
@click.option("--smoothing", type=float, default=0.1, show_default=True)
@click.option("--epochs", type=int, default=300, show_default=True)
@click.option("--batch-size", type=int, default=1024, show_default=True, help="Global batch.")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Per 512 images.")
@click.option("--min-lr", type=float, default=1e-5, show_default=True)
@click.option("--warmup-lr", type=float, default=1e-6, show_default=True)
@click.option("--warmup-epochs", type=float, default=5, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--clip-grad", type=float, default=None)
@click.option("--ema", is_flag=True, help="Keep an EMA of the weights (ModelEmaV3).")
@click.option("--ema-decay", type=float, default=0.99996, show_default=True)
@click.option(
    "--train-seed", type=int, default=0, show_default=True, help="Student init and drop-path seed."
)
@click.option("--loader-workers", type=int, default=0, show_default=True)
@click.option(
    "--ckpt-every",
    type=int,
    default=0,
    show_default=True,
    help="Checkpoint every N steps (and at every epoch end).",
)
@click.option("--cycle-epochs", is_flag=True, help="Reuse stored epoch e mod E past the store.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt at its exact step.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option(
    "--nproc-per-node",
    type=int,
    default=None,
    help="Relaunch under torchrun with this many processes.",
)
@storage_options_option
@recipe_options
def train(
    out,
    store,
    spec,
    teacher,
    teacher_checkpoint,
    teacher_pretrained,
    teacher_random_init,
    model,
    img_size,
    patch_size,
    depth,
    embed_dim,
    num_heads,
    drop_path,
    distill,
    alpha,
    tau,
    kl_reduction,
    teacher_smoothing,
    smoothing,
    epochs,
    batch_size,
    lr,
    min_lr,
    warmup_lr,
    warmup_epochs,
    weight_decay,
    clip_grad,
    ema,
    ema_decay,
    train_seed,
    loader_workers,
    ckpt_every,
    cycle_epochs,
    resume,
    device,
    max_steps,
    nproc_per_node,
    storage_options,
    **opts,
) -> None:
    """Train a DeiT student from stored targets (or online / plain supervised)."""
    if nproc_per_node:
        _relaunch_torchrun(nproc_per_node)
    from deit_pipe.data import open_source
    from deit_pipe.student.train import TrainConfig
    from deit_pipe.student.train import train as run_train

    recipe = None
    if store is None:
        if spec is None:
            raise click.UsageError("give --store STORE, or --data SPEC")
        recipe = build_recipe(open_source(spec), opts).to_dict()
    overrides = {
        k: v
        for k, v in dict(
            img_size=img_size,
            patch_size=patch_size,
            depth=depth,
            embed_dim=embed_dim,
            num_heads=num_heads,
        ).items()
        if v is not None
    }
    cfg = TrainConfig(
        out=str(out),
        store=store,
        storage_options=storage_options,
        data=spec,
        recipe=recipe,
        teacher=teacher_config(teacher, teacher_checkpoint, teacher_pretrained, teacher_random_init)
        if teacher
        else None,
        model=model,
        model_overrides=overrides,
        drop_path=drop_path,
        distill=distill,
        alpha=alpha if alpha is not None else (0.1 if distill == "soft" else 0.5),
        tau=tau if tau is not None else (3.0 if distill == "soft" else 1.0),
        kl_reduction=kl_reduction,
        teacher_smoothing=teacher_smoothing,
        smoothing=smoothing,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=warmup_epochs,
        weight_decay=weight_decay,
        clip_grad=clip_grad,
        ema=ema,
        ema_decay=ema_decay,
        seed=train_seed,
        loader_workers=loader_workers,
        ckpt_every=ckpt_every,
        cycle_epochs=cycle_epochs,
        resume=resume,
        device=device,
        max_steps=max_steps,
    )
    rank = int(__import__("os").environ.get("RANK", "0"))
    with progress_bar("steps") as bar:
        task = None

        def show(record):
            nonlocal task
            if task is None:
                task = bar.add_task("train", total=record["total_steps"], done="", rate="")
            if "eval" in record:
                tops = " ".join(f"{h} {v['top1']:.3f}" for h, v in sorted(record["eval"].items()))
                bar.console.print(f"epoch {record['epoch']}: val top-1 {tops}", highlight=False)
                return
            bar.update(
                task,
                completed=record["step"],
                done=f"loss {record['loss']:.4f}",
                rate=f"{record['img_s']:,.0f} img/s",
            )

        result = run_train(cfg, progress=show if rank == 0 else None)
    if rank == 0:
        console.print(f"run {out}: final val " + json.dumps(result), highlight=False)


def _relaunch_torchrun(nproc: int) -> None:
    import os
    import subprocess

    args = sys.argv[1:]
    i = args.index("--nproc-per-node")
    args = args[:i] + args[i + 2 :]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "deit_pipe",
        *args,
    ]
    sys.exit(subprocess.call(cmd, env=os.environ.copy()))


@main.command(name="eval")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path))
@click.option("--data", "spec", default=None, help="Dataset spec [default: the run's].")
@click.option("--ema", is_flag=True, help="Evaluate the EMA weights.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(checkpoint: Path, spec: str | None, ema: bool, as_json: bool) -> None:
    """Top-1/top-5 of every head of a checkpoint on clean val views."""
    from deit_pipe.student.runs import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, spec, ema=ema)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table("head", "top-1", "top-5")
    for head, v in sorted(result["heads"].items()):
        table.add_row(head, f"{v['top1']:.4f}", f"{v['top5']:.4f}")
    console.print(table)
