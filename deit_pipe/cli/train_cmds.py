"""`train` and `eval`: students from a store (or online, or plain supervised)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from deit_pipe.cli import (
    RECIPE_FLAGS,
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


def _train_options(fn):
    """`train`'s own options; every unset one is resolved by `TrainConfig`."""
    from deit_pipe.choices import DEVICES, DISTILL, KL_REDUCTIONS
    from deit_pipe.defaults import shown
    from deit_pipe.limits import MAX_WORKERS

    preset = "[default: the recipe preset's]"
    options = [
        click.option(
            "--out", required=True, type=click.Path(), help="Run directory (new or empty)."
        ),
        click.option("--store", default=None, help="Target store (offline distillation)."),
        click.option(
            "--teacher-name",
            default=None,
            help="The store's teacher to distil from, or an ensemble: A,B or A=0.7,B=0.3 "
            "[default: its first].",
        ),
        click.option("--data", default=None, help="Dataset spec (without --store)."),
        click.option("--teacher-model", default=None, help="Run this timm teacher online instead."),
        click.option("--teacher-checkpoint", type=click.Path(path_type=Path), default=None),
        click.option("--teacher-pretrained", is_flag=True),
        click.option("--teacher-random-init", is_flag=True),
        click.option(
            "--init-from",
            default=None,
            help="Start from a run, checkpoint, .pth/.safetensors model file or timm:TAG "
            "(DeiT --finetune: position embeddings resampled bicubically).",
        ),
        click.option(
            "--model", default=None, help="timm model [default: --init-from's, else DeiT-Ti⚗]."
        ),
        click.option("--img-size", type=int, default=None),
        click.option("--patch-size", type=int, default=None),
        click.option("--depth", type=int, default=None),
        click.option("--embed-dim", type=int, default=None),
        click.option("--num-heads", type=int, default=None),
        click.option("--drop-path", type=float, default=None, help=f"Drop-path rate {preset}"),
        click.option("--distill", type=click.Choice(DISTILL), **shown("distill")),
        click.option(
            "--alpha", type=float, default=None, help="Teacher weight [0.5 hard, 0.1 soft]."
        ),
        click.option("--tau", type=float, default=None, help="Temperature [1 hard, 3 soft]."),
        click.option(
            "--kl-reduction",
            type=click.Choice(KL_REDUCTIONS),
            **shown("kl_reduction"),
        ),
        click.option("--teacher-smoothing", type=float, **shown("teacher_smoothing")),
        click.option("--smoothing", type=float, default=None, help=f"Label smoothing {preset}"),
        click.option("--epochs", type=int, default=None, help=f"Epochs {preset}"),
        click.option("--batch-size", type=int, **shown("batch_size"), help="Global batch."),
        click.option("--lr", type=float, default=None, help=f"lr per 512 images {preset}"),
        click.option("--min-lr", type=float, default=None, help=f"Final lr {preset}"),
        click.option("--warmup-lr", type=float, default=None, help=f"Initial lr {preset}"),
        click.option("--warmup-epochs", type=float, default=None, help=f"Warmup {preset}"),
        click.option("--weight-decay", type=float, default=None, help=f"AdamW decay {preset}"),
        click.option("--clip-grad", type=float, default=None),
        click.option("--ema", is_flag=True, help="Keep an EMA of the weights (ModelEmaV3)."),
        click.option("--ema-decay", type=float, **shown("ema_decay")),
        click.option(
            "--train-seed", type=int, **shown("train_seed"), help="Init and drop-path seed."
        ),
        click.option("--loader-workers", type=int, **shown("loader_workers")),
        render_option,
        click.option(
            "--render-trial",
            type=int,
            default=None,
            help="With --render auto: steps timed with each renderer before the run keeps "
            "the faster [default: sized from --loader-workers, on CUDA, for long runs]; "
            "0: no trial (the host).",
        ),
        click.option(
            "--ckpt-every", type=int, **shown("ckpt_every"), help="Checkpoint every N steps."
        ),
        click.option("--eval-every", type=int, **shown("eval_every"), help="Epochs."),
        click.option(
            "--log-every",
            type=int,
            **shown("log_every"),
            help="Steps between loss read-backs (each waits for the device).",
        ),
        click.option(
            "--tensorboard",
            is_flag=True,
            help="Also write metrics.jsonl's scalars as TensorBoard events under OUT/tb "
            "(needs the tensorboard extra).",
        ),
        click.option("--compile", "compile_model", is_flag=True, help="torch.compile the student."),
        click.option(
            "--cycle-epochs", is_flag=True, help="Reuse stored epoch e mod E past the end."
        ),
        click.option(
            "--follow",
            is_flag=True,
            help="Train while the precompute fills the store: wait for each epoch's shards.",
        ),
        click.option(
            "--follow-timeout",
            type=float,
            **shown("follow_timeout"),
            help="Seconds without a newly completed shard before --follow gives up.",
        ),
        click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt exactly."),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            default=None,
            help="Repeat a run: its RUN/config.json; flags given beside it override it.",
        ),
        click.option("--device", type=click.Choice(DEVICES), **shown("device")),
        click.option("--max-steps", type=int, default=None, help="Stop after this many steps."),
        click.option(
            "--nproc-per-node",
            # bounded: torchrun would start every one of them before any rank could refuse
            type=click.IntRange(min=1, max=MAX_WORKERS),
            default=None,
            help="Relaunch under torchrun with N ranks.",
        ),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


@main.command()
@_train_options
@fsspec_options
@data_cache_option
@recipe_options
def train(**opts) -> None:
    """Train a DeiT student from stored targets (or online / plain supervised)."""
    nproc = opts.pop("nproc_per_node")
    if nproc:
        _relaunch_torchrun(nproc)
    from deit_pipe.data import open_source
    from deit_pipe.student.models import ARCH_OVERRIDES
    from deit_pipe.student.train import TrainConfig
    from deit_pipe.student.train import train as run_train

    _refuse_teacher_flags_a_store_makes_moot(opts)
    teacher = opts.pop("teacher_model")
    teacher_args = [opts.pop(k) for k in ("teacher_checkpoint", "teacher_pretrained")]
    teacher_args.append(opts.pop("teacher_random_init"))
    recipe, config_file = None, opts.pop("config_file")
    cache = opts.pop("data_cache")
    if cache is not None:
        opts.update(data_cache=str(cache.directory), data_cache_size=cache.limit)
    if opts["store"] is None and opts["data"] is not None:
        source = open_source(opts["data"], data_options=opts["data_options"], data_cache=cache)
        recipe = build_recipe(source, dict(opts)).to_dict()
    elif opts["store"] is None and config_file is None:
        raise click.UsageError("give --store STORE, --data SPEC, or --config RUN/config.json")
    preset = opts.pop("preset")
    _refuse_recipe_flags_with_a_store(opts)
    cfg = TrainConfig(
        out=str(opts.pop("out")),
        recipe=recipe,
        preset=preset,
        teacher=teacher_config(teacher, *teacher_args) if teacher else None,
        model_overrides={k: v for k in ARCH_OVERRIDES if (v := opts.pop(k)) is not None},
        compile=opts.pop("compile_model"),
        **opts,
    )
    if config_file:
        from deit_pipe.student.config import repeat_config

        cfg = repeat_config(config_file, cfg, _given_fields())
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    with progress_bar("steps") as bar:
        show = StepProgress(bar).show
        result = run_train(cfg, progress=show if rank == 0 else None)
    if rank == 0:
        console.print(f"run {cfg.out}: final val " + json.dumps(result), highlight=False)


_ONLINE_TEACHER = (
    "teacher_model",
    "teacher_checkpoint",
    "teacher_pretrained",
    "teacher_random_init",
)


def _refuse_teacher_flags_a_store_makes_moot(opts: dict) -> None:
    """With --store the store's teacher is distilled (`--teacher-name` picks it): a teacher to
    run online would be silently ignored, so it is refused; so are its weights flags without
    --teacher-model, and --teacher-name without a store to pick from."""
    source = click.get_current_context().get_parameter_source
    given = [f for f in _ONLINE_TEACHER if source(f) == click.core.ParameterSource.COMMANDLINE]
    if opts["store"] is not None and given:
        raise click.UsageError(
            f"--{given[0].replace('_', '-')} runs a teacher online, which a run from --store "
            "does not: it distils the store's teacher (pick one with --teacher-name); drop it"
        )
    if given and "teacher_model" not in given:
        raise click.UsageError(
            f"--{given[0].replace('_', '-')} sets the weights of --teacher-model, which is not "
            "given"
        )
    named = source("teacher_name") == click.core.ParameterSource.COMMANDLINE
    if named and opts["store"] is None and opts["config_file"] is None:
        raise click.UsageError(
            "--teacher-name picks a teacher of --store, which is not given (an online teacher "
            "is --teacher-model MODEL)"
        )


def _refuse_recipe_flags_with_a_store(opts: dict) -> None:
    """Consume the recipe flags; with --store, one given on the command line is refused (the
    store's recipe rules the views, so it would be silently ignored)."""
    source = click.get_current_context().get_parameter_source
    for flag in (*RECIPE_FLAGS, "scale_min", "plan_seed", "order"):
        value = opts.pop(flag)
        given = value is not None and source(flag) == click.core.ParameterSource.COMMANDLINE
        if opts["store"] is not None and given:
            raise click.UsageError(
                f"--{flag.replace('_', '-')} sets the views' recipe, which a run from --store "
                "takes from the store: drop it, or precompute a store with it"
            )


class StepProgress:
    """The training progress bar: steps, loss, img/s, ETA; evaluations and waits printed."""

    def __init__(self, bar):
        self.bar, self.task = bar, None

    def show(self, record: dict) -> None:
        if self.task is None:
            self.task = self.bar.add_task("train", total=record["total_steps"], done="", rate="")
        if "waiting" in record:
            w = record["waiting"]
            done = f"waiting for the teacher: epoch {w['epoch']}, {w['done']}/{w['total']} shards"
            self.bar.update(self.task, done=done + " done")
        elif "render_trial" in record:
            t = record["render_trial"]
            device = (
                "out of memory"
                if t.get("device_out_of_memory")
                else f"{t['device_img_s']:,.0f} img/s"
            )
            self.bar.console.print(
                f"render trial ({t['steps']} steps each): host {t['host_img_s']:,.0f} img/s, "
                f"device {device}: the {t['chosen']} renders from here",
                highlight=False,
            )
        elif "eval" in record:
            tops = " ".join(f"{h} {v['top1']:.3f}" for h, v in sorted(record["eval"].items()))
            self.bar.console.print(f"epoch {record['epoch']}: val top-1 {tops}", highlight=False)
        else:
            self.bar.update(
                self.task,
                completed=record["step"],
                done=f"loss {record['loss']:.4f}",
                rate=f"{record['img_s']:,.0f} img/s",
            )


# CLI parameter → the TrainConfig field it sets, where the names differ.
_FIELD_OF = {
    "compile_model": "compile",
    "teacher_model": "teacher",
    **{k: "model_overrides" for k in ("img_size", "patch_size", "depth", "embed_dim")},
    "num_heads": "model_overrides",
    **{k: "teacher" for k in ("teacher_checkpoint", "teacher_pretrained", "teacher_random_init")},
    **{k: "recipe" for k in (*RECIPE_FLAGS, "scale_min", "plan_seed", "order")},
}


def _given_fields() -> set[str]:
    """TrainConfig fields set by flags given on this command line (or in the environment)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {_FIELD_OF.get(p, p) for p in ctx.params if ctx.get_parameter_source(p) in given}


def _relaunch_torchrun(nproc: int) -> None:
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:  # drop --nproc-per-node N and --nproc-per-node=N
        if skip or arg.startswith("--nproc-per-node="):
            skip = False
            continue
        skip = arg == "--nproc-per-node"
        if not skip:
            args.append(arg)
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
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="A run directory or its checkpoint.pt (RUN/checkpoint.pt).",
)
@click.option("--data", default=None, help="Dataset spec [default: the run's].")
@click.option("--ema", is_flag=True, help="Evaluate the EMA weights.")
@click.option(
    "--input-size",
    type=int,
    default=None,
    help="Evaluate at this size [default: the run's]; a ViT's position embeddings are resampled.",
)
@click.option("--json", "as_json", is_flag=True)
@render_option
@fsspec_options
@data_cache_option
def eval_cmd(
    checkpoint: Path,
    data: str | None,
    ema: bool,
    input_size: int | None,
    as_json: bool,
    render: str,
    store_options: dict | None,
    data_options: dict | None,
    data_cache,
) -> None:
    """Top-1/top-5 of every head of a checkpoint on clean val views."""
    from deit_pipe.student.runs import evaluate_checkpoint

    result = evaluate_checkpoint(
        checkpoint,
        data,
        ema=ema,
        input_size=input_size,
        store_options=store_options,
        data_options=data_options,
        data_cache=data_cache,
        render=render,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table("head", "top-1", "top-5")
    for head, v in sorted(result["heads"].items()):
        table.add_row(head, f"{v['top1']:.4f}", f"{v['top5']:.4f}")
    console.print(table)
