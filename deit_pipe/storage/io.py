"""Opening stores at local paths or fsspec URLs (s3://, gs://, …), and reading their metadata.

Object-store credentials and endpoints come from a `Place`'s options (the CLI's
`--storage-options JSON` or `DEIT_PIPE_STORAGE_OPTIONS`) or the backend's usual environment
(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, FSSPEC_S3_*, …). Backend failures become one line that
names the store and the likely fix.
"""

from __future__ import annotations

import fsspec
import fsspec.implementations.local
import zarr

from deit_pipe.data.plan.recipe import PLAN_VERSION
from deit_pipe.errors import (
    StoreCorruptError,
    StoreFormatError,
    StoreIncompleteError,
    StoreNotFoundError,
    check,
)
from deit_pipe.place import Place, missing_bucket, no_bucket, storage_errors
from deit_pipe.storage.format import (
    ATTR_KEY,
    CREATING_KEY,
    FORMAT_VERSION,
    GROWING,
    meta_checksum,
)

OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


EMPTY_STORE = (
    "the store path is empty: name a target store (a folder such as targets.zarr, or a URL)"
)


def open_group(place: Place | str, mode: str) -> zarr.Group:
    place = Place.of(place)
    # An empty URL is the current directory to zarr: never read or write a store there.
    check(bool(place.url.strip()), EMPTY_STORE)
    # zarr's LocalStore creates folders and is faster than fsspec's local filesystem.
    url = place.url.removeprefix("file://")
    with place.errors():
        _probe_bucket(place)
        try:
            return zarr.open_group(url, mode=mode, storage_options=place.options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
            if missing_bucket(exc):
                raise
            raise StoreNotFoundError(f"no target store at {url} ({type(exc).__name__})") from None


def _probe_bucket(place: Place) -> None:
    """One request to an object store's bucket before zarr fans out many.

    A missing bucket would read as an empty store, and an unreachable endpoint would fail one
    of zarr's concurrent requests while the others are abandoned mid-retry. A bucket this
    principal may not inspect (prefix-scoped permissions) is left for zarr to try.
    """
    protocol = place.url.split("://", 1)[0] if "://" in place.url else "file"
    if protocol not in OBJECT_STORES:
        return
    try:
        place.fs.info(place.base.split("/", 1)[0])
    except FileNotFoundError:
        raise no_bucket(place.url) from None
    except PermissionError:
        pass


def read_meta(group: zarr.Group, url: str) -> dict:
    """The store's metadata, refusing stores this version of deit-pipe cannot read and
    metadata whose checksum shows an edit or damage."""
    meta = group.attrs.get(ATTR_KEY)
    if not isinstance(meta, dict):
        if isinstance(group.attrs.get(CREATING_KEY), dict):
            raise StoreIncompleteError(
                f"{url} is a deit-pipe store whose creation was interrupted; run the "
                "precompute command again to lay it out"
            )
        raise StoreFormatError(f"{url} is a Zarr group but not a deit-pipe store")
    version = meta.get("format_version")
    if version in OLD_FORMATS:
        raise StoreFormatError(
            f"{url} has store format version {version} ({OLD_FORMATS[version]}); this "
            f"deit-pipe reads version {FORMAT_VERSION}: remake it with "
            f"`{remake_command(meta, url)}`"
        )
    if version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{url} has store format version {version}; this deit-pipe reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        intact = meta.get("checksum") == meta_checksum(meta)
    except (TypeError, ValueError):
        intact = False
    if not intact:
        raise StoreCorruptError(
            f"{url}/zarr.json: the store's job description was edited or damaged (its "
            "checksum differs); restore the file, or remake the store"
        )
    plan_version = meta.get("plan", {}).get("plan_version")
    if plan_version != PLAN_VERSION:
        why = OLD_PLANS.get(plan_version, "views this deit-pipe does not render")
        raise StoreFormatError(
            f"{url} holds views of plan version {plan_version} ({why}); this deit-pipe "
            f"replays version {PLAN_VERSION}: remake it with `{remake_command(meta, url)}`"
        )
    return meta


OLD_PLANS = {
    2: "float32 views finished on the host, blake2b fingerprints",
}
OLD_FORMATS = {
    1: "its views replay only on CPUs like the one that made it",
    2: "its shards carry no checksums, so a lost chunk would read as zeros",
}


def remake_command(meta: dict, url: str) -> str:
    """The precompute command that rebuilds a store from its metadata (recipe flags aside)."""
    teacher, plan = meta.get("teacher", {}), meta.get("plan", {})
    parts = [
        "deit-pipe precompute",
        f"--data {meta.get('dataset', {}).get('spec', 'SPEC')}",
        f"--out {url}",
        f"--epochs {plan.get('epochs', 'E')}",
        f"--teacher-model {teacher.get('name', 'NAME')}",
    ]
    if teacher.get("checkpoint"):
        parts.append(f"--teacher-checkpoint {teacher['checkpoint']}")
    elif teacher.get("random_init"):
        parts.append("--teacher-random-init")
    for key, flag in (("seed", "--plan-seed"), ("repeats", "--repeats")):
        if key in plan:
            parts.append(f"{flag} {plan[key]}")
    return " ".join([*parts, "--overwrite"]) + " (plus the recipe flags it was made with)"


def file_sizes(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int]:
    """Bytes of each file under `path` (by path relative to it), read from one listing. A
    store being filled holds writers' temporary files that are renamed away between a listing
    and a later stat (`fs.du` stats each file after listing, and fails on them); a listing
    skips them."""
    found = fs.find(path, detail=True)
    return {
        name.removeprefix(path + "/"): int(info.get("size") or 0)
        for name, info in found.items()
        if info["type"] == "file"
    }


def check_layout(
    group: zarr.Group,
    spec,
    url: str,
    growing_to: int | None = None,
    missing: dict[str, str] | None = None,
) -> None:
    """Every array the metadata implies exists with its shape and dtype: an edited array
    `zarr.json` (an epoch count, say) would otherwise read past what was written. A store
    that is growing (its metadata says to how many epochs) may have arrays already grown.
    `missing` (inspect's): a missing array is put there, its split group → the line, not
    raised."""
    for path, (shape, dtype) in (
        (f"{spec.prefix(t)}{split}/{name}", layout)
        for t in spec.teacher_names
        for split in spec.splits
        for name, layout in spec.array_shapes(split).items()
    ):
        try:
            with storage_errors(url):
                array = group[path]
        except (KeyError, FileNotFoundError):
            line = f"{url}/{path} is missing; the store is damaged: remake it"
            if missing is None:
                raise StoreCorruptError(line) from None
            missing.setdefault(path.rsplit("/", 1)[0], line)
            continue
        grown = (
            growing_to is not None
            and array.shape[1:] == shape[1:]
            and shape[0] <= array.shape[0] <= growing_to
        )
        if not (tuple(array.shape) == shape or grown) or str(array.dtype) != dtype:
            raise StoreCorruptError(
                f"{url}/{path}/zarr.json was edited or damaged: shape "
                f"{tuple(array.shape)} {array.dtype}, the store's metadata says {shape} "
                f"{dtype}; restore it, or remake the store"
            )


def open_store(place: Place | str, mode: str, missing: dict[str, str] | None = None):
    """(group, metadata, StoreSpec) of a deit-pipe store, its metadata checksum and array
    layout checked: what every reader and writer opens a store with. `missing`: see
    `check_layout`."""
    place = Place.of(place)
    from deit_pipe.storage.format import StoreSpec

    group = open_group(place, mode)
    meta = read_meta(group, place.url)
    spec = StoreSpec.from_meta(meta)
    check_layout(group, spec, place.url, meta.get(GROWING, {}).get("epochs"), missing)
    return group, meta, spec
