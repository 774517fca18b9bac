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
