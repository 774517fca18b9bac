"""The defaults of a training run that a flag can change, in a module that imports nothing.

`TrainConfig` takes its field defaults from `TRAIN`, and `deit-pipe train` shows and passes
the same values (the CLI answers `--help` without importing torch, so it cannot read them
off the dataclass). Defaults that depend on the run (the schedule's, by preset; α and τ, by
distillation mode) are resolved by `TrainConfig` itself and stay None here.
"""

TRAIN = {
    "distill": "hard",
    "kl_reduction": "batchmean",
    "teacher_smoothing": 0.0,
    "batch_size": 1024,  # global
    "ema_decay": 0.99996,
    "train_seed": 0,
    "loader_workers": 0,
    "render": "auto",
    "ckpt_every": 0,
    "eval_every": 1,
    "log_every": 1,
    "follow_timeout": 1800.0,
    "device": "auto",
    "eval_batch_size": 256,
}


def shown(name: str) -> dict:
    """click keyword arguments for `name`'s option: its default, shown in `--help`."""
    return {"default": TRAIN[name], "show_default": True}
