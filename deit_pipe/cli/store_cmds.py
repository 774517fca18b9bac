"""`precompute` and `inspect`: fill a target store and look into it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
from rich.table import Table

from deit_pipe.choices import DEVICES, TARGETS, VALUE_DTYPES
from deit_pipe.cli import (
    build_recipe,
    console,
    data_cache_option,
    fsspec_options,
    main,
    progress_bar,
    recipe_options,
    render_option,
    teacher_config,
)
from deit_pipe.limits import MAX_BATCH, MAX_EPOCHS, MAX_WORKERS
from deit_pipe.place import Place


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@fsspec_options
def inspect(
    store: str, as_json: bool, store_options: dict | None, data_options: dict | None
) -> None:
    """Show what a target store holds, how complete and how large it is."""
    from deit_pipe.storage import TargetStore, summarize

    info = summarize(TargetStore(Place(store, store_options), partial=True))
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    if info["unreadable"]:  # printed what it could; the damage is named, and fails the command
        more = f" (and {len(info['unreadable']) - 1} more)" if len(info["unreadable"]) > 1 else ""
        click.echo(f"error: {info['unreadable'][0]}{more}", err=True)
        raise SystemExit(1)


def _print_summary(info: dict) -> None:
    table = Table(show_header=False, box=None)
    rows = [
        ("store", f"{info['url']} (format v{info['format_version']}, created {info['created']})"),
        (
            "dataset",
            f"{info['dataset']['spec']} · {info['dataset']['num_classes']} classes · "
            f"fingerprint {info['dataset']['fingerprint'][:12]}",
        ),
        *(("teacher", _teacher_row(info, name, t)) for name, t in info["teachers"].items()),
        (
            "recipe",
            f"seed {info['recipe'].get('seed')} · repeats {info['recipe'].get('repeats')} · "
            f"input {info['recipe'].get('input_size')}",
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
        ("filling", _filling(info)),
        ("size", f"{info['bytes_on_disk']:,} bytes · {info['bytes_per_view']:.1f} bytes/view"),
    ]
    if info["topk_mass_mean"] is not None:
        rows.append(
            ("top-k mass", f"{info['topk_mass_mean']:.4f} mean at τ={info['topk_mass_tau']:g}")
        )
    if info["val_teacher_top1"] is not None:
        rows.append(("val top-1", f"{info['val_teacher_top1']:.4f} teacher vs ground truth"))
    for job in info["filled_by"]:
        rows.append(("filling", f"{job['epochs']}: {job['job']}"))
    for item in info["skipped_files"]:
        rows.append(("skipped", f"{item['path']}: {item['reason']}"))
    rows += [("unreadable", problem) for problem in info["unreadable"]]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    console.print(table, highlight=False)


def _teacher_row(info: dict, name: str, teacher: dict) -> str:
    """`NAME (model) · checkpoint SHA`, and each teacher's complete epochs when there are
    several."""
    model = "" if name == teacher.get("name") else f" ({teacher.get('name')})"
    row = f"{name}{model} · checkpoint {(teacher.get('checkpoint_sha256') or 'random init')[:12]}"
    if len(info["teachers"]) > 1:
        complete = len(info["epochs_complete_by_teacher"][name])
        row += f" · {complete}/{info['epochs']} epochs complete"
    return row


def parse_epoch_range(text: str | None) -> tuple[int, int] | None:
    """`--epochs-range A:B` as (A, B), 0 ≤ A < B."""
    if text is None:
        return None
    try:
        first, stop = (int(x) for x in text.split(":"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not A:B (epochs A to B−1, e.g. 0:150)", param_hint="--epochs-range"
        ) from None
    if not 0 <= first < stop:
        raise click.BadParameter(f"{text!r} is empty: need 0 ≤ A < B", param_hint="--epochs-range")
    return first, stop


def parse_temperatures(text: str) -> tuple[float, ...]:
    """`--temperatures 1,3` as floats, each finite and positive (τ = 0 divides by zero)."""
    import math

    try:
        taus = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of numbers", param_hint="--temperatures"
        ) from None
    bad = [t for t in taus if not (math.isfinite(t) and t > 0)]
    if bad:
        raise click.BadParameter(
            f"τ must be finite and positive, got {bad[0]:g}", param_hint="--temperatures"
        )
    return taus


def _positive_rate(value: float | None) -> float | None:
    """`--throughput` divides the job's views: 0, a negative, nan or inf would price it at
    a division by zero or a meaningless time."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(
            f"views/s must be finite and > 0, got {value:g}", param_hint="--throughput"
        )
    return value


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1000
    return ""


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _print_cost(cost, job, epochs: int, split) -> None:
    from deit_pipe.data.plan.order import describe_order, sorted_blocks_warning

    split_views = " + ".join(f"{v:,} {s}" for s, v in cost.views.items())
    how = "measured here" if cost.measured else "given"
    lines = [
        f"dry run: {cost.total_views:,} views ({split_views}; {epochs} training epochs)",
        f"store:   ≈ {_size(cost.store_bytes)} at ≈ {cost.bytes_per_view:.1f} bytes/view",
        f"teacher: {job.teacher.name} forward at {cost.views_per_second:,.1f} views/s ({how}, "
        f"{cost.device}) → ≈ {_duration(cost.seconds)} on one such device, rendering aside",
        f"render:  {cost.render_views_per_second:,.0f} views/s per loader worker (measured "
        f"here) → --loader-workers {cost.loader_workers} per device keeps the teacher busy",
        describe_order(job.recipe.order, split),
    ]
    if cost.memory is not None:
        from deit_pipe.limits import GiB, memory_bytes

        m = cost.memory
        lines.insert(
            4,
            f"memory:  ≈ {sum(m.values()) / GiB:,.2f} GiB a device (teacher weights "
            f"{m['weights'] / GiB:,.2f}, a batch of {job.batch_size} views "
            f"{m['views'] / GiB:,.2f}, activations ≈ {m['activations'] / GiB:,.2f}); this "
            f"machine has {memory_bytes() / GiB:,.1f} GiB",
        )
    warning = sorted_blocks_warning(job.recipe.order, split)
    lines += [f"warning: {warning}"] if warning else []
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _filling(info: dict) -> str:
    p = info["progress"]
    if p is None:
        return "unreadable (see below)"
    if p["views_done"] == p["views_total"]:
        return "complete"
    complete = ", ".join(str(e) for e in info["epochs_complete"]) or "none"
    if p["eta_s"] is None:
        pace = "no shard completed in the last minute"
    else:
        eta = int(p["eta_s"])
        clock = f"{eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
        pace = f"{p['views_per_s']:,.0f} views/s over the last minute · ETA {clock}"
    return f"{p['views_done']:,}/{p['views_total']:,} views · epochs complete: {complete} · {pace}"


class ShardProgress:
    """The precompute's progress bar: views done, shards done, views/s, ETA."""

    def __init__(self, bar):
        self.bar, self.task, self.shards, self.total, self.start = bar, None, 0, 0, 0.0

    def on_plan(self, tasks, writer) -> None:
        import time

        self.total, self.start = len(tasks), time.perf_counter()
        views = sum(len(writer.shard_range(s, sh)) for s, _, sh in tasks)
        self.task = self.bar.add_task(
            "precompute", total=views, done=f"0/{len(tasks)} shards", rate=""
        )

    def on_result(self, result) -> None:
        import time

        self.shards += 1
        done = self.bar.tasks[self.task].completed + result.views
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(
            self.task,
            advance=result.views,
            rate=f"{rate:,.0f} views/s",
            done=f"{self.shards}/{self.total} shards",
        )


@main.command()
@click.option("--data", required=True, help="Dataset spec.")
@click.option("--out", "url", required=True, help="Store path or fsspec URL.")
@click.option(
    "--epochs",
    type=click.IntRange(1, MAX_EPOCHS),
    default=None,
    help="Training epochs to precompute (a store holding fewer grows to this many).",
)
@click.option(
    "--epochs-range",
    default=None,
    callback=lambda ctx, param, value: parse_epoch_range(value),
    help="A:B: compute training epochs A to B−1 only, beside jobs on other epochs of the "
    "same store (the store grows to B).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "both"]),
    default="both",
    show_default=True,
    help="both: train, and val unless --epochs-range starts past 0.",
)
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--temperatures",
    default="1,3",
    show_default=True,
    callback=lambda ctx, param, value: parse_temperatures(value),
    help="τ values whose logsumexp is stored (comma-separated, each > 0).",
)
@click.option(
    "--value-dtype", type=click.Choice(VALUE_DTYPES), default="float16", show_default=True
)
@click.option(
    "--targets",
    type=click.Choice(TARGETS),
    default="soft",
    show_default=True,
    help="hard: the teacher's top-1 class only (the paper's default distillation; ~9 B/view).",
)
@click.option("--dry-run", is_flag=True, help="Print the job's views, store size and time; stop.")
@click.option(
    "--throughput",
    type=float,
    default=None,
    callback=lambda ctx, param, value: _positive_rate(value),
    help="Teacher views/s for --dry-run [default: measured here on a few batches].",
)
@click.option(
    "--shard-views",
    type=click.IntRange(min=2),
    default=None,
    help="Views per shard (one task each) [default: the split's epoch up to 65,536 views].",
)
@click.option(
    "--teacher-model", default="regnety_160", show_default=True, help="The teacher's timm model."
)
@click.option(
    "--teacher-name",
    default=None,
    help="The teacher's name in the store [default: --teacher-model]; a new name adds another "
    "teacher to an existing store (same plan and views).",
)
@click.option(
    "--teacher-checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help=".pth (with or without a 'model' key) or .safetensors",
)
@click.option(
    "--teacher-pretrained", is_flag=True, help="timm hub weights for --teacher-model (network)."
)
@click.option(
    "--teacher-random-init", is_flag=True, help="Seeded random teacher (tests/benchmarks)."
)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=256, show_default=True)
@click.option(
    "--loader-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader processes per task.",
)
@click.option(
    "--dask-workers",
    type=click.IntRange(0, MAX_WORKERS),
    default=None,
    help="Local dask worker processes [default: one per GPU, else 1]; 0 = no dask.",
)
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--scheduler", default=None, help="Join an existing dask cluster (tcp://HOST:PORT).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Scan first; exclude and record unreadable files.")
@click.option("--compile", "compile_teacher", is_flag=True, help="torch.compile the teacher.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a deit-pipe store holding a different job (never anything else).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Re-check every finished shard against its checksums; recompute damaged ones.",
)
@render_option
@fsspec_options
@data_cache_option
@recipe_options
def precompute(**opts) -> None:
    """Run the teacher once over every planned view and store its top-k logits."""
    from deit_pipe.pipeline.precompute import precompute as run_precompute

    job, request, source = _job_and_request(opts)
    if opts.pop("dry_run"):
        from deit_pipe.pipeline.cost import estimate

        cost = estimate(job, request, throughput=opts["throughput"])
        _print_cost(cost, job, request.epochs - request.first_epoch, source.split("train"))
        return
    with progress_bar("views") as bar:
        shown = ShardProgress(bar)
        summary = run_precompute(
            job,
            request,
            overwrite=opts["overwrite"],
            repair=opts["repair"],
            workers=opts["dask_workers"],
            threads_per_worker=job.threads,
            scheduler=opts["scheduler"],
            progress=shown.on_result,
            on_plan=shown.on_plan,
        )
    console.print(
        f"{summary.tasks} shards, {summary.views:,} views in {summary.seconds:.1f} s "
        f"({summary.views_per_second:,.0f} views/s); store {job.url}: "
        f"{summary.bytes_on_disk:,} bytes" + _kernel_share(summary),
        highlight=False,
    )


def _kernel_share(summary) -> str:
    """How many views the kernels rendered (`--render device`), and Pillow the rest."""
    if not summary.kernel_views:
        return ""
    rest = summary.views - summary.kernel_views
    pillow = f", Pillow {rest:,} (steps without a kernel)" if rest else ""
    return f"; rendered by the kernels: {summary.kernel_views:,}{pillow}"


def _job_and_request(opts: dict):
    """(Job, StoreRequest, Source) from precompute's flags, built in one place: the job
    (data, recipe, teacher, how it runs) and what store it makes (epochs, splits, targets)."""
    from deit_pipe.data import open_checked
    from deit_pipe.pipeline.request import StoreRequest
    from deit_pipe.pipeline.tasks import Job

    if (opts["epochs"] is None) == (opts["epochs_range"] is None):
        raise click.UsageError("give --epochs N or --epochs-range A:B (one of them)")
    first, epochs = opts["epochs_range"] or (0, opts["epochs"])
    reach = {"data_options": opts["data_options"], "data_cache": opts["data_cache"]}
    source = open_checked(opts["data"], skip_bad=opts["skip_bad"], **reach)
    teacher = [opts[k] for k in ("teacher_model", "teacher_checkpoint", "teacher_pretrained")]
    job = Job(
        url=Place(opts["url"], opts["store_options"]),
        data=opts["data"],
        recipe=build_recipe(source, opts),
        skip_bad=opts["skip_bad"],
        teacher=teacher_config(*teacher, opts["teacher_random_init"]),
        batch_size=opts["batch_size"],
        loader_workers=opts["loader_workers"],
        threads=opts["threads_per_worker"],
        device=opts["device"],
        render=opts["render"],
        compile=opts["compile_teacher"],
        teacher_name=opts["teacher_name"],
        **reach,
    )
    both = ("train", "val") if first == 0 else ("train",)  # val goes with epoch 0's job
    request = StoreRequest(
        epochs=epochs,
        first_epoch=first,
        splits=both if opts["split"] == "both" else (opts["split"],),
        k=opts["top_k"],
        temperatures=opts["temperatures"],
        value_dtype=opts["value_dtype"],
        shard_views=opts["shard_views"],
        targets=opts["targets"],
    )
    return job, request, source


@main.command()
@click.argument("store")
@click.option("--data", default=None, help="The dataset on this machine [default: the store's].")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="Views to re-render per stored epoch and for val [default: 4,096 in all, spread].",
)
@click.option("--all", "all_views", is_flag=True, help="Re-render every stored view.")
@click.option(
    "--loader-workers",
    type=click.IntRange(0, MAX_WORKERS),
    default=2,
    show_default=True,
    help="DataLoader rendering processes.",
)
@render_option
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@fsspec_options
@data_cache_option
def verify(
    store,
    data,
    sample,
    all_views,
    loader_workers,
    render,
    device,
    as_json,
    store_options,
    data_options,
    data_cache,
) -> None:
    """Re-render stored views on this machine and compare fingerprints (no teacher runs).

    Exit status 0 when every checked view matches, 1 otherwise.
    """
    from contextlib import nullcontext

    from deit_pipe.pipeline.verify import verify as run_verify

    with nullcontext() if as_json else progress_bar("views") as bar:
        task = None

        def show(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("verify", total=total, done="", rate="")
            elapsed = bar.tasks[task].elapsed or 1e-9
            bar.update(task, completed=done, rate=f"{done / elapsed:,.0f} views/s")

        report = run_verify(
            Place(store, store_options),
            data=data,
            sample=sample,
            all_views=all_views,
            workers=loader_workers,
            data_options=data_options,
            data_cache=data_cache,
            render=render,
            device=device,
            progress=None if as_json else show,
        )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_verify(report)
    if not report.ok:
        click.echo(f"error: {_verify_failure(store, report)}", err=True)
        raise SystemExit(1)


def _verify_failure(store: str, report) -> str:
    """The one line a failed verify ends with: the first damaged shard, or what differs."""
    first = next((e for e in report.epochs if e.first_mismatch), None)
    where = ""
    if first is not None:
        m = first.first_mismatch
        partner = f" mixed with {m['mixed_with']}" if "mixed_with" in m else ""
        where = (
            f"; first: {first.split} epoch {first.epoch} slot {m['slot']} ({m['file']}{partner})"
        )
    drift = f"; library versions differ: {report.version_drift}" if report.version_drift else ""
    dataset = "" if report.dataset_matches else "the dataset changed since it was made; "
    if report.damaged:
        return f"{len(report.damaged)} damaged shard(s), first: {report.damaged[0]}"
    return (
        f"{store}: {dataset}{report.mismatches} of {report.checked} re-rendered views "
        f"differ{where}{drift}"
    )


def _verify_rows(epochs: list) -> list:
    """Epochs to show: every epoch with a finding; clean epochs of a split folded into one
    row once there are more than a dozen."""
    if len(epochs) <= 12:
        return epochs
    from dataclasses import replace

    rows = []
    for split in dict.fromkeys(e.split for e in epochs):
        mine = [e for e in epochs if e.split == split]
        clean = [e for e in mine if not e.mismatches and not e.unfinished_shards and not e.damaged]
        if len(clean) > 1:
            span = f"{clean[0].epoch}–{clean[-1].epoch} ({len(clean)} clean)"
            rows.append(replace(clean[0], epoch=span, checked=sum(e.checked for e in clean)))
        else:
            rows += clean
        rows += [e for e in mine if e not in clean]
    return rows


def _print_verify(report) -> None:
    table = Table("split", "epoch", "checked", "mismatches", "first mismatch")
    for e in _verify_rows(report.epochs):
        m = e.first_mismatch
        first = ""
        if m:
            first = f"slot {m['slot']}: {m['file']}" + (
                f" (mixed with {m['mixed_with']})" if "mixed_with" in m else ""
            )
        if e.unfinished_shards:
            first = (first + " " if first else "") + f"[{e.unfinished_shards} shards not done]"
        if e.damaged:
            first = (first + " " if first else "") + f"[{len(e.damaged)} damaged: --repair]"
        table.add_row(e.split, str(e.epoch), f"{e.checked:,}", str(e.mismatches), first)
    console.print(table)
    if not report.dataset_matches:
        console.print("dataset: files changed since the store was made (fingerprint differs)")
    for lib, change in report.version_drift.items():
        console.print(f"version: {lib} {change}", highlight=False)
    verdict = "OK" if report.ok else ("DAMAGED" if report.damaged else "MISMATCH")
    console.print(
        f"{verdict}: {report.checked:,} views re-rendered in {report.seconds:.1f} s, "
        f"{report.mismatches} differ; {len(report.damaged)} damaged shard arrays",
        highlight=False,
    )
