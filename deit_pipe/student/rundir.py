"""A run directory: where a run may start, who may write it, and what `--resume` may change.

A run starts in a new or empty directory, or resumes one that holds a run. Rank 0 holds the
directory's writer lock (`storage.lock`) for the whole run, so a second `train` on the same
`--out` is refused naming the first instead of interleaving `metrics.jsonl`. A resumed run
must ask for what the checkpoint was trained with: a resume that changed the batch size, lr
or distillation mode would silently be another experiment.
"""

from __future__ import annotations

import json
from pathlib import Path

from deit_pipe.errors import ConfigError, LockedError, OutputPathError
from deit_pipe.outputs import check_output_dir, entries, write_atomic
from deit_pipe.storage.lock import describe, local_holder

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "checkpoint.pt.tmp", "tb")
# Settings a resume may change: how the run is executed, watched or stopped, not what it learns.
RESUMABLE = {
    "out",
    "resume",
    "max_steps",
    "loader_workers",
    "render",  # Pillow or the kernels: the same bytes
    "render_trial",
    "data_cache",  # where local copies of the data are kept, not what they hold
    "data_cache_size",
    "log_every",
    "tensorboard",
    "ckpt_every",
    "eval_every",
    "eval_batch_size",
    "follow",
    "follow_timeout",
    "device",
    "compile",
    "world_size",  # the slots of a step never depend on it
    "store_identity",
    "init_from",  # provenance of step 0; the checkpoint holds the weights since
}


def check_run_dir(out: str, resume: bool) -> Path:
    """The run directory, refusing a folder of someone else's or a run that is not asked for."""
    path = check_output_dir(out, RUN_FILES, "run")
    if not path.is_dir():
        if resume:
            raise ConfigError(f"--resume: {path} does not exist, so there is no run to resume")
        return path
    held = entries(path)
    holder = local_holder(str(path))
    if holder is not None:  # a run still training there: not one that stopped
        raise LockedError(
            f"{path}: this run directory is in use by {describe(holder)}, training there now; "
            "wait for it to finish, or choose another --out",
            holder,
        )
    if resume and "config.json" not in held:
        raise ConfigError(f"--resume: {path} holds no run (no config.json)")
    if not resume and "checkpoint.pt" in held:
        raise OutputPathError(
            f"{path} already holds a run; pass --resume to continue it or choose another --out"
        )
    if not resume and held:
        raise OutputPathError(
            f"{path} holds a run that stopped before its first checkpoint; pass --resume to "
            "start it over, or choose another --out"
        )
    return path


def resume_differences(saved: dict, now: dict) -> list[str]:
    """`name saved → now` for every learning setting a resumed run changed."""
    keys = sorted((set(saved) | set(now)) - RESUMABLE)
    return [f"{k} {saved.get(k)!r} → {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def refuse_changed_resume(path: Path, saved: dict, now: dict) -> None:
    # JSON round trip: the checkpoint's config went through it (tuples became lists).
    from deit_pipe.student.config import upgrade_config

    differ = resume_differences(upgrade_config(saved), json.loads(json.dumps(now)))
    if differ:
        shown = "; ".join(differ[:4]) + ("; …" if len(differ) > 4 else "")
        raise ConfigError(
            f"--resume: {path} was trained with other settings ({shown}); resume with the "
            "run's own settings, or start a new --out"
        )


def truncate_metrics(path: Path, step: int) -> None:
    """Drop `metrics.jsonl` lines past `step` (the resume point), atomically: a run killed
    after its last checkpoint logged steps it will now run again."""
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        return
    kept = []
    for line in metrics.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    write_atomic(metrics, "".join(f"{line}\n" for line in kept).encode())
