"""The generated CLI fuzz test (issue 32): every command's numeric and path-like flags, one at a
time, fed the values a new user's typo or a hostile shell gives.

The cases come from walking `deit_pipe.cli.main`'s click tree, so a new command or flag is
fuzzed without editing this file. Each invocation must either succeed or exit non-zero with one
line of output and no traceback (CliRunner catches what escapes: an exception other than a
click/SystemExit exit is a bug), and no file that existed before the run may change.
Every value that a command accepts runs its real job, kept small by each command's base
arguments (BASE says why each is what it is); `DEIT_PIPE_FUZZ_LOG=FILE` logs every answer
with its time. Fuzzed too: `--data-cache` (a path), the fsspec options (JSON a backend
refuses, or no JSON) and `--data-cache-size`. The read-only directory
binds only a non-root user (root writes through its mode); as root it still stands for a
directory where a file, store or dataset is expected.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deit_pipe.cli import main
from deit_pipe.data import ViewConfig, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import precompute
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.student.train import TrainConfig, train
from deit_pipe.teacher import TeacherConfig

NUMERIC = ("0", "-1", "nan", "inf", "1e12")
# click refuses "1e12" for an int flag by itself, which tests only click: an int flag gets
# the integer 10^12 so the project's own bound is what answers.
INT_HUGE = str(10**12)
PATH_VALUES = ("", "user_file", "ro_dir")
# Text flags that name a file, directory, store or dataset (their type is plain text because
# they also take URLs and dataset specs).
PATH_NAMES = {
    "data",
    "store",
    "url",
    "out",
    "runs",
    "run",
    "checkpoint",
    "init_from",
    "teacher_checkpoint",
    "audit_dir",
    "config_file",
    "data_cache",
}
# Text flags of other shapes: fsspec options as JSON, and sizes.
JSON_NAMES = {"storage_options", "data_storage_options"}
JSON_VALUES = ('{"key": 5, "secret": [1]}', '{"nonsense_kwarg": 1}', "[1]", "{not json", "")
SIZE_NAMES = {"data_cache_size"}
SIZE_VALUES = ("0", "-1", "nan", "1e12", "12Q", "")
TINY_STUDENT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def walk(group: click.Group, path: tuple[str, ...] = ()):
    """(command path, command) for every leaf command below `group`."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))
        else:
            yield (*path, name), command


def kind(param: click.Parameter) -> str | None:
    """'int', 'float', 'path' or None (not fuzzed: flags, choices, free text)."""
    if isinstance(param, click.Option) and param.is_flag:
        return None
    ptype = param.type
    if isinstance(ptype, click.IntRange) or ptype is click.INT:
        return "int"
    if isinstance(ptype, click.FloatRange) or ptype is click.FLOAT:
        return "float"
    if isinstance(ptype, click.Path | click.File) or param.name in PATH_NAMES:
        return "path"
    if param.name in JSON_NAMES:
        return "json"
    if param.name in SIZE_NAMES:
        return "size"
    return None


def cases():
    for path, command in walk(main):
        for param in command.params:
            if (k := kind(param)) is not None:
                yield pytest.param(path, param.name, k, id=f"{'-'.join(path)}--{param.name}")


# Base arguments: each command's required arguments filled with the smallest valid values, and
# whatever keeps a call that the fuzzed value does not refuse from running a long job.
# {store}, {run}, {ckpt} are the module's tiny store, run and checkpoint; {new} a fresh path.
BASE: dict[str, dict[str, object]] = {
    # the agreement over 8 replayed training views, not the default 512
    "audit": {"store": "{store}", "runs": "{run}", "out": "{new}", "train_views": 8},
    # demo trains a teacher and two students for minutes: only its refusals are fuzzed (a
    # fresh --out would start the job), so it has no base and its --out values must refuse
    "demo": {"quick": True},
    # the embedded 8×8 digits: no download, scanned in well under a second
    "scan": {"data": "digits", "workers": 1},
    "views": {"data": "digits", "count": 2, "out": "{new}.png"},
    "export": {"run": "{run}", "out": "{new}"},
    "inspect": {"store": "{store}"},
    # --dry-run: the job is checked and priced, nothing is written; a given --throughput skips
    # measuring the teacher (seconds a call on 2 cores), a random-init RegNetY-200MF keeps it
    # cheap where --throughput itself is fuzzed
    "precompute": {
        "data": "digits",
        "url": "{new}.zarr",
        "dry_run": True,
        "teacher": "regnety_002",
        "random_init": True,
        "batch_size": 8,
        "epochs": 1,
        "throughput": 1000,
    },
    # the store against its own dataset, one sampled shard
    "verify": {"store": "{store}", "data": "digits", "sample": 1},
    # one step of a tiny ViT from the store (a fresh --out each time), loading in-process
    "train": {
        "out": "{new}",
        "store": "{store}",
        **TINY_STUDENT,
        "epochs": 1,  # the store holds one
        "batch_size": 128,  # a fuzzed --max-steps 10^12 runs the whole epoch: 12 steps
        "max_steps": 1,
        "loader_workers": 0,
    },
    "eval": {"checkpoint": "{ckpt}", "data": "digits"},
}


def sha(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny store (one epoch of digits), a one-step run on it, a user file and a read-only
    directory: what the fuzzed values point at, made once through the Python API."""
    root = tmp_path_factory.mktemp("fuzz")
    store = str(root / "store.zarr")
    recipe = Recipe(view=ViewConfig.for_source(open_source("digits")))
    teacher = TeacherConfig("regnety_002", random_init=True)
    job = Job(url=store, data="digits", recipe=recipe, teacher=teacher, batch_size=256)
    precompute(job, StoreRequest(epochs=1, k=10, value_dtype="float32", shard_views=512), workers=0)
    run = root / "run"
    train(
        TrainConfig(
            out=str(run),
            store=store,
            model="deit_tiny_distilled_patch16_224",
            model_overrides=TINY_STUDENT,
            epochs=1,
            batch_size=64,
            max_steps=1,
        )
    )
    user = root / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my notes\n")
    ro = user / "readonly"
    ro.mkdir()
    (ro / "keep.txt").write_text("keep\n")
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    ckpt = next(run.glob("checkpoint*.pt"), None) or next(run.rglob("*.pt"))
    fresh = root / "new"
    fresh.mkdir()
    world = {
        "root": root,
        "store": store,
        "run": str(run),
        "ckpt": str(ckpt),
        "user_file": str(user / "notes.txt"),
        "ro_dir": str(ro),
        "fresh": fresh,
        "counter": itertools.count(),
    }
    world["sums"] = sha(root)
    yield world
    ro.chmod(stat.S_IRWXU)


def fill(value: object, world: dict) -> str:
    text = str(value)
    if "{new}" in text:
        text = text.replace("{new}", str(world["fresh"] / f"n{next(world['counter'])}"))
    for key in ("store", "run", "ckpt"):
        text = text.replace("{" + key + "}", world[key])
    return text


def argv(command: click.Command, values: dict[str, object], world: dict) -> list[str]:
    args: list[str] = []
    for param in command.params:
        if param.name not in values:
            continue
        value = values[param.name]
        if isinstance(param, click.Argument):
            args.append(fill(value, world))
        elif isinstance(param, click.Option) and param.is_flag:
            if value:
                args.append(param.opts[0])
        else:
            args += [param.opts[0], fill(value, world)]
    return args


def fuzz_values(kind_: str, world: dict) -> list[str]:
    if kind_ == "int":
        return [v if v != "1e12" else INT_HUGE for v in NUMERIC]
    if kind_ == "float":
        return list(NUMERIC)
    if kind_ == "json":
        return list(JSON_VALUES)
    if kind_ == "size":
        return list(SIZE_VALUES)
    return ["", world["user_file"], world["ro_dir"]]


@pytest.mark.parametrize("path,name,kind_", list(cases()))
def test_fuzz(world, path, name, kind_, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an empty path resolves here, never into the repository
    command = main
    for part in path:
        command = command.commands[part]
    base = BASE[path[-1]]
    for value in fuzz_values(kind_, world):
        if path[-1] == "demo" and value == "":
            continue  # demo --out '' is the (empty) current directory: it would run for minutes
        values = {**base, name: value}
        if name == "data_cache_size":  # the size alone is refused: it needs a cache
            values["data_cache"] = "{new}"
        args = [*path, *argv(command, values, world)]
        start = time.monotonic()
        result = CliRunner().invoke(main, args, catch_exceptions=True)
        took = time.monotonic() - start
        if log := os.environ.get("DEIT_PIPE_FUZZ_LOG"):  # a review of every answer
            with open(log, "a") as f:
                f.write(
                    f"{took:6.2f} {result.exit_code} {name}={value!r} {path}: "
                    f"{result.output.strip()[:200]!r}\n"
                )
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), (args, result.output, exc)
        if result.exit_code != 0:
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert len(lines) == 1 and "Traceback" not in result.output, (args, result.output)
        elif path[-1] == "demo":
            pytest.fail(f"demo {args} was accepted and ran")
    now = sha(world["root"])
    changed = [name for name, digest in world["sums"].items() if now.get(name) != digest]
    assert not changed, f"pre-existing files changed or removed: {changed}"
