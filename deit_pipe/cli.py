"""The `deit-pipe` command line: parses options, calls library functions, prints results."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from deit_pipe import __version__
from deit_pipe.errors import DeitPipeError

console = Console(stderr=False)


class _Group(click.Group):
    """Turns a DeitPipeError anywhere below into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeitPipeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deit-pipe")
def main() -> None:
    """Train DeiT students from precomputed, replayable teacher targets."""


def recipe_options(fn):
    """Augmentation and plan flags (DeiT defaults); shared by every command that renders views."""
    options = [
        click.option("--seed", type=int, default=0, show_default=True, help="Plan seed."),
        click.option(
            "--repeats", type=int, default=3, show_default=True, help="Repeated augmentation count."
        ),
        click.option(
            "--input-size",
            type=int,
            default=None,
            help="View size [default: the source's, 224 for imagefolder].",
        ),
        click.option(
            "--aa",
            default="rand-m9-mstd0.5-inc1",
            show_default=True,
            help="timm auto-augment string ('none' to disable).",
        ),
        click.option(
            "--reprob",
            type=float,
            default=0.25,
            show_default=True,
            help="Random erasing probability.",
        ),
        click.option("--remode", default="pixel", show_default=True),
        click.option("--recount", type=int, default=1, show_default=True),
        click.option(
            "--hflip",
            type=float,
            default=None,
            help="Horizontal flip probability [default: 0.5; 0 for digits].",
        ),
        click.option("--color-jitter", type=float, default=0.3, show_default=True),
        click.option(
            "--scale-min",
            type=float,
            default=0.08,
            show_default=True,
            help="RandomResizedCrop minimum area.",
        ),
        click.option("--interpolation", default="bicubic", show_default=True),
        click.option(
            "--mixup", type=float, default=0.8, show_default=True, help="Mixup alpha (0 disables)."
        ),
        click.option(
            "--cutmix",
            type=float,
            default=1.0,
            show_default=True,
            help="CutMix alpha (0 disables).",
        ),
        click.option("--mixup-prob", type=float, default=1.0, show_default=True),
        click.option("--mixup-switch-prob", type=float, default=0.5, show_default=True),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


def build_recipe(source, opts: dict):
    """(ViewConfig, MixConfig) from the recipe flags in `opts` (consumed from the dict)."""
    from deit_pipe.data import MixConfig, ViewConfig

    aa = opts.pop("aa")
    view = ViewConfig.for_source(
        source,
        input_size=opts.pop("input_size"),
        auto_augment=None if aa.lower() == "none" else aa,
        re_prob=opts.pop("reprob"),
        re_mode=opts.pop("remode"),
        re_count=opts.pop("recount"),
        hflip=opts.pop("hflip"),
        color_jitter=opts.pop("color_jitter"),
        scale=(opts.pop("scale_min"), 1.0),
        interpolation=opts.pop("interpolation"),
    )
    mix = MixConfig(
        mixup_alpha=opts.pop("mixup"),
        cutmix_alpha=opts.pop("cutmix"),
        prob=opts.pop("mixup_prob"),
        switch_prob=opts.pop("mixup_switch_prob"),
    )
    return view, mix


@main.command()
@click.option("--data", "spec", required=True, help="Dataset spec (digits, imagefolder:ROOT, …).")
@click.option("--workers", type=int, default=8, show_default=True, help="Decoding threads.")
@click.option("--skip-bad", is_flag=True, help="Report bad files as skipped and exit 0.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def scan(spec: str, workers: int, skip_bad: bool, as_json: bool) -> None:
    """Decode every file of a dataset up front and list the unreadable ones."""
    from deit_pipe.data import open_source
    from deit_pipe.data import scan as scan_source

    source = open_source(spec)
    report = scan_source(source, workers)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "spec": spec,
                    "checked": report.checked,
                    "bad": [{"path": p, "reason": r} for p, r in report.bad],
                }
            )
        )
    else:
        console.print(f"{spec}: {report.checked} files checked, {len(report.bad)} unreadable")
        for path, reason in report.bad:
            console.print(f"  [red]bad[/red] {path}: {reason}", highlight=False)
        if report.bad and skip_bad:
            console.print("--skip-bad: these files will be excluded and recorded in the manifest")
    if report.bad and not skip_bad:
        click.echo(
            f"error: {len(report.bad)} unreadable file(s), first: {report.bad[0][0]} "
            "(fix them or pass --skip-bad)",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.option("--data", "spec", required=True, help="Dataset spec.")
@click.option("--epoch", type=int, default=0, show_default=True)
@click.option("--count", type=int, default=32, show_default=True, help="Slots to show.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("views.png"), show_default=True
)
@recipe_options
def views(spec: str, epoch: int, count: int, out: Path, **opts) -> None:
    """Render the first slots of an epoch as a labelled grid (mixed pairs visible)."""
    from deit_pipe.data import open_source, plan
    from deit_pipe.data.plan import MIX_NAMES
    from deit_pipe.data.preview import save_view_grid

    source = open_source(spec)
    view_cfg, mix = build_recipe(source, opts)
    epoch_plan = plan(
        opts["seed"], epoch, len(source.split("train")), opts["repeats"], mix, view_cfg.input_size
    )
    save_view_grid(source, epoch_plan, view_cfg, count, out)
    table = Table("slot", "sample", "repeat", "mix", "λ", "view seed")
    for slot in range(min(count, len(epoch_plan))):
        pair = slot // 2
        table.add_row(
            str(slot),
            str(epoch_plan.sample[slot]),
            str(epoch_plan.repeat[slot]),
            MIX_NAMES[epoch_plan.mix_op[pair]],
            f"{epoch_plan.lam[pair]:.3f}",
            f"{epoch_plan.view_seed[slot]:#018x}",
        )
    console.print(table)
    console.print(f"wrote {out}")


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(store: str, as_json: bool) -> None:
    """Show what a target store holds, how complete and how large it is."""
    from deit_pipe.storage import TargetStore, summarize

    info = summarize(TargetStore(store))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(show_header=False, box=None)
    teacher = info["teacher"]
    rows = [
        ("store", f"{info['url']} (format v{info['format_version']}, created {info['created']})"),
        (
            "dataset",
            f"{info['dataset']['spec']} · {info['dataset']['num_classes']} classes · "
            f"fingerprint {info['dataset']['fingerprint'][:12]}",
        ),
        (
            "teacher",
            f"{teacher.get('name')} · checkpoint "
            f"{(teacher.get('checkpoint_sha256') or 'random init')[:12]}",
        ),
        (
            "plan",
            f"seed {info['plan'].get('seed')} · repeats {info['plan'].get('repeats')} · "
            f"input {info['plan'].get('input_size')}",
        ),
        (
            "targets",
            f"top-{info['k']} {info['value_dtype']} · τ = "
            f"{', '.join(f'{t:g}' for t in info['temperatures'])}",
        ),
        (
            "epochs",
            f"{len(info['epochs_complete'])}/{info['epochs']} complete · "
            f"{info['views_per_epoch']} views/epoch · {info['val_views']} val views",
        ),
        ("missing", ", ".join(f"{s}: {len(m)} shards" for s, m in info["missing_shards"].items())),
        ("size", f"{info['bytes_on_disk']:,} bytes · {info['bytes_per_view']:.1f} bytes/view"),
    ]
    if info["topk_mass_mean"] is not None:
        rows.append(
            ("top-k mass", f"{info['topk_mass_mean']:.4f} mean at τ={info['topk_mass_tau']:g}")
        )
    if info["val_teacher_top1"] is not None:
        rows.append(("val top-1", f"{info['val_teacher_top1']:.4f} teacher vs ground truth"))
    for item in info["skipped_files"]:
        rows.append(("skipped", f"{item['path']}: {item['reason']}"))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    console.print(table, highlight=False)


def _progress(unit: str):
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@main.command()
@click.option("--data", "spec", required=True, help="Dataset spec.")
@click.option("--out", "url", required=True, help="Store path or fsspec URL.")
@click.option("--epochs", type=int, required=True, help="Training epochs to precompute.")
@click.option(
    "--split", type=click.Choice(["train", "val", "both"]), default="both", show_default=True
)
@click.option("--top-k", type=int, default=10, show_default=True)
@click.option(
    "--temperatures",
    default="1,3",
    show_default=True,
    help="τ values whose logsumexp is stored (comma-separated).",
)
@click.option(
    "--value-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True
)
@click.option("--shard-views", type=int, default=65536, show_default=True)
@click.option("--teacher", default="regnety_160", show_default=True, help="timm model name.")
@click.option(
    "--teacher-checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help=".pth (with or without a 'model' key) or .safetensors",
)
@click.option("--pretrained", is_flag=True, help="timm hub weights for --teacher (network).")
@click.option("--random-init", is_flag=True, help="Seeded random teacher (tests/benchmarks).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--loader-workers",
    type=int,
    default=0,
    show_default=True,
    help="DataLoader processes per task.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Local dask worker processes [default: one per GPU, else 1]; 0 = no dask.",
)
@click.option("--threads-per-worker", type=int, default=1, show_default=True)
@click.option("--scheduler", default=None, help="Join an existing dask cluster (tcp://HOST:PORT).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--skip-bad", is_flag=True, help="Scan first; exclude and record unreadable files.")
@click.option("--overwrite", is_flag=True, help="Replace a store holding a different job.")
@recipe_options
def precompute(
    spec,
    url,
    epochs,
    split,
    top_k,
    temperatures,
    value_dtype,
    shard_views,
    teacher,
    teacher_checkpoint,
    pretrained,
    random_init,
    batch_size,
    loader_workers,
    workers,
    threads_per_worker,
    scheduler,
    device,
    skip_bad,
    overwrite,
    **opts,
) -> None:
    """Run the teacher once over every planned view and store its top-k logits."""
    from deit_pipe.data import open_checked
    from deit_pipe.data.recipe import Recipe
    from deit_pipe.pipeline.precompute import precompute as run_precompute
    from deit_pipe.pipeline.tasks import Job
    from deit_pipe.pipeline.teacher import TeacherConfig

    source = open_checked(spec, skip_bad=skip_bad)
    view, mix = build_recipe(source, opts)
    recipe = Recipe(seed=opts["seed"], repeats=opts["repeats"], view=view, mix=mix)
    job = Job(
        url=url,
        data=spec,
        recipe=recipe.to_dict(),
        skip_bad=skip_bad,
        teacher=TeacherConfig(
            teacher,
            str(teacher_checkpoint) if teacher_checkpoint else None,
            pretrained=pretrained,
            random_init=random_init,
        ),
        batch_size=batch_size,
        loader_workers=loader_workers,
        threads=threads_per_worker,
        device=device,
    )
    splits = ("train", "val") if split == "both" else (split,)
    taus = tuple(float(t) for t in temperatures.split(","))
    with _progress("views") as bar:
        state = {"task": None, "shards": 0, "total": 0, "start": 0.0}

        def on_plan(tasks, writer):
            import time

            state["total"], state["start"] = len(tasks), time.perf_counter()
            views = sum(len(writer.shard_range(s, sh)) for s, _, sh in tasks)
            state["task"] = bar.add_task(
                "precompute", total=views, done=f"0/{len(tasks)} shards", rate=""
            )

        def on_result(result):
            import time

            state["shards"] += 1
            task = bar.tasks[state["task"]]
            rate = (task.completed + result.views) / max(time.perf_counter() - state["start"], 1e-9)
            bar.update(
                state["task"],
                advance=result.views,
                rate=f"{rate:,.0f} views/s",
                done=f"{state['shards']}/{state['total']} shards",
            )

        summary = run_precompute(
            job,
            epochs=epochs,
            splits=splits,
            k=top_k,
            temperatures=taus,
            value_dtype=value_dtype,
            shard_views=shard_views,
            overwrite=overwrite,
            workers=workers,
            threads_per_worker=threads_per_worker,
            scheduler=scheduler,
            progress=on_result,
            on_plan=on_plan,
        )
    console.print(
        f"{summary.tasks} shards, {summary.views:,} views in {summary.seconds:.1f} s "
        f"({summary.views_per_second:,.0f} views/s); store {url}: "
        f"{summary.bytes_on_disk:,} bytes",
        highlight=False,
    )


def _teacher_config(teacher, checkpoint, pretrained, random_init):
    from deit_pipe.pipeline.teacher import TeacherConfig

    return TeacherConfig(
        teacher,
        str(checkpoint) if checkpoint else None,
        pretrained=pretrained,
        random_init=random_init,
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
    **opts,
) -> None:
    """Train a DeiT student from stored targets (or online / plain supervised)."""
    if nproc_per_node:
        _relaunch_torchrun(nproc_per_node)
    from deit_pipe.data import open_source
    from deit_pipe.data.recipe import Recipe
    from deit_pipe.student.train import TrainConfig
    from deit_pipe.student.train import train as run_train

    recipe = None
    if store is None:
        if spec is None:
            raise click.UsageError("give --store STORE, or --data SPEC")
        view, mix = build_recipe(open_source(spec), opts)
        recipe = Recipe(seed=opts["seed"], repeats=opts["repeats"], view=view, mix=mix).to_dict()
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
        data=spec,
        recipe=recipe,
        teacher=_teacher_config(
            teacher, teacher_checkpoint, teacher_pretrained, teacher_random_init
        )
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
    with _progress("steps") as bar:
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


@main.command(name="audit")
@click.option("--store", required=True, help="Target store with a val/ split.")
@click.option(
    "--run",
    "runs",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory (repeat for several).",
)
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--ema", is_flag=True, help="Audit the runs' EMA weights.")
@click.option(
    "--train-views",
    type=int,
    default=512,
    show_default=True,
    help="Replayed training views for teacher agreement (0 = skip).",
)
def audit_cmd(store: str, runs: tuple[Path, ...], out: Path, ema: bool, train_views: int) -> None:
    """Teacher–student agreement on val (paper Table 4) and on replayed training views."""
    from deit_pipe.audit import audit

    result = audit(store, list(runs), out, ema=ema, train_views=train_views)
    n = len(result.classifiers)
    table = Table(
        "classifier",
        *(str(i) for i in range(1, n + 1)),
        title="disagreement (fraction of val images)",
    )
    for i, (name, row) in enumerate(zip(result.classifiers, result.matrix, strict=True), 1):
        table.add_row(f"{i} {name}", *(f"{v:.3f}" for v in row))
    console.print(table)
    metrics = Table("classifier", "top-1", "top-5", "precision", "recall", "F1", "AUC")
    for name, m in result.metrics.items():
        metrics.add_row(
            name,
            *(f"{m[k]:.3f}" for k in ("top1", "top5", "precision", "recall", "f1")),
            f"{m['auc']:.3f}" if m["auc"] is not None else "–",
        )
    console.print(metrics)
    for name, a in result.train_agreement.items():
        heads = ", ".join(f"{h} {v:.3f}" for h, v in a.items() if h in ("cls", "dist", "avg"))
        console.print(
            f"train-view agreement with the teacher, {name}: {heads or a}", highlight=False
        )
    console.print("wrote " + ", ".join(str(p) for p in result.files.values()), highlight=False)


@main.command()
@click.option("--out", default="runs/demo", show_default=True, help="Demo folder (replaced).")
@click.option("--quick", is_flag=True, help="A smaller variant (< 2 minutes), for tests.")
def demo(out: str, quick: bool) -> None:
    """The whole method end to end on the digits set: teacher, store, two students, audit."""
    from deit_pipe.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(out) if quick else DemoConfig(out=out)
    summary = run_demo(cfg, log=lambda msg: console.print(f"[bold]{msg}[/bold]"))
    table = Table(
        "",
        "val top-1 cls",
        "dist",
        "cls+dist",
        "disagrees with teacher",
        title="deit-pipe demo on digits",
    )
    table.add_row("teacher regnety_002", f"{summary['teacher_top1']:.3f}", "", "", "")
    dis = summary["disagreement_with_teacher"]
    for name, heads in summary["students"].items():
        label = next((k for k in dis if k.startswith(name.replace("deit", "deit_tiny"))), None)
        d = [v for k, v in dis.items() if k.startswith(label.split(" /")[0])] if label else []
        table.add_row(
            name,
            f"{heads['cls']:.3f}",
            f"{heads['dist']:.3f}" if "dist" in heads else "",
            f"{heads['avg']:.3f}" if "avg" in heads else "",
            " / ".join(f"{v:.3f}" for v in d),
        )
    console.print(table)
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    console.print(f"seconds: {secs} (total {summary['total_seconds']:.0f} s)", highlight=False)
    console.print(
        f"store: {summary['store']} ({summary['store_bytes_per_view']:.1f} bytes/view)",
        highlight=False,
    )
    console.print(
        f"report: {summary['report']}\nplots: {', '.join(summary['plots'])}", highlight=False
    )
