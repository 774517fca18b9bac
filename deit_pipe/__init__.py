"""deit-pipe: DeiT knowledge distillation from precomputed, replayable teacher targets.

The public Python API is `__all__` (docs/API.md); every other module may change between
releases. A training loop of one's own needs four names::

    store = deit_pipe.open_store("runs/store.zarr")
    loader = deit_pipe.ReplayLoader(store, batch_size=256, device="cuda")
    criterion = deit_pipe.distillation_loss("hard")
    for batch in loader:  # finished images, label targets, teacher targets
        loss, _ = criterion(model(batch.images), batch.label_targets,
                            batch.teacher_soft, batch.teacher_hard)

Names load on first use, so `import deit_pipe` (and the CLI) stay quick.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_WHERE = {
    "open_store": "deit_pipe.student.store",
    "Store": "deit_pipe.student.store",
    "ReplayLoader": "deit_pipe.student.loader",
    "Batch": "deit_pipe.student.loader",
    "TopK": "deit_pipe.student.loader",
    "step_seed": "deit_pipe.student.loader",
    "distillation_loss": "deit_pipe.student.losses",
    "DistillationLoss": "deit_pipe.student.losses",
    "mixed_label_targets": "deit_pipe.student.losses",
    "create_student": "deit_pipe.student.models",
    "create_teacher": "deit_pipe.teacher",
    "DeitPipeError": "deit_pipe.errors",
    "ReplayError": "deit_pipe.errors",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'deit_pipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
