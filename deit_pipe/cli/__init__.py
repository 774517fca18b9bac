"""The `deit-pipe` command line: parses options, calls library functions, prints results.

The group and the shared options live here; commands live in one module per stage.
"""

from __future__ import annotations

import functools
import sys

import click
from rich.console import Console

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
    """The Recipe (plan seed, repeats, views, mixing) from the recipe flags in `opts`.

    The view and mix flags are consumed from the dict; `seed` and `repeats` stay.
    """
    from deit_pipe.data import MixConfig, ViewConfig
    from deit_pipe.data.recipe import Recipe

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
    return Recipe(seed=opts["seed"], repeats=opts["repeats"], view=view, mix=mix)


def storage_options_option(fn):
    """`--storage-options JSON` (or DEIT_PIPE_STORAGE_OPTIONS) for commands that open a store."""

    def parse(ctx, param, value):
        from deit_pipe.storage.io import parse_storage_options

        return parse_storage_options(value)

    return click.option(
        "--storage-options",
        envvar="DEIT_PIPE_STORAGE_OPTIONS",
        default=None,
        callback=parse,
        help="fsspec options for an object-store URL, as JSON, e.g. "
        '\'{"client_kwargs": {"endpoint_url": "http://host:9000"}}\' '
        "[env: DEIT_PIPE_STORAGE_OPTIONS; credentials also from AWS_*/GOOGLE_* variables].",
    )(fn)


def teacher_config(name: str, checkpoint, pretrained: bool, random_init: bool):
    """TeacherConfig from the teacher flags shared by `precompute` and `train`."""
    from deit_pipe.pipeline.teacher import TeacherConfig

    return TeacherConfig(
        name,
        str(checkpoint) if checkpoint else None,
        pretrained=pretrained,
        random_init=random_init,
    )


def progress_bar(unit: str):
    """A rich progress bar with `done` and `rate` text fields, for long jobs.

    It appears with its first task, so a job that fails before starting prints only its error.
    """
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class LazyProgress(Progress):
        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            if self.live.is_started:
                self.stop()

        def add_task(self, *args, **kwargs):
            if not self.live.is_started:
                self.start()
            return super().add_task(*args, **kwargs)

    return LazyProgress(
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


# Register the commands (each module adds its commands to `main`).
from deit_pipe.cli import audit_cmds, data_cmds, store_cmds, train_cmds  # noqa: E402, F401
