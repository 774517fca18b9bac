"""A finished (or running) training run: its config, its model with weights, its evaluation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deit_pipe.data import Source, open_source
from deit_pipe.data.device.render import render_mode
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.sources.identity import same_dataset
from deit_pipe.device import resolve_device
from deit_pipe.errors import DeitPipeError, StoreError, StoreMismatchError
from deit_pipe.place import Place
from deit_pipe.storage import TargetStore
from deit_pipe.student.checkpoint import load_checkpoint
from deit_pipe.student.evaluate import evaluate
from deit_pipe.student.init_from import fit_state_dict
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
        """e.g. `vit_tiny none`, `deit_tiny⚗ hard`: the paper's ⚗ marks a distillation token,
        and a DeiT without one is the ViT architecture (the small-data studies' baseline)."""
        model = self.config["model"].replace("_patch16_224", "")
        if self.config["distilled_model"]:
            model = model.replace("_distilled", "⚗")
        elif model.startswith("deit_"):
            model = "vit_" + model.removeprefix("deit_")
        return f"{model} {self.config['distill']}"

    def model(self, ema: bool = False, img_size: int | None = None) -> torch.nn.Module:
        """The trained model (or its EMA), for inputs of `img_size` (default: the run's): a
        ViT's position embeddings are resampled bicubically to the new patch grid."""
        cfg = self.config
        overrides = dict(cfg["model_overrides"])
        state = self.checkpoint["ema"] if ema else self.checkpoint["model"]
        if state is None:
            raise DeitPipeError(f"{self.path} was trained without --ema; drop --ema")
        model = create_student(cfg["model"], cfg["num_classes"], drop_path=0.0, **overrides)
        patch_embed = getattr(model, "patch_embed", None)
        if img_size is not None and patch_embed is not None and img_size != self.input_size:
            patch = patch_embed.patch_size[0]
            if img_size % patch:
                raise DeitPipeError(
                    f"cannot evaluate {cfg['model']} at {img_size}×{img_size}: not a multiple "
                    f"of its {patch}-pixel patches"
                )
            model = create_student(
                cfg["model"],
                cfg["num_classes"],
                drop_path=0.0,
                **{**overrides, "img_size": img_size},
            )
            state, _ = fit_state_dict(dict(state), model)
        model.load_state_dict(state)
        return model.eval()

    @property
    def input_size(self) -> int:
        return self.recipe.view.input_size

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


def run_source(
    run: Run,
    data: str | None = None,
    data_options: dict | None = None,
    skip: dict[str, str] | None = None,
    data_cache: DataCache | None = None,
) -> Source:
    """The run's dataset (or `data`), refused if its classes differ from the run's. `skip`:
    the files the store's teacher skipped, which training excluded too."""
    source = open_source(
        data or run.config["dataset"], skip=skip, data_options=data_options, data_cache=data_cache
    )
    if source.classes != run.config["classes"]:
        raise DeitPipeError(
            f"{data or run.config['dataset']} has classes {source.classes[:5]}…; "
            f"run {run.path} was trained on {run.config['classes'][:5]}…"
        )
    return source


def store_source(
    run: Run,
    store: TargetStore,
    data_options: dict | None = None,
    data_cache: DataCache | None = None,
) -> Source:
    """The run's dataset as `store` holds it (its skipped files excluded), refused in one
    line unless it is the one the store's teacher saw (`verify.check_dataset`)."""
    from deit_pipe.pipeline.verify import check_dataset

    skip = {r["path"]: r["reason"] for r in store.skipped().to_pylist()}
    source = run_source(run, data_options=data_options, skip=skip, data_cache=data_cache)
    check_dataset(store, source)
    return source


def checked_source(
    run: Run,
    store_options: dict | None = None,
    data_options: dict | None = None,
    data_cache: DataCache | None = None,
) -> Source:
    """The run's own dataset, checked against the store the run trained from where that
    store can still be opened (with `store_options`), else against the dataset identity
    the run recorded."""
    url = (run.config.get("store_identity") or {}).get("url")
    if url:
        try:
            store = TargetStore(Place(url, store_options))
        except StoreError:  # moved or gone: the run's own record is all there is to check
            pass
        else:
            try:
                return store_source(run, store, data_options, data_cache)
            finally:
                store.close()
    source = run_source(run, data_options=data_options, data_cache=data_cache)
    recorded = run.config.get("dataset_fingerprint")
    content, spec = run.config.get("dataset_content"), run.config.get("dataset", "")
    if recorded and not same_dataset(recorded, content, spec, source):
        raise StoreMismatchError(
            f"{source.data} is not the dataset run {run.path} was trained on (fingerprint "
            f"{source.fingerprint()[:12]}, the run recorded {recorded[:12]}); "
            "pass --data SPEC to evaluate on it anyway"
        )
    return source


def evaluate_checkpoint(
    checkpoint: Path | str,
    data: str | None = None,
    ema: bool = False,
    device: str = "auto",
    input_size: int | None = None,
    store_options: dict | None = None,
    data_options: dict | None = None,
    render: str = "auto",
    data_cache: DataCache | None = None,
) -> dict:
    """Top-1/top-5 per head on clean val views, at the run's input size or `input_size`,
    rendered by Pillow or by the kernels on the device (`render`; the same bytes)."""
    run = load_run(checkpoint)
    size = run.input_size if input_size is None else input_size  # 0 is refused, not unset
    view = replace(run.recipe.view, input_size=size)  # checks the size before a model is made
    dev = resolve_device(device)
    source = (
        run_source(run, data, data_options, data_cache=data_cache)
        if data
        else checked_source(run, store_options, data_options, data_cache)
    )
    model = run.model(ema, img_size=size).to(dev, memory_format=torch.channels_last)
    render = render_mode(render, dev)
    result = evaluate(model, source.split("val"), view, device=dev, render=render)
    return {
        "checkpoint": str(checkpoint),
        "data": source.data,
        "step": run.checkpoint["step"],
        "input_size": size,
        "heads": result,
    }
