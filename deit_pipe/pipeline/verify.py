"""`verify`: re-render a sample of a store's views on this machine and compare fingerprints.

A pre-flight check before a long run on a new machine, library install or copy of the data:
it proves (on a sample, or on every view) that this machine replays the views the teacher saw,
without running the teacher. Views render in DataLoader worker processes, as in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from torch.utils.data import DataLoader, Subset

from deit_pipe.data import Source, ViewBatch, collate_views, mismatches, open_source, stored_views
from deit_pipe.data.device.render import device_pixels, render_mode
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.sources.identity import blocks_problem, same_dataset
from deit_pipe.device import resolve_device
from deit_pipe.errors import DataError, StoreCorruptError, StoreMismatchError
from deit_pipe.place import Place
from deit_pipe.storage import TargetStore
from deit_pipe.storage.done import DoneFlagError, read_progress
from deit_pipe.storage.format import version_drift
from deit_pipe.storage.seal import ShardProblem, TeacherSealError

DEFAULT_TOTAL = 4096  # default views checked, spread over every stored epoch and val


@dataclass
class EpochCheck:
    split: str
    epoch: int
    checked: int = 0
    mismatches: int = 0
    unfinished_shards: int = 0
    first_mismatch: dict | None = None  # slot, sample, file (and the pair partner's)
    damaged: list[str] = field(default_factory=list)  # done shards failing their checksums


@dataclass
class VerifyReport:
    url: str
    dataset_matches: bool
    version_drift: dict[str, str]  # library: "store → here", for those that differ
    epochs: list[EpochCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def checked(self) -> int:
        return sum(e.checked for e in self.epochs)

    @property
    def mismatches(self) -> int:
        return sum(e.mismatches for e in self.epochs)

    @property
    def damaged(self) -> list[str]:
        return [line for e in self.epochs for line in e.damaged]

    @property
    def ok(self) -> bool:
        """Every checked view matches, every finished shard holds what was written, and the
        dataset is the one the store was made from (training refuses another one even where
        its views happen to match)."""
        clean = self.mismatches == 0 and not self.damaged
        return clean and self.checked > 0 and self.dataset_matches

    def to_json(self) -> dict:
        totals = {
            "checked": self.checked,
            "mismatches": self.mismatches,
            "damaged": self.damaged,
            "ok": self.ok,
        }
        return {**asdict(self), **totals}


def _plan_checks(store, source, units, done, count, seed) -> list[tuple[EpochCheck, np.ndarray]]:
    """Per (split, epoch): its check and the rows to re-render (`count` of them, or all)."""
    jobs = []
    for split, epoch in units:
        if len(source.split(split)) != store.spec.views(split):
            raise DataError(
                f"{source.data} {split} has {len(source.split(split))} images; the store "
                f"was made from {store.spec.views(split)}: it is another dataset"
            )
        check = EpochCheck(split, epoch)
        rows = _checked_rows(store, done[split][epoch], split, epoch, count, seed, check)
        jobs.append((check, rows))
    return jobs


def verify(
    place: Place | str,
    *,
    data: str | None = None,
    sample: int | None = None,
    all_views: bool = False,
    workers: int = 0,
    seed: int = 0,
    data_options: dict | None = None,
    data_cache: DataCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    render: str = "host",
    device: str = "auto",
) -> VerifyReport:
    """Re-render `sample` views per stored epoch (and val), or all of them, and compare.

    `data` points at the dataset where it lives on this machine (default: the store's spec),
    reached with `data_options` (fsspec's) through `data_cache` where given.
    `progress(done, total)` is called after each batch. `render="device"` renders the
    training views with the kernels on `device`, as `train --render device` would.
    """
    target = resolve_device(device)
    render = render_mode(render, target)
    start = time.perf_counter()
    store = TargetStore(place)
    store.check_files()
    source = _open_data(store, data, data_options, data_cache)
    report = _new_report(store, source)
    spec = store.spec
    recipe = Recipe.from_dict(spec.recipe)
    units = [(s, e) for s in spec.splits for e in range(spec.split_epochs(s))]
    per_unit = sample if sample is not None else max(-(-DEFAULT_TOTAL // len(units)), 2)
    done = store.progress().done
    jobs = _plan_checks(store, source, units, done, None if all_views else per_unit, seed)
    report.epochs = [check for check, _ in jobs]
    total = sum(_views_in(store.spec, c.split, r) for c, r in jobs)
    rendered = _counter(total, progress)
    for check, rows in jobs:
        flags = done[check.split][check.epoch]
        arrays = _epoch_arrays(store, check, flags)
        if arrays is None:
            continue  # its views cannot be compared: --repair recomputes them
        for views in _render(source, recipe, check, rows, workers, render):
            views = device_pixels(views, target)
            _compare(arrays["fingerprint"], source, recipe, check, views)
            rendered(len(views))
    store.close()
    report.seconds = time.perf_counter() - start
    return report


def _open_data(
    store: TargetStore, data: str | None, data_options: dict | None, data_cache: DataCache | None
) -> Source:
    """The dataset to re-render from (`data`, or the store's), its skipped files left out as
    the teacher left them out; refused where its block layout is not the store's, since
    re-rendering would then be meaningless."""
    skipped = {r["path"]: r["reason"] for r in store.skipped().to_pylist()}
    source = open_source(
        data or store.spec.dataset["spec"],
        skip=skipped,
        data_options=data_options,
        data_cache=data_cache,
    )
    problem = blocks_problem(store.spec.dataset, source, store.url)
    if problem:
        raise StoreMismatchError(problem)
    return source


def _new_report(store: TargetStore, source: Source) -> VerifyReport:
    """A report with no epoch checked yet: whether `source` is the dataset the store was
    made from, and which libraries differ from the store's."""
    dataset = store.spec.dataset
    return VerifyReport(
        url=store.url,
        dataset_matches=same_dataset(
            dataset["fingerprint"], dataset.get("content"), dataset["spec"], source
        ),
        version_drift=version_drift(store.meta.get("versions", {})),
    )


def _counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[int], None]:
    """What counts the views rendered, calling `progress(done, total)` after each batch."""
    rendered = 0

    def count(views: int) -> None:
        nonlocal rendered
        rendered += views
        if progress:
            progress(rendered, total)

    return count


def _epoch_arrays(store: TargetStore, check: EpochCheck, done: np.ndarray) -> dict | None:
    """The arrays of `check`'s epoch, with its damaged shards (and the other teachers') named
    in `check.damaged`; None where a chunk fails to decode (every shard it spoils named).
    Values are checked too, not only fingerprints: a lost chunk reads as zeros, which only
    the checksums recorded at write time tell from data."""
    try:
        arrays = store.read_arrays(check.epoch, check.split)
    except (DoneFlagError, TeacherSealError):
        raise
    except StoreCorruptError:  # a chunk fails to decode: find every shard it spoils
        problems = epoch_damage(store, check.split, check.epoch, done)
        check.damaged = [str(p) for p in problems]
        return None
    problems = epoch_damage(store, check.split, check.epoch, done, arrays)
    check.damaged = [str(p) for p in problems] + _other_teachers(store, check, arrays)
    return arrays


def epoch_damage(
    store: TargetStore,
    split: str,
    epoch: int,
    done: np.ndarray | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    prefix: str | None = None,
) -> list[ShardProblem]:
    """The shards of `epoch` marked `done` (of the teacher at `prefix`, by default the
    store's) whose bytes differ from their write-time checksums; `arrays`: the epoch's, if
    already read. A chunk that fails to decode damages every done shard of the epoch."""
    try:
        return store.shard_problems(split, epoch, arrays, done, prefix)
    except (DoneFlagError, TeacherSealError):  # a flag or a whole teacher: named as such
        raise
    except StoreCorruptError as exc:
        if done is None:
            done = store.progress().done[split][epoch]
        where = f"{store.prefix if prefix is None else prefix}{split}"
        why = f"a chunk fails to decode: {exc}"
        return [
            ShardProblem(store.url, where, epoch, int(s), "chunks", why)
            for s in np.flatnonzero(done)
        ]


def damaged_shards(
    place: Place | str, teacher: str | None = None
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """What `--repair` does to the shards of `teacher` (by default the store's first):
    (split, epoch, shard) to recompute — marked done but their stored bytes differ from their
    write-time checksums, or their done flag is damaged and their shard does not check out —
    and those whose damaged done flag is rebuilt as done, since every chunk of the shard reads
    and matches its checksum record (a shard never finished has no record, so it is redone)."""
    store = TargetStore(place, teacher=teacher)
    progress = read_progress(store.group, store.spec, store.url, store.prefix, tolerant=True)
    found, rebuilt = set(), set()
    try:
        for split in store.spec.splits:
            flagged = {(e, s) for _, e, s in progress.damaged.get(split, [])}
            for epoch in range(store.spec.split_epochs(split)):
                done = progress.done[split][epoch].copy()
                unsure = [s for e, s in flagged if e == epoch]
                done[unsure] = True  # check them as if done
                problems = epoch_damage(store, split, epoch, done)
                bad = {p.shard for p in problems}
                found |= {(split, epoch, s) for s in bad}
                rebuilt |= {(split, epoch, s) for s in unsure if s not in bad}
    finally:
        store.close()
    return sorted(found), sorted(rebuilt)


def _other_teachers(store, check, arrays: dict) -> list[str]:
    """The damaged shards of the store's other teachers, and any view of theirs whose
    fingerprint is not the first teacher's (every teacher must have seen the same views)."""
    found = []
    for name in store.spec.teacher_names[1:]:
        prefix = store.spec.prefix(name)
        theirs = store.read_arrays(check.epoch, check.split, prefix)
        try:
            damage = epoch_damage(store, check.split, check.epoch, None, theirs, prefix)
        except TeacherSealError as exc:  # another teacher's arrays copied under this name
            found.append(str(exc))
            continue
        found += [str(p) for p in damage]
        both = (theirs["fingerprint"] != 0) & (arrays["fingerprint"] != 0)
        differ = np.flatnonzero(both & (theirs["fingerprint"] != arrays["fingerprint"]))
        if len(differ):
            found.append(
                f"{store.url}: teacher {name} saw other views than {store.spec.teacher_names[0]} "
                f"in {check.split} epoch {check.epoch} ({len(differ)} views, first slot "
                f"{differ[0]}): recompute it"
            )
    return found


def _checked_rows(store, done, split, epoch, count, seed, check) -> np.ndarray:
    """Rows (train: pairs, val: views) to check, only from shards marked done (`done`: this
    epoch's flags); sorted."""
    check.unfinished_shards = int((~done).sum())
    length = store.spec.layout(split)[0]
    views = store.spec.views(split)
    ok_view = np.repeat(done, length)[:views]
    if split == "train":
        pairs = np.arange((views + 1) // 2)
        candidates = pairs[ok_view[2 * pairs]]
        count = None if count is None else -(-count // 2)
    else:
        candidates = np.flatnonzero(ok_view)
    if count is None or count >= len(candidates):
        return candidates
    rng = np.random.default_rng([seed, epoch, len(split), 0x7E51F7])
    return np.sort(rng.choice(candidates, count, replace=False))


def _views_in(spec, split: str, rows: np.ndarray) -> int:
    """Views behind `rows`: two per train pair, except an odd epoch's last lone slot."""
    if split != "train":
        return len(rows)
    lone = spec.views(split) % 2 and len(rows) and rows[-1] == spec.views(split) // 2
    return 2 * len(rows) - int(bool(lone))


def _render(
    source: Source, recipe: Recipe, check: EpochCheck, rows: np.ndarray, workers: int, render: str
):
    dataset = stored_views(source, recipe, check.split, check.epoch, render)
    loader = DataLoader(
        Subset(dataset, rows.tolist()),
        batch_size=32 if check.split == "train" else 64,  # pairs, or single views
        num_workers=workers,
        collate_fn=collate_views,
        persistent_workers=False,
    )
    yield from loader


def _compare(stored, source, recipe, check: EpochCheck, views: ViewBatch) -> None:
    slots = views.slot.numpy()
    bad = mismatches(stored, slots, views.fingerprint.numpy())
    check.checked += len(slots)
    check.mismatches += len(bad)
    if len(bad) and check.first_mismatch is None:
        check.first_mismatch = _describe(source, recipe, check, int(slots[bad[0]]))


def _describe(source: Source, recipe: Recipe, check: EpochCheck, slot: int) -> dict:
    split = source.split(check.split)

    def name(sample: int) -> str:
        return split.paths[sample] if split.paths is not None else f"sample {sample}"

    if check.split != "train":
        return {"slot": slot, "sample": slot, "file": name(slot)}
    epoch_plan = recipe.epoch_plan(check.epoch, split)
    sample = int(epoch_plan.sample[slot])
    found = {"slot": slot, "sample": sample, "file": name(sample)}
    partner = int(epoch_plan.partner(np.array([slot]))[0])
    if partner != slot and epoch_plan.mix_op[slot // 2]:
        found["mixed_with"] = name(int(epoch_plan.sample[partner]))
    return found


def check_dataset(store: TargetStore, source: Source, split: str = "val", workers: int = 0) -> None:
    """Refuse, in one line naming the first changed file, a dataset that is not the one the
    store's `split` was computed from: the identity `train` checks (classes, labels, files
    and sizes), then every stored view of the split re-rendered and compared by fingerprint,
    as `verify --all` does, since a same-size replaced image keeps the identity. Readers that
    score stored teacher answers against these pixels (`audit`, `eval`) call it first."""
    store.check_run(source=source, follow=True)
    if split not in store.spec.splits:
        return
    # The image count first, then every view of the split's shards marked done.
    [(check, rows)] = _plan_checks(store, source, [(split, 0)], store.progress().done, None, 0)
    stored = store.read_arrays(0, split)["fingerprint"]
    recipe = Recipe.from_dict(store.spec.recipe)
    for views in _render(source, recipe, check, rows, workers, "host"):
        _compare(stored, source, recipe, check, views)
    if check.mismatches:
        first = check.first_mismatch or {}
        raise StoreMismatchError(
            f"{source.data} is not the dataset {store.url} was made from: {split} image "
            f"{first.get('file')} differs from the one the teacher saw ({check.mismatches} "
            f"of {check.checked} {split} views differ); restore it or precompute again"
        )
