"""A store at a glance: what it holds, how complete it is, how big, how good its targets are."""

from __future__ import annotations

import time

import numpy as np

from deit_pipe.errors import StoreCorruptError, StoreIncompleteError
from deit_pipe.storage.claims import running_jobs
from deit_pipe.storage.done import DoneFlagError, read_progress
from deit_pipe.storage.format import FORMAT_VERSION
from deit_pipe.storage.io import file_sizes
from deit_pipe.storage.lock import describe
from deit_pipe.storage.reader import TargetStore


def summarize(store: TargetStore) -> dict:
    """JSON-ready summary used by `deit-pipe inspect`. Damage below the metadata (a done flag
    or an array chunk that fails its checksum) does not hide the rest: what it prevents is
    left out and named in `unreadable` (the first one of each part)."""
    unreadable: list[str] = []

    def readable(read, default=None):
        try:
            return read()
        except StoreCorruptError as exc:
            unreadable.append(str(exc))
            return default

    store.check_files()  # its val top-1 reads the manifest's labels
    bytes_on_disk, bytes_per_view = _footprint(store)
    by_teacher = _done_by_teacher(store, unreadable)
    done, missing, complete = _completeness(store, by_teacher)
    tau, mass = readable(lambda: _topk_mass(store, complete, missing), (1.0, None))
    return {
        **_description(store, by_teacher),
        "epochs_complete": complete,
        "views_per_epoch": store.spec.views("train") if "train" in store.spec.splits else 0,
        "val_views": store.spec.views("val") if "val" in store.spec.splits else 0,
        "complete": not any(missing.values()),
        "missing_shards": {s: [list(m) for m in ms] for s, ms in missing.items()},
        "bytes_on_disk": bytes_on_disk,
        "bytes_per_view": bytes_per_view,
        "topk_mass_tau": tau,
        "topk_mass_mean": mass,
        "val_teacher_top1": readable(lambda: _val_accuracy(store, missing)),
        "skipped_files": _skipped(store),
        "progress": readable(lambda: progress(store, done)),
        "filled_by": [
            {"epochs": str(claim), "job": describe(holder)}
            for claim, holder in running_jobs(store.place)
        ],
        "unreadable": unreadable,
    }


def _footprint(store: TargetStore) -> tuple[int, float | None]:
    """(bytes on disk, bytes of the split arrays per stored view), from one listing (on S3,
    requests per thousand objects)."""
    spec = store.spec
    sizes = file_sizes(store.place.fs, store.place.base)
    bytes_on_disk = sum(sizes.values())
    array_bytes = sum(n for path, n in sizes.items() if path.split("/", 1)[0] in spec.splits)
    views = sum(spec.split_epochs(s) * spec.views(s) for s in spec.splits)
    return bytes_on_disk, array_bytes / views if views else None


def _done_by_teacher(store: TargetStore, unreadable: list[str]) -> dict[str, dict]:
    """Each teacher's done flags (split → [epoch, shard]). `done` is one object per (epoch,
    shard): each teacher's is read once (on S3, E·S requests). The store's missing parts and
    its damaged flags, read as not done here, are added to `unreadable`, each named as every
    other command names it."""
    spec = store.spec
    absent = tuple(store.missing)
    unreadable += store.missing.values()
    read = {
        n: read_progress(store.group, spec, store.url, spec.prefix(n), tolerant=True, absent=absent)
        for n in spec.teacher_names
    }
    unreadable += [
        str(DoneFlagError(store.url, [cell]))
        for p in read.values()
        for cells in p.damaged.values()
        for cell in cells
    ]
    return {name: p.done for name, p in read.items()}


def _completeness(store: TargetStore, by_teacher: dict) -> tuple[dict, dict, list[int]]:
    """(done flags of the teachers read, done by every one; missing (epoch, shard) per split;
    the training epochs complete)."""
    done = {
        split: np.logical_and.reduce([by_teacher[t][split] for t in store.teachers])
        for split in store.spec.splits
    }
    missing = {s: [(int(e), int(sh)) for e, sh in np.argwhere(~d)] for s, d in done.items()}
    complete = (
        [int(e) for e in np.flatnonzero(done["train"].all(axis=1))] if "train" in done else []
    )
    return done, missing, complete


def _description(store: TargetStore, by_teacher: dict) -> dict:
    """What the store is (its metadata, teachers and recipe), and each teacher's complete
    training epochs: the summary's first keys."""
    spec = store.spec
    return {
        "url": store.url,
        "format_version": FORMAT_VERSION,
        "created": store.meta["created"],
        "versions": store.meta["versions"],
        "dataset": {k: v for k, v in spec.dataset.items() if k != "classes"}
        | {"num_classes": spec.num_classes},
        "teacher": spec.teacher,
        "teachers": {name: spec.teacher_info(name) for name in spec.teacher_names},
        "epochs_complete_by_teacher": {
            name: [int(e) for e in np.flatnonzero(d["train"].all(axis=1))] if "train" in d else []
            for name, d in by_teacher.items()
        },
        "recipe": spec.recipe,
        "k": spec.k,
        "temperatures": list(spec.temperatures),
        "value_dtype": spec.value_dtype,
        "targets": spec.targets,
        "splits": list(spec.splits),
        "epochs": spec.epochs,
    }


def _topk_mass(
    store: TargetStore, complete: list[int], missing: dict
) -> tuple[float, float | None]:
    """(τ, mean top-k probability mass at τ) over the first complete epoch, or val; the mass
    is None where nothing complete holds soft targets."""
    spec = store.spec
    tau = 1.0 if 1.0 in spec.temperatures or not spec.temperatures else spec.temperatures[0]
    split = (
        "train" if complete else ("val" if "val" in spec.splits and not missing["val"] else None)
    )
    if split is None or spec.targets != "soft":
        return tau, None
    targets = store.read_epoch(complete[0] if split == "train" else 0, split)
    return tau, float(targets.topk_mass(tau).mean())


def progress(
    store: TargetStore, done: dict[str, np.ndarray], window: float = 60.0, now: float | None = None
) -> dict:
    """Shards done (`done`: each split's flags), views/s over the last `window` seconds (from
    the shards' completion times) and the ETA of the rest, for a store being filled."""
    now = time.time() if now is None else now
    done_views = total_views = recent_views = 0
    first = now
    for split, flags in done.items():
        sizes = store.spec.shard_sizes(split)
        if not flags.any():  # nothing done to time (or the split's arrays are missing)
            total_views += int(sizes.sum()) * flags.shape[0]
            continue
        at = store.done_times(split)
        total_views += int(sizes.sum()) * flags.shape[0]
        done_views += int((flags * sizes).sum())
        recent_views += int((((at > now - window) & flags) * sizes).sum())
        first = min(first, float(at[flags].min()))
    span = min(window, max(now - first, 1e-9))
    rate = recent_views / span if recent_views else 0.0
    left = total_views - done_views
    return {
        "views_done": done_views,
        "views_total": total_views,
        "views_per_s": rate,
        "eta_s": left / rate if rate and left else (0.0 if not left else None),
    }


def _val_accuracy(store: TargetStore, missing: dict) -> float | None:
    """Teacher top-1 against ground truth on the clean val views, if stored."""
    if "val" not in store.spec.splits or missing["val"]:
        return None
    try:
        manifest = store.manifest()
    except StoreIncompleteError:  # not written yet; a damaged one is an error
        return None
    is_val = np.asarray(manifest["split"].to_pylist()) == "val"
    order = np.argsort(manifest["index"].to_numpy()[is_val])
    labels = manifest["label"].to_numpy()[is_val][order]
    hard = store.read_epoch(0, "val").top1
    return float((hard == labels).mean()) if len(labels) == len(hard) else None


def _skipped(store: TargetStore) -> list[dict]:
    try:
        return store.skipped().to_pylist()
    except StoreIncompleteError:
        return []
