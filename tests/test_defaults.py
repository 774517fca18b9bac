"""Defaults in one place: `deit_pipe.defaults` holds a training run's plain defaults,
`TrainConfig` takes them and `deit-pipe train` shows and passes the same values."""

from dataclasses import MISSING, fields

from deit_pipe.cli import main
from deit_pipe.defaults import TRAIN
from deit_pipe.student.config import TrainConfig


def test_train_options_default_to_what_trainconfig_does():
    """Each `train` option named for a TrainConfig field defaults to the field's default
    (or to None, which TrainConfig resolves): none repeats a value of its own."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    checked = []
    for param in main.commands["train"].params:
        name = {"compile_model": "compile"}.get(param.name, param.name)
        if name in defaults and param.default is not None and not getattr(param, "is_flag", 0):
            assert param.default == defaults[name], (param.name, param.default, defaults[name])
            checked.append(name)
    assert set(TRAIN) - {"eval_batch_size"} <= set(checked)


def test_trainconfig_takes_its_plain_defaults_from_the_one_table():
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert {k: defaults[k] for k in TRAIN} == TRAIN
    assert set(TRAIN) <= set(defaults)
