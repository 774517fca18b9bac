"""`precompute` and `inspect`: fill a target store and look into it."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from deit_pipe.cli import (
    build_recipe,
    console,
    main,
    progress_bar,
    recipe_options,
    teacher_config,
)


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
    from deit_pipe.pipeline.precompute import precompute as run_precompute
    from deit_pipe.pipeline.tasks import Job

    source = open_checked(spec, skip_bad=skip_bad)
    recipe = build_recipe(source, opts)
    job = Job(
        url=url,
        data=spec,
        recipe=recipe.to_dict(),
        skip_bad=skip_bad,
        teacher=teacher_config(teacher, teacher_checkpoint, pretrained, random_init),
        batch_size=batch_size,
        loader_workers=loader_workers,
        threads=threads_per_worker,
        device=device,
    )
    splits = ("train", "val") if split == "both" else (split,)
    taus = tuple(float(t) for t in temperatures.split(","))
    with progress_bar("views") as bar:
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
