"""Stage 0: dataset sources, the stateless epoch plan, view rendering and fingerprints."""

from deit_pipe.data.device.finish import finish
from deit_pipe.data.loaders.dataset import (
    EvalDataset,
    PairDataset,
    RunSampler,
    collate_views,
    mismatches,
    stored_views,
)
from deit_pipe.data.plan.epoch import EpochPlan, MixConfig, plan, step_slots, steps_per_epoch
from deit_pipe.data.sources.scan import ScanReport, open_checked, scan
from deit_pipe.data.sources.source import Source, Split, open_source
from deit_pipe.data.views.batch import ViewBatch
from deit_pipe.data.views.host import (
    ViewConfig,
    eval_transform,
    fingerprint,
    render,
    train_transform,
)

__all__ = [
    "EpochPlan",
    "EvalDataset",
    "MixConfig",
    "PairDataset",
    "ScanReport",
    "Source",
    "Split",
    "RunSampler",
    "mismatches",
    "stored_views",
    "ViewBatch",
    "ViewConfig",
    "collate_views",
    "eval_transform",
    "finish",
    "fingerprint",
    "open_checked",
    "open_source",
    "plan",
    "render",
    "scan",
    "step_slots",
    "steps_per_epoch",
    "train_transform",
]
