"""The `deit-pipe` command line: parses options, calls library functions, prints results.

The group and the shared options live here; commands live in one module per stage.
"""

from __future__ import annotations

import functools
import sys

import click
from rich.console import Console

from deit_pipe import __version__
from deit_pipe.errors import DeitPipeError, backend_line, raised_in_backend

console = Console(stderr=False)


# Flags renamed so that each name has one meaning (old spelling → new, per command). The
# old spellings keep working for one release, with a one-line notice on stderr.
RENAMED = {
    "precompute": {
        "--workers": "--dask-workers",
        "--teacher": "--teacher-model",
        "--seed": "--plan-seed",
        "--recipe": "--preset",
        "--pretrained": "--teacher-pretrained",  # train's spelling, one name for one thing
        "--random-init": "--teacher-random-init",
    },
    "train": {"--teacher": "--teacher-model", "--seed": "--plan-seed", "--recipe": "--preset"},
    "views": {"--seed": "--plan-seed", "--recipe": "--preset"},
    "scan": {"--workers": "--threads"},
    "verify": {"--workers": "--loader-workers"},
}


def renamed_flags(args: list[str]) -> list[str]:
    """`args` with the old spellings of renamed flags (`RENAMED`) replaced, each noted once."""
    command = next((a for a in args if not a.startswith("-")), None)
    renames = RENAMED.get(command, {})
    out = []
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in renames:
            click.echo(
                f"note: {command} {flag} is now {renames[flag]}; the old spelling goes in the "
                "next release",
                err=True,
            )
            arg = renames[flag] + eq + value
        out.append(arg)
    return out


class _Group(click.Group):
    """Turns a DeitPipeError anywhere below (or a failure inside an object-store library:
    options it cannot take) into one line on stderr and exit code 1, and a bad flag or
    value into one line naming it and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeitPipeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            backend = raised_in_backend(exc)  # bad storage options: the backend's to say
            if backend is None:
                raise
            click.echo(f"error: {backend_line(exc, backend)}", err=True)
            sys.exit(1)

    def main(self, args=None, *rest, **kwargs):
        args = renamed_flags(list(sys.argv[1:] if args is None else args))
        kwargs.setdefault("standalone_mode", True)
        if not kwargs["standalone_mode"]:
            return super().main(args, *rest, **kwargs)
        try:
            return super().main(args, *rest, **{**kwargs, "standalone_mode": False})
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "deit-pipe"
            click.echo(f"error: {exc.format_message()} (see {command} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deit-pipe")
def main() -> None:
    """Train DeiT students from precomputed, replayable teacher targets."""


def recipe_options(fn):
    """Plan and augmentation flags; unset ones come from the recipe preset."""
    from deit_pipe.choices import PRESET_SUMMARIES

    unset = "[default: the recipe's]"
    options = [
        click.option(
            "--preset",
            type=click.Choice(list(PRESET_SUMMARIES)),
            default=None,
            help="Recipe preset (its views and schedule) [default: deit; small for digits and "
            "CIFAR]. " + " ".join(f"{name}: {text}." for name, text in PRESET_SUMMARIES.items()),
        ),
        click.option(
            "--plan-seed",
            type=int,
            default=0,
            show_default=True,
            help="Seed of the epoch plan: the order, the views and the mixes.",
        ),
        click.option(
            "--order",
            default=None,
            metavar="global|blocks[:W]",
            help="Sample order per epoch: a global permutation, or blocks (row groups, runs "
            "of tar members or files) permuted then shuffled within windows of W blocks, so "
            "each block is read once per window [default: blocks for parquet: and wds: "
            "(W sized to ~128 MiB a window), global otherwise].",
        ),
        click.option("--repeats", type=int, default=None, help=f"Repeated augmentation {unset}"),
        click.option(
            "--input-size", type=int, default=None, help="View size [default: the source's]."
        ),
        click.option("--aa", default=None, help=f"timm auto-augment string or 'none' {unset}"),
        click.option("--reprob", type=float, default=None, help=f"Random erasing prob {unset}"),
        click.option("--remode", default=None, help=f"Random erasing mode {unset}"),
        click.option("--recount", type=int, default=None, help=f"Random erasing count {unset}"),
        click.option(
            "--hflip",
            type=float,
            default=None,
            help="Flip probability [default: 0.5; 0 for digits].",
        ),
        click.option("--color-jitter", type=float, default=None, help=f"Color jitter {unset}"),
        click.option(
            "--scale-min", type=float, default=None, help=f"RandomResizedCrop min area {unset}"
        ),
        click.option("--interpolation", default=None, help=f"Interpolation {unset}"),
        click.option("--mixup", type=float, default=None, help=f"Mixup alpha, 0 = off {unset}"),
        click.option("--cutmix", type=float, default=None, help=f"CutMix alpha, 0 = off {unset}"),
        click.option("--mixup-prob", type=float, default=None, help=f"Mix probability {unset}"),
        click.option("--mixup-switch-prob", type=float, default=None, help=f"CutMix share {unset}"),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


RECIPE_FLAGS = {  # CLI flag name → recipe field
    "repeats": "repeats",
    "input_size": "input_size",
    "aa": "auto_augment",
    "reprob": "re_prob",
    "remode": "re_mode",
    "recount": "re_count",
    "hflip": "hflip",
    "color_jitter": "color_jitter",
    "interpolation": "interpolation",
    "mixup": "mixup_alpha",
    "cutmix": "cutmix_alpha",
    "mixup_prob": "prob",
    "mixup_switch_prob": "switch_prob",
}


def build_recipe(source, opts: dict):
    """The Recipe from `--preset` (or the source's default preset) and the flags set.

    The recipe flags are consumed from `opts`; `preset` and `plan_seed` stay.
    """
    from deit_pipe.data.plan.recipe import get_preset

    preset = get_preset(opts["preset"] or source.default_recipe)
    fields = {field: opts.pop(flag) for flag, field in RECIPE_FLAGS.items()}
    scale_min = opts.pop("scale_min")
    if scale_min is not None:
        fields["scale"] = (scale_min, 1.0)
    if isinstance(fields["auto_augment"], str) and fields["auto_augment"].lower() == "none":
        fields["auto_augment"] = ""
    from deit_pipe.data.plan.order import resolve_order

    fields["order"] = resolve_order(opts.pop("order"), source.data, source.split("train"))
    return preset.recipe(source, seed=opts["plan_seed"], **fields)


def render_option(fn):
    """`--render auto|host|device`: who runs the training views' Pillow stage (the bytes are
    the same either way; `data.device.render.render_mode` resolves auto)."""
    from deit_pipe.choices import RENDERS

    return click.option(
        "--render",
        type=click.Choice(RENDERS),
        default="auto",
        show_default=True,
        help="Pillow in the loader workers (host) or exact kernels on the device that "
        "consumes the views (device); the same bytes. auto: `train` on CUDA times both "
        "and keeps the faster (--render-trial), anything else takes the host.",
    )(fn)


def fsspec_options(fn):
    """`--storage-options JSON` (the store's, and the dataset's unless
    `--data-storage-options JSON` gives the dataset its own): the command receives them as
    `store_options` and `data_options`. They apply only to URLs."""
    from deit_pipe.place import parse_storage_options

    @functools.wraps(fn)
    def command(*args, storage_options: str | None, data_storage_options: str | None, **kw):
        store = parse_storage_options(storage_options, "--storage-options")
        data = parse_storage_options(data_storage_options, "--data-storage-options")
        return fn(*args, store_options=store, data_options=store if data is None else data, **kw)

    command = click.option(
        "--data-storage-options",
        envvar="DEIT_PIPE_DATA_STORAGE_OPTIONS",
        default=None,
        help="fsspec options for a dataset behind a URL, when they differ from the store's "
        "(data on one cloud, the store on another) [env: DEIT_PIPE_DATA_STORAGE_OPTIONS; "
        "default: --storage-options].",
    )(command)
    return click.option(
        "--storage-options",
        envvar="DEIT_PIPE_STORAGE_OPTIONS",
        default=None,
        help="fsspec options for an object-store URL (the store's, and the dataset's unless "
        '--data-storage-options), as JSON, e.g. \'{"client_kwargs": {"endpoint_url": '
        '"http://host:9000"}}\' [env: DEIT_PIPE_STORAGE_OPTIONS; credentials also from '
        "AWS_*/GOOGLE_* variables].",
    )(command)


def data_cache_option(fn):
    """`--data-cache DIR` and `--data-cache-size SIZE`, given to the command as one
    `data_cache` (a `DataCache`, or None without `--data-cache`)."""

    @functools.wraps(fn)
    def command(*args, data_cache_size: str | None, **kwargs):
        if kwargs["data_cache"] is not None:
            from deit_pipe.data.sources.cache import DataCache, parse_size

            limit = parse_size(data_cache_size) if data_cache_size else None
            kwargs["data_cache"] = DataCache(kwargs["data_cache"], limit)
        elif data_cache_size:
            raise click.UsageError("--data-cache-size needs --data-cache DIR")
        return fn(*args, **kwargs)

    command = click.option(
        "--data-cache-size",
        default=None,
        metavar="SIZE",
        help="Cap of the data cache, e.g. 500G [default: 80% of its disk's free space].",
    )(command)
    return click.option(
        "--data-cache",
        envvar="DEIT_PIPE_DATA_CACHE",
        default=None,
        metavar="DIR",
        help="Keep local copies of a remote dataset's files (Parquet/tar shards, images) "
        "here: fetched once, checked against the source's ETag and size, read locally on "
        "every later epoch and run; least recently used evicted past the cap "
        "[env: DEIT_PIPE_DATA_CACHE; a local folder on each host].",
    )(command)


def teacher_config(name: str, checkpoint, pretrained: bool, random_init: bool):
    """TeacherConfig from the teacher flags shared by `precompute` and `train`."""
    from deit_pipe.teacher import TeacherConfig

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
from deit_pipe.cli import (  # noqa: E402, F401
    audit_cmds,
    data_cmds,
    export_cmds,
    store_cmds,
    train_cmds,
)
