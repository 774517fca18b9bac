"""What a training run is asked to do: `TrainConfig`, its choices and how unset fields resolve.

Every default lives here (the plain ones in `deit_pipe.defaults`, which the CLI reads too):
the teacher weight α and temperature τ follow the
distillation mode (the paper's λ = 0.1, τ = 3 for soft; λ = 1/2 for hard), and the schedule
(lr, warmup, weight decay, drop-path, smoothing, epochs) follows the recipe preset — the
store's own unless `preset` names another (`data.plan.recipe.PRESETS`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from deit_pipe.choices import DEVICES, DISTILL, KL_REDUCTIONS, RENDERS
from deit_pipe.data.plan.recipe import PRESETS, Schedule, get_preset, schedule_of
from deit_pipe.defaults import TRAIN
from deit_pipe.errors import ConfigError, DeitPipeError, check
from deit_pipe.limits import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_INPUT_SIZE,
    MAX_WORKERS,
    GiB,
    check_at_most,
    memory_bytes,
)
from deit_pipe.student.losses import alpha_tau
from deit_pipe.teacher import TeacherConfig

SCHEDULE_FIELDS = tuple(f.name for f in fields(Schedule))
MAX_RENDER_TRIAL = 10_000  # timed steps per renderer: a trial is a small share of a run


@dataclass
class TrainConfig:
    out: str
    store: str | None = None  # offline distillation: plan + targets from the store
    store_options: dict | None = None  # fsspec options for the store (never written out)
    data_options: dict | None = None  # fsspec options for the dataset (never written out)
    data_cache: str | None = None  # local copies of a remote dataset's files (DataCache)
    data_cache_size: int | None = None  # its cap in bytes [default: DataCache's]
    teacher_name: str | None = None  # the store's teacher(s): A, or an ensemble A,B / A=0.7,B=0.3
    data: str | None = None  # dataset (required without a store)
    teacher: TeacherConfig | None = None  # online distillation (comparison, tests)
    recipe: dict | None = None  # Recipe.to_dict(), when not read from a store
    preset: str | None = None  # schedule preset [default: the store's or recipe's]
    init_from: str | None = None  # run, checkpoint, model file or timm tag (see init_from)
    model: str | None = None  # timm name [default: the --init-from run's, else DeiT-Ti⚗]
    model_overrides: dict = field(default_factory=dict)  # img_size, patch_size, depth, …
    distill: str = TRAIN["distill"]
    alpha: float | None = None  # teacher weight [default: by mode, PAPER_ALPHA_TAU]
    tau: float | None = None  # temperature [default: by mode]
    kl_reduction: str = TRAIN["kl_reduction"]
    teacher_smoothing: float = TRAIN["teacher_smoothing"]
    # The schedule; None = the preset's (Schedule).
    epochs: int | None = None
    lr: float | None = None  # per 512 images of global batch
    min_lr: float | None = None
    warmup_lr: float | None = None
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    drop_path: float | None = None
    smoothing: float | None = None
    batch_size: int = TRAIN["batch_size"]  # global
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = TRAIN["ema_decay"]
    # the model's init and drop-path (the plan's seed is the recipe's)
    train_seed: int = TRAIN["train_seed"]
    loader_workers: int = TRAIN["loader_workers"]
    # who renders the training views (RENDERS); the bytes are the same
    render: str = TRAIN["render"]
    render_trial: int | None = None  # auto: steps timed per renderer (None: sized on CUDA; 0: none)
    ckpt_every: int = TRAIN["ckpt_every"]  # steps; 0 = at epoch end only
    # epochs between evaluations (the last epoch is always evaluated)
    eval_every: int = TRAIN["eval_every"]
    # steps between loss read-backs (each one waits for the device)
    log_every: int = TRAIN["log_every"]
    tensorboard: bool = False  # mirror metrics.jsonl's scalars into RUN/tb (event files)
    cycle_epochs: bool = False
    follow: bool = False  # train on a store still being filled: wait for each epoch's shards
    follow_timeout: float = TRAIN["follow_timeout"]  # seconds without a new shard before giving up
    device: str = TRAIN["device"]
    compile: bool = False  # torch.compile the student
    eval_batch_size: int = TRAIN["eval_batch_size"]
    max_steps: int | None = None  # stop early (tests, smoke runs)
    resume: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):  # first: a config.json's "fast" is no number to compare
            problem = type_problem(f.name, getattr(self, f.name))
            check(problem is None, f"{_flag(f.name)} {problem}")
        for name, value, choices in (
            ("distill", self.distill, DISTILL),
            ("kl_reduction", self.kl_reduction, KL_REDUCTIONS),
            ("device", self.device, DEVICES),
            ("render", self.render, RENDERS),
        ):
            if value not in choices:
                raise DeitPipeError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.preset is not None:
            get_preset(self.preset)
        self.alpha, self.tau = alpha_tau(self.distill, self.alpha, self.tau)
        self._check_values()

    def _check_values(self) -> None:
        """Every number in range, before anything is built or written (one line each): a
        non-finite or absurd hyper-parameter would only make a run diverge, after the run
        directory and a checkpoint exist."""
        check(bool(str(self.out).strip()), "--out is empty: name a directory for the run")
        at_least = {
            "epochs": 1,
            "batch_size": 2,
            "eval_every": 1,
            "log_every": 1,
            "ckpt_every": 0,
            "loader_workers": 0,
            "eval_batch_size": 1,
            "max_steps": 1,
            "render_trial": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            check(value is None or value >= low, f"{_flag(name)} must be ≥ {low}, got {value}")
        check(
            self.render_trial is None or self.render_trial <= MAX_RENDER_TRIAL,
            f"--render-trial must be ≤ {MAX_RENDER_TRIAL} steps, got {self.render_trial}",
        )
        check(
            self.render_trial is None or self.render == "auto",
            f"--render-trial times both renderers under --render auto; with --render "
            f"{self.render} it would do nothing: drop it, or use --render auto",
        )
        check(self.batch_size % 2 == 0, f"--batch-size must be even (pairs), got {self.batch_size}")
        check(
            self.follow_timeout is None or self.follow_timeout > 0,  # inf: wait for ever
            f"--follow-timeout must be > 0, got {self.follow_timeout}",
        )
        check(
            self.epochs is None or self.epochs <= MAX_EPOCHS,
            f"--epochs must be ≤ {MAX_EPOCHS}, got {self.epochs}",
        )
        # Numbers that size an allocation: bounded before the model or a batch is made.
        check_at_most(self.batch_size, MAX_BATCH, "--batch-size")
        check_at_most(self.eval_batch_size, MAX_BATCH, _flag("eval_batch_size"))
        check_at_most(self.loader_workers, MAX_WORKERS, "--loader-workers")
        size = self.model_overrides.get("img_size")
        check(
            size is None or (isinstance(size, int) and 8 <= size <= MAX_INPUT_SIZE),
            f"--img-size must be in [8, {MAX_INPUT_SIZE}], got {size}",
        )
        check(
            self.train_seed >= 0, f"--train-seed must be ≥ 0, got {self.train_seed}"
        )  # numpy's rule
        self._check_arch()
        for name, (low, low_allowed, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not _in_range(value, low, low_allowed, high):
                raise ConfigError(
                    f"{_flag(name)} must be {_range_text(low, low_allowed, high)}, got {value}"
                )

    def _check_arch(self) -> None:
        """The student's sizes before timm builds it: 0 divides (patch, heads), a negative
        fails deep inside timm, and a huge one allocates its weights first."""
        arch = self.model_overrides
        for name, high in ARCH_HIGH.items():
            value = arch.get(name)
            check(
                value is None or (isinstance(value, int) and 1 <= value <= high),
                f"{_flag(name)} must be in [1, {high:,}], got {value}",
            )
        # The blocks' weights alone (12·depth·dim² float32), with DeiT-Ti's depth and width
        # for an unset one: a lower bound, enough to refuse what could never be allocated.
        depth, dim = arch.get("depth", 12), arch.get("embed_dim", 192)
        need = 12 * depth * dim * dim * 4
        have = memory_bytes()
        check(
            need <= have // 2,
            f"--depth {depth} × --embed-dim {dim} needs {need / GiB:,.1f} GiB for the "
            f"student's weights alone, more than half of this machine's {have / GiB:,.1f} GiB",
        )

    def resolved(self, preset: str) -> TrainConfig:
        """A copy with every unset schedule field taken from `self.preset or preset`."""
        name = self.preset or preset
        schedule = schedule_of(name)
        unset = {f: getattr(schedule, f) for f in SCHEDULE_FIELDS if getattr(self, f) is None}
        return replace(self, preset=name if name in PRESETS else "deit", **unset)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("store_options"), d.pop("data_options")  # may hold credentials
        d["teacher"] = self.teacher.to_dict() if self.teacher else None
        return d


# The student's architecture flags (model_overrides other than img_size): patch and heads
# are bounded by what they divide, depth and width far above any published ViT (22 B: 48, 6144).
ARCH_HIGH = {
    "patch_size": MAX_INPUT_SIZE,
    "depth": 1024,
    "embed_dim": 65_536,
    "num_heads": 65_536,
}
MAX_LR = 10.0  # per 512 images: 20,000× DeiT's 5e-4; AdamW at such rates only diverges
# Field: (lowest, whether the lowest itself is allowed, highest); every one must be finite.
RANGES: dict[str, tuple[float, bool, float]] = {
    "lr": (0.0, False, MAX_LR),
    "min_lr": (0.0, True, MAX_LR),
    "warmup_lr": (0.0, True, MAX_LR),
    "warmup_epochs": (0.0, True, MAX_EPOCHS),
    "weight_decay": (0.0, True, 10.0),  # decoupled: lr·wd shrinks the weights each step
    "tau": (0.0, False, 100.0),  # beyond, soft targets are uniform to float precision
    "clip_grad": (0.0, False, math.inf),
    "alpha": (0.0, True, 1.0),
    "drop_path": (0.0, True, 1.0),
    "smoothing": (0.0, True, 1.0),
    "teacher_smoothing": (0.0, True, 1.0),
    "ema_decay": (0.0, True, 1.0),
}


def _in_range(value: float, low: float, low_allowed: bool, high: float) -> bool:
    return (
        math.isfinite(value) and (value > low or (low_allowed and value == low)) and (value <= high)
    )


def _range_text(low: float, low_allowed: bool, high: float) -> str:
    if math.isinf(high):
        return f"finite and > {low:g}"
    return f"in [{low:g}, {high:g}]" if low_allowed else f"> {low:g} and ≤ {high:g}"


# A field's annotation → the Python types its value may have (`bool` is never a number).
_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "dict": (dict,),
}
_NOUNS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def type_problem(name: str, value: object) -> str | None:
    """What is wrong with the type of `value` for field `name` ("must be a number, got
    'fast'"), or None. Values from a `config.json` come with no type checking of their own."""
    kinds = [k.strip() for k in {f.name: f.type for f in fields(TrainConfig)}[name].split("|")]
    if value is None:
        return None if "None" in kinds else "must be set"
    for kind in kinds:
        allowed = _KINDS.get(kind)
        if allowed is None and kind != "None":
            return None  # a class (TeacherConfig): checked where it is built
        is_number = kind in ("int", "float")
        if allowed and isinstance(value, allowed) and not (is_number and isinstance(value, bool)):
            return None
    wanted = next(k for k in kinds if k != "None")
    return f"must be {_NOUNS.get(wanted, 'a ' + wanted)}, got {value!r}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Saved in RUN/config.json but not repeated by `--config`: where this run goes and how it
# reaches its store (credentials are never saved).
NOT_REPEATED = ("out", "resume", "store_options", "data_options")
# What `train` records in RUN/config.json beside TrainConfig's fields (`trainer.run_info`).
RUN_RECORD = (
    "recipe",
    "num_classes",
    "classes",
    "dataset",
    "dataset_fingerprint",
    "dataset_content",
    "world_size",
    "steps_per_epoch",
    "distilled_model",
    "lr_scaled",
    "store_identity",
    "init_from",
)


# config.json keys renamed since (old → new): a run saved before still loads and resumes.
OLD_KEYS = {"seed": "train_seed"}


def upgrade_config(saved: dict) -> dict:
    """A saved config.json's settings under today's key names."""
    return {OLD_KEYS.get(k, k): v for k, v in saved.items()}


def repeat_config(path: str, current: TrainConfig, given: set[str]) -> TrainConfig:
    """A run's own settings from its `config.json` (timm's `--config` convention), with the
    fields in `given` — the flags given beside it — taken from `current` instead."""
    import json
    from pathlib import Path

    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DeitPipeError(f"--config {path}: cannot read a run's config.json ({exc})") from None
    if not isinstance(saved, dict) or "distill" not in saved:
        raise DeitPipeError(f"--config {path} is not a deit-pipe run's config.json")
    saved = upgrade_config(saved)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(saved) - known - set(RUN_RECORD))
    if unknown:  # a typo ("learning_rate") would otherwise be ignored without a word
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConfigError(
            f"--config {path}: unknown key {unknown[0]!r}{more}; a run's config.json holds "
            "TrainConfig's fields and what train records beside them: remove or rename it"
        )
    for key in sorted(known & set(saved)):
        problem = type_problem(key, saved[key])
        check(problem is None, f"--config {path}: key {key!r} {problem}")
    names = known - set(NOT_REPEATED)
    base = {k: saved[k] for k in names if k in saved}
    if isinstance(base.get("teacher"), dict):
        t = base["teacher"]
        try:
            kwargs = tuple(t["model_kwargs"].items())
            base["teacher"] = TeacherConfig(**{**t, "model_kwargs": kwargs})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"--config {path}: key 'teacher' is malformed ({exc})") from None
    if base.get("store"):
        base["recipe"] = None  # the store's recipe rules a store run
    for name in given & names:
        base[name] = getattr(current, name)
    if "model_overrides" in given:
        base["model_overrides"] = {**saved.get("model_overrides", {}), **current.model_overrides}
    return TrainConfig(**base, **{k: getattr(current, k) for k in NOT_REPEATED})
