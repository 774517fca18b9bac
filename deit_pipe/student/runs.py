"""A finished (or running) training run: its config, its model with weights, its evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from deit_pipe.data import Source, open_source
from deit_pipe.data.recipe import Recipe
from deit_pipe.errors import DeitPipeError
from deit_pipe.student.checkpoint import load_checkpoint
from deit_pipe.student.evaluate import evaluate
from deit_pipe.student.models import create_student, head_names


@dataclass
class Run:
    path: Path  # the run directory
    checkpoint: dict

    @property
    def config(self) -> dict:
        return self.checkpoint["config"]

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.config["recipe"])

    @property
    def label(self) -> str:
        """e.g. `deit_tiny_distilled hard` (the paper's ⚗ marks a distillation token)."""
        model = self.config["model"].replace("_patch16_224", "")
        name = model.replace("_distilled", "⚗") if self.config["distilled_model"] else model
        return f"{name} {self.config['distill']}"

    def model(self, ema: bool = False) -> torch.nn.Module:
        cfg = self.config
        model = create_student(
            cfg["model"], cfg["num_classes"], drop_path=0.0, **cfg["model_overrides"]
        )
        state = self.checkpoint["ema"] if ema else self.checkpoint["model"]
        if state is None:
            raise DeitPipeError(f"{self.path} was trained without --ema; drop --ema")
        model.load_state_dict(state)
        return model.eval()

    def heads(self) -> tuple[str, ...]:
        return head_names(
            create_student(
                self.config["model"], self.config["num_classes"], **self.config["model_overrides"]
            )
        )


def load_run(path: Path | str) -> Run:
    """A run directory, or a checkpoint file inside one."""
    path = Path(path)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    return Run(ckpt.parent, load_checkpoint(ckpt))


def run_source(run: Run, spec: str | None = None) -> Source:
    """The run's dataset (or `spec`), refused if its classes differ from the run's."""
    source = open_source(spec or run.config["dataset"])
    if source.classes != run.config["classes"]:
        raise DeitPipeError(
            f"{spec or run.config['dataset']} has classes {source.classes[:5]}…; "
            f"run {run.path} was trained on {run.config['classes'][:5]}…"
        )
    return source


def evaluate_checkpoint(
    checkpoint: Path | str, spec: str | None = None, ema: bool = False, device: str = "auto"
) -> dict:
    run = load_run(checkpoint)
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    source = run_source(run, spec)
    model = run.model(ema).to(dev, memory_format=torch.channels_last)
    result = evaluate(model, source.split("val"), run.recipe.view, device=dev)
    return {
        "checkpoint": str(checkpoint),
        "data": source.spec,
        "step": run.checkpoint["step"],
        "heads": result,
    }
