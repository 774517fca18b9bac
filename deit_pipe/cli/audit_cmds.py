"""`audit` and `demo`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from deit_pipe.cli import console, data_cache_option, fsspec_options, main, render_option


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
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Report directory: new, empty, or an earlier audit report (whose files it replaces).",
)
@click.option(
    "--force", is_flag=True, help="Replace report files in a folder deit-pipe did not mark."
)
@click.option("--ema", is_flag=True, help="Audit the runs' EMA weights.")
@click.option(
    "--train-views",
    type=click.IntRange(min=0),
    default=512,
    show_default=True,
    help="Replayed training views for teacher agreement (0 = skip).",
)
@click.option(
    "--teacher-name",
    default=None,
    help="The store's teacher(s) to compare with: A, or an ensemble A,B / A=0.7,B=0.3 "
    "[default: the first run's]; a store of several teachers also shows each alone.",
)
@render_option
@fsspec_options
@data_cache_option
def audit_cmd(
    store: str,
    runs: tuple[Path, ...],
    out: str,
    force: bool,
    ema: bool,
    train_views: int,
    teacher_name: str | None,
    render: str,
    store_options: dict | None,
    data_options: dict | None,
    data_cache,
) -> None:
    """Teacher–student agreement on val (paper Table 4) and on replayed training views."""
    from deit_pipe.audit import audit
    from deit_pipe.place import Place

    result = audit(
        Place(store, store_options),
        list(runs),
        out,
        ema=ema,
        train_views=train_views,
        data_options=data_options,
        data_cache=data_cache,
        teacher=teacher_name,
        force=force,
        render=render,
    )
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
@click.option(
    "--out",
    default="runs/demo",
    show_default=True,
    help="Demo folder: new, empty, or an earlier demo (whose files it replaces).",
)
@click.option("--quick", is_flag=True, help="A smaller variant (< 2 minutes), for tests.")
@click.option(
    "--force", is_flag=True, help="Replace demo files in a folder deit-pipe did not mark."
)
def demo(out: str, quick: bool, force: bool) -> None:
    """The whole method end to end on the digits set: teacher, store, two students, audit."""
    from deit_pipe.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(out) if quick else DemoConfig(out=out)
    summary = run_demo(cfg, log=lambda msg: console.print(f"[bold]{msg}[/bold]"), force=force)
    columns = ("top-1", "top-5", "prec.", "recall", "F1", "AUC", "≠ teacher")
    table = Table("val, 360 images", *columns, title="deit-pipe demo on digits")
    for name, heads in summary["classifiers"].items():
        for head, m in heads.items():
            differs = summary["disagreement_with_teacher"].get(name, {}).get(head)
            table.add_row(
                name if len(heads) == 1 else f"{name} · {head}",
                *(f"{m[k]:.3f}" for k in ("top1", "top5", "precision", "recall", "f1")),
                f"{m['auc']:.3f}" if m["auc"] is not None else "–",
                f"{differs:.3f}" if differs is not None else "",
            )
    Console(width=max(console.width, 100)).print(table)  # never wrapped: it is the result
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    console.print(f"seconds: {secs} (total {summary['total_seconds']:.0f} s)", highlight=False)
    console.print(
        f"store: {summary['store']} ({summary['store_bytes_per_view']:.1f} bytes/view)",
        highlight=False,
    )
    made, students = summary["rendering"]["store"], summary["rendering"]["students"]
    console.print(
        f"views: the store's {made['views']:,} by --render {made['render']} "
        f"({made['kernels']:,} through the tensor kernels); the students replayed them with "
        f"--render {'/'.join(sorted(set(students.values())))}, every fingerprint equal",
        highlight=False,
    )
    console.print(
        f"report: {summary['report']}\nplots: {', '.join(summary['plots'])}", highlight=False
    )
