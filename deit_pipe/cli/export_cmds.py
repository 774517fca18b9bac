"""`export`: a run's student as a timm model folder with a model card."""

from __future__ import annotations

from pathlib import Path

import click

from deit_pipe.choices import EXPORT_HEADS
from deit_pipe.cli import console, main


@main.command(name="export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Model folder: new, empty, or an earlier export (whose files it replaces).",
)
@click.option("--ema", is_flag=True, help="Export the EMA weights (a run trained with --ema).")
@click.option(
    "--head",
    type=click.Choice(EXPORT_HEADS),
    default=None,
    help="What the exported forward returns: cls+dist averaged, or one head "
    "[default: avg for a distilled DeiT, else cls].",
)
@click.option(
    "--audit",
    "audit_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="An `audit` report of this run: its teacher agreement goes into the model card.",
)
@click.option(
    "--force", is_flag=True, help="Replace model files in a folder deit-pipe did not mark."
)
def export_cmd(
    run: Path, out: str, ema: bool, head: str | None, audit_dir: Path | None, force: bool
) -> None:
    """Write RUN's student as model.safetensors + config.json (timm's layout) + README.md."""
    from deit_pipe.student.export import export_run

    result = export_run(run, out, ema=ema, head=head, audit=audit_dir, force=force)
    if result.unfinished:
        console.print(
            f"warning: {run} stopped at {result.unfinished}: the export is of an unfinished "
            "run (its card says so)",
            highlight=False,
        )
    console.print(
        f"exported {run} (step {result.step}, {result.head} head"
        f"{', EMA' if ema else ''}) to {result.out}; load it with "
        f'timm.create_model("local-dir:{result.out}", pretrained=True)',
        highlight=False,
    )
