"""`scan` and `views`: look at a dataset and at the views the teacher will see."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from deit_pipe.cli import (
    build_recipe,
    console,
    data_cache_option,
    fsspec_options,
    main,
    recipe_options,
)
from deit_pipe.limits import MAX_WORKERS


@main.command()
@click.option("--data", required=True, help="Dataset spec (digits, imagefolder:ROOT, …).")
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_WORKERS),
    default=8,
    show_default=True,
    help="Decoding threads.",
)
@click.option("--skip-bad", is_flag=True, help="Report bad files as skipped and exit 0.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@fsspec_options
@data_cache_option
def scan(
    data: str, threads: int, skip_bad: bool, as_json: bool, store_options, data_options, data_cache
) -> None:
    """Decode every image of a dataset up front and list the unreadable ones (with
    --data-cache, this fills the cache before a precompute)."""
    from deit_pipe.data import open_source
    from deit_pipe.data import scan as scan_source

    source = open_source(data, data_options=data_options, data_cache=data_cache)
    report = scan_source(source, threads)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "spec": data,
                    "checked": report.checked,
                    "bad": [{"path": p, "reason": r} for p, r in report.bad],
                    "ignored": [{"path": p, "reason": r} for p, r in report.ignored],
                }
            )
        )
    else:
        console.print(
            f"{data}: {report.checked} files checked, {len(report.bad)} unreadable, "
            f"{len(report.ignored)} ignored",
            highlight=False,
        )
        for path, reason in report.bad:
            console.print(f"  [red]bad[/red] {path}: {reason}", highlight=False)
        for path, reason in report.ignored:  # not part of the dataset: say so, not an error
            console.print(f"  [yellow]ignored[/yellow] {path}: {reason}", highlight=False)
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
@click.option("--data", required=True, help="Dataset spec.")
@click.option("--epoch", type=int, default=0, show_default=True)
@click.option("--count", type=int, default=32, show_default=True, help="Slots to show.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("views.png"),
    show_default=True,
    help="The picture: .png, .jpg, .pdf or .svg (a new file, unless --force).",
)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@recipe_options
@fsspec_options
def views(
    data: str, epoch: int, count: int, out: Path, force: bool, store_options, data_options, **opts
) -> None:
    """Render the first slots of an epoch as a labelled grid (mixed pairs visible)."""
    from deit_pipe.data import open_source
    from deit_pipe.data.loaders.preview import check_view_request, save_view_grid
    from deit_pipe.data.plan.epoch import MIX_NAMES

    out = check_view_request(out, epoch, count, force)
    source = open_source(data, data_options=data_options)
    recipe = build_recipe(source, opts)
    epoch_plan = recipe.epoch_plan(epoch, source.split("train"))
    save_view_grid(source, epoch_plan, recipe.view, count, out)
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
