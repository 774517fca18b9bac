"""A store at a glance: what it holds, how complete it is, how big, how good its targets are."""

from __future__ import annotations

import numpy as np

from deit_pipe.errors import StoreError
from deit_pipe.storage.format import FORMAT_VERSION
from deit_pipe.storage.io import file_system
from deit_pipe.storage.reader import TargetStore


def summarize(store: TargetStore) -> dict:
    """JSON-ready summary used by `deit-pipe inspect`."""
    spec = store.spec
    fs, base = file_system(store.url, store.storage_options)
    bytes_on_disk = int(fs.du(base))
    array_bytes = sum(int(fs.du(f"{base}/{s}")) for s in spec.splits)
    views = sum(spec.split_epochs(s) * spec.views(s) for s in spec.splits)
    missing = {s: store.missing_shards(s) for s in spec.splits}
    complete = store.complete_epochs("train") if "train" in spec.splits else []
    tau = 1.0 if 1.0 in spec.temperatures else spec.temperatures[0]
    mass_split = (
        "train" if complete else ("val" if "val" in spec.splits and not missing["val"] else None)
    )
    mass = None
    if mass_split is not None:
        mass = float(
            store.read_epoch(complete[0] if mass_split == "train" else 0, mass_split)
            .topk_mass(tau)
            .mean()
        )
    return {
        "url": store.url,
        "format_version": FORMAT_VERSION,
        "created": store.meta["created"],
        "versions": store.meta["versions"],
        "dataset": {k: v for k, v in spec.dataset.items() if k != "classes"}
        | {"num_classes": spec.num_classes},
        "teacher": spec.teacher,
        "plan": spec.plan,
        "k": spec.k,
        "temperatures": list(spec.temperatures),
        "value_dtype": spec.value_dtype,
        "splits": list(spec.splits),
        "epochs": spec.epochs,
        "epochs_complete": complete,
        "views_per_epoch": spec.views("train") if "train" in spec.splits else 0,
        "val_views": spec.views("val") if "val" in spec.splits else 0,
        "complete": not any(missing.values()),
        "missing_shards": {s: [list(m) for m in ms] for s, ms in missing.items()},
        "bytes_on_disk": bytes_on_disk,
        "bytes_per_view": array_bytes / views if views else None,
        "topk_mass_tau": tau,
        "topk_mass_mean": mass,
        "val_teacher_top1": _val_accuracy(store, missing),
        "skipped_files": _skipped(store),
    }


def _val_accuracy(store: TargetStore, missing: dict) -> float | None:
    """Teacher top-1 against ground truth on the clean val views, if stored."""
    if "val" not in store.spec.splits or missing["val"]:
        return None
    try:
        manifest = store.manifest()
    except StoreError:
        return None
    is_val = np.asarray(manifest["split"].to_pylist()) == "val"
    order = np.argsort(manifest["index"].to_numpy()[is_val])
    labels = manifest["label"].to_numpy()[is_val][order]
    hard = store.read_epoch(0, "val").indices[:, 0].astype(np.int64)
    return float((hard == labels).mean()) if len(labels) == len(hard) else None


def _skipped(store: TargetStore) -> list[dict]:
    try:
        return store.skipped().to_pylist()
    except StoreError:
        return []
