"""Dataset sources: images by index, labels, a stable class list and a fingerprint.

`open_source(SPEC)` with SPEC one of `digits`, `fake:N[:SIZE]`, `imagefolder:ROOT_OR_URL`,
`parquet:ROOT_OR_URL`, `wds:ROOT_OR_URL`, `cifar10:ROOT`, `cifar100:ROOT` returns a `Source`
whose `split("train" | "val")` gives a `Split`. A `Split` is picklable so DataLoader workers
and dask tasks can carry it; URLs (s3://, gs://, …) open with `data_options` (fsspec's).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from deit_pipe.data.decode.jpeg import EncodedJpeg, open_image
from deit_pipe.data.decode.pillow import UNREADABLE, decode_image
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.sources.files import Root, data_errors
from deit_pipe.data.sources.split import RUN, Split, sample_bytes
from deit_pipe.errors import DataError
from deit_pipe.place import PerProcess, is_url

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ArraySplit(Split):
    """Images held in memory as uint8 HWC arrays (digits, CIFAR)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="RGB")

    def identity(self, h) -> None:
        h.update(np.ascontiguousarray(self.images).tobytes())

    def block_bytes(self) -> float:
        return float(self.images[:RUN].nbytes)


class FileSplit(PerProcess, Split):
    """Image files under a root, a folder or a URL; every path is checked to stay inside it."""

    # The root resolved once per process, on first load: another host may mount it elsewhere.
    _real_root: str | None = None

    def __init__(self, root: Path | Root, paths: list[str], labels: list[int], sizes: list[int]):
        self.root = root
        self.paths = paths
        self.sizes = sizes
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, index: int) -> Image.Image:
        if isinstance(self.root, Root):  # behind a URL: one GET per image
            return decode_image(self.raw(index), self._name(index))
        return load_image(self.root, self.paths[index], self._resolved_root())

    def open(self, index: int) -> Image.Image | EncodedJpeg:
        return open_image(self.raw(index), self._name(index))

    def _name(self, index: int) -> str:
        if isinstance(self.root, Root):
            return f"{self.root.location}/{self.paths[index]}"
        return os.path.join(self.root, self.paths[index])

    def _resolved_root(self) -> str:
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        return self._real_root

    def identity(self, h) -> None:
        # Relative paths and sizes: a copy in another folder or a bucket is the same dataset.
        for path, size in zip(self.paths, self.sizes, strict=True):
            h.update(f"{path}\0{size}\n".encode())

    def raw(self, index: int) -> bytes:
        """Sample `index`'s encoded file."""
        if isinstance(self.root, Root):
            return self.root.read(self.paths[index])
        path = resolve_inside(self.root, self.paths[index], self._resolved_root())
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise DataError(f"unreadable image {path}: {exc}") from None

    def content(self, h) -> None:
        h.update(f"{len(self)}\n".encode())
        sample_bytes(self, h)


class FakeSplit(Split):
    """Deterministic synthetic images (benchmarks and tests only)."""

    def __init__(self, count: int, size: int, num_classes: int, tag: int):
        self.size, self.tag, self.num_classes = size, tag, num_classes
        self.labels = np.arange(count, dtype=np.int64) % num_classes

    def load(self, index: int) -> Image.Image:
        rng = np.random.default_rng([self.tag, index])
        label = int(self.labels[index])
        # A class-dependent colour gradient plus noise: cheap, deterministic, learnable.
        # Integer noise (no libm-dependent normal draws), so every CPU makes the same pixels.
        yy, xx = np.mgrid[0 : self.size, 0 : self.size] / max(self.size - 1, 1)
        base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * (label + 1) / self.num_classes
        noise = rng.integers(-35, 36, base.shape)
        pixels = np.clip(base * 255 + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, mode="RGB")

    def identity(self, h) -> None:
        h.update(f"fake:{len(self)}:{self.size}:{self.tag}".encode())


@dataclass
class Source:
    """A dataset: its spec (`data`, as `--data` gave it), classes, splits, defaults for
    rendering, and skipped files."""

    data: str
    classes: list[str]
    splits: dict[str, Split]
    default_input_size: int = 224
    default_hflip: float = 0.5
    default_recipe: str = "deit"  # the preset for this kind of data (see data.plan.recipe)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    # Files the source does not read (unsupported extensions, a tar's repeated keys):
    # (name, why), counted and named in the log and in `scan`, never dropped unsaid.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"{self.data} has no split {name!r} (has: {', '.join(self.splits)})")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Hash of the classes and, per split, the labels and what identifies its images
        (`Split.identity`): never where the dataset lives, so a moved copy is the same."""
        if self._fingerprint is None:
            self._fingerprint = self.digest("identity")
        return self._fingerprint

    def digest(self, part: str) -> str:
        """Hash of the classes and, per split, the labels and `Split.<part>` (`identity`, or
        `content`: what two layouts of the same images share)."""
        h = hashlib.blake2b(digest_size=16)
        h.update("\n".join(self.classes).encode())
        for name in sorted(self.splits):
            split = self.splits[name]
            h.update(name.encode())
            h.update(split.labels.tobytes())
            getattr(split, part)(h)
        return h.hexdigest()


def load_image(root: Path, relpath: str, real_root: str | None = None) -> Image.Image:
    """Open `root/relpath` as RGB, refusing paths that escape the root and unreadable files.
    `real_root` is `root` already resolved (a split resolves it once, not per image)."""
    path = resolve_inside(root, relpath, real_root)
    try:
        with Image.open(path) as img:
            img.load()
            # An RGB file is used as decoded: `convert` would copy it (0.1 ms per view).
            return img if img.mode == "RGB" else img.convert("RGB")
    except UNREADABLE as exc:
        raise DataError(f"unreadable image {path}: {exc}") from None


def resolve_inside(root: Path, relpath: str, real_root: str | None = None) -> str:
    """`root/relpath` resolved, or a DataError if it (or a symlink on the way) leaves the root."""
    real_root = real_root or os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, relpath))
    if os.path.commonpath((real_root, path)) != real_root:
        raise DataError(f"path escapes the dataset root {root}: {relpath}")
    return path


def open_source(
    data: str,
    *,
    skip: dict[str, str] | None = None,
    download: bool = False,
    data_options: dict | None = None,
    data_cache: DataCache | None = None,
) -> Source:
    """Open a dataset from its spec (`--data`); `skip` maps sample names (relative paths,
    `SHARD:KEY`) to exclude → why. `data_options` are fsspec's, for a URL root (as for
    stores); a URL root's files are read through `data_cache` (local copies) when given.

    Nothing is fetched from the network unless `download` is set (CIFAR only).
    """
    kind, _, arg = data.partition(":")
    arg = arg.removeprefix("file://")
    if kind == "digits" and not arg:
        return _digits(data)
    if kind == "fake":
        return _fake(data, arg)
    if kind == "imagefolder" and arg and is_url(arg):
        with data_errors(arg):
            return note_ignored(
                _imagefolder_url(data, Root(arg, data_options, data_cache), skip or {})
            )
    if kind == "imagefolder" and arg:
        return note_ignored(_imagefolder(data, Path(arg).expanduser(), skip or {}))
    if kind in ("parquet", "wds") and arg:
        from deit_pipe.data.sources.parquet import open_parquet
        from deit_pipe.data.sources.webdataset import open_webdataset

        opener = open_parquet if kind == "parquet" else open_webdataset
        location = arg if is_url(arg) else str(Path(arg).expanduser())
        where = location.partition("?")[0]  # the root, without Parquet's column options
        if not is_url(arg) and not Path(where).is_dir():
            raise DataError(f"dataset root not found: {where}")
        with data_errors(where):
            classes, splits = opener(Root(where, data_options, data_cache), location, skip or {})
        ignored = [i for split in splits.values() for i in getattr(split, "ignored", [])]
        skipped = sorted((skip or {}).items())
        return note_ignored(Source(data, classes, splits, skipped=skipped, ignored=ignored))
    if kind in ("cifar10", "cifar100") and arg:
        return _cifar(data, kind, Path(arg).expanduser(), download)
    raise DataError(
        f"unknown dataset spec {data!r}: use digits, fake:N[:SIZE], imagefolder:ROOT, "
        "parquet:ROOT, wds:ROOT (a ROOT may be a URL), cifar10:ROOT or cifar100:ROOT"
    )


def _digits(data: str, size: int = 32) -> Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 intensities → 8-bit, upscaled once so every view starts from the same pixels.
    small = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = np.stack(
        [
            np.asarray(Image.fromarray(im, mode="L").resize((size, size), Image.BICUBIC))
            for im in small
        ]
    )
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    splits = {
        "train": ArraySplit(images[train_idx], labels[train_idx]),
        "val": ArraySplit(images[val_idx], labels[val_idx]),
    }
    # Digits are not mirror-symmetric: flipping would teach the wrong thing.
    classes = [str(c) for c in range(10)]
    return Source(
        data, classes, splits, default_input_size=size, default_hflip=0.0, default_recipe="small"
    )


def _fake(data: str, arg: str) -> Source:
    parts = arg.split(":") if arg else []
    try:
        count = int(parts[0])
        size = int(parts[1]) if len(parts) > 1 else 32
        if count < 2 or size < 8 or len(parts) > 2:
            raise ValueError
    except (ValueError, IndexError):
        raise DataError(
            f"bad fake spec {data!r}: use fake:N[:SIZE] with N >= 2, SIZE >= 8"
        ) from None
    classes = [f"class{c}" for c in range(10)]
    splits = {
        "train": FakeSplit(count, size, len(classes), tag=0),
        "val": FakeSplit(max(count // 5, 1), size, len(classes), tag=1),
    }
    return Source(data, classes, splits, default_input_size=size)


def _class_files(
    split_dir: Path, ignored: list[tuple[str, str]] | None = None
) -> dict[str, list[str]]:
    """Each class folder's image files (relative to the root); any other file but a hidden
    one is appended to `ignored` with why."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"no class folders in {split_dir}")
    files: dict[str, list[str]] = {}
    for name in classes:
        found = []
        for path in sorted(_walk_within(split_dir / name)):
            rel = str(Path(path).relative_to(split_dir.parent))
            if path.lower().endswith(IMAGE_EXTENSIONS):
                found.append(rel)
            elif ignored is not None and not os.path.basename(path).startswith("."):
                ignored.append((rel, unsupported(rel)))  # hidden files (.DS_Store) are no data
        if not found:
            raise DataError(f"empty class folder (no image files): {split_dir / name}")
        files[name] = found
    return files


def unsupported(rel: str) -> str:
    ext = os.path.splitext(rel)[1].lower()
    return f"unsupported extension {ext}" if ext else "no image extension"


def note_ignored(source: Source) -> Source:
    """Say once per process and dataset how many files the source does not read, naming
    them (up to 5): a .gif left out, or a tar's repeated key, changes what is trained on."""
    if source.ignored and source.data not in _noted:
        _noted.add(source.data)
        names = ", ".join(f"{n} ({why})" for n, why in source.ignored[:5])
        more = f" and {len(source.ignored) - 5} more" if len(source.ignored) > 5 else ""
        log.warning("%s: %d file(s) ignored: %s%s", source.data, len(source.ignored), names, more)
    return source


_noted: set[str] = set()


def _walk_within(class_dir: Path) -> list[str]:
    """Files under `class_dir`, following a linked folder only when it resolves inside the
    class folder and was not seen yet: a link out of the class (into another class, or out of
    the dataset) or back up into itself would count images twice or under the wrong label."""
    real = os.path.realpath(class_dir)
    seen, found, stack = {real}, [], [str(class_dir)]
    while stack:
        top = stack.pop()
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    target = os.path.realpath(entry.path)
                    inside = target == real or target.startswith(real + os.sep)
                    if inside and target not in seen:
                        seen.add(target)
                        stack.append(entry.path)
                elif entry.is_file():
                    found.append(entry.path)
    return found


def _imagefolder(data: str, root: Path, skip: dict[str, str]) -> Source:
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"missing train folder: {train_dir} (expected ROOT/train/<class>/*)")
    ignored: list[tuple[str, str]] = []
    train_files = _class_files(train_dir, ignored)
    classes = list(train_files)
    per_split = {"train": train_files}
    if (root / "val").is_dir():
        val_files = _class_files(root / "val", ignored)
        unknown = sorted(set(val_files) - set(classes))
        if unknown:
            raise DataError(f"val class not in train: {root / 'val' / unknown[0]}")
        per_split["val"] = val_files
    splits: dict[str, Split] = {}
    for name, files in per_split.items():
        paths, labels = [], []
        for label, cls in enumerate(classes):
            kept = [p for p in files.get(cls, []) if p not in skip]
            paths += kept
            labels += [label] * len(kept)
        real_root = os.path.realpath(root)
        for p in paths:
            resolve_inside(root, p, real_root)
        sizes = [os.path.getsize(root / p) for p in paths]
        splits[name] = FileSplit(root, paths, labels, sizes)
    skipped = sorted(skip.items())
    return Source(data, classes, splits, skipped=skipped, ignored=ignored)


def _imagefolder_url(data: str, root: Root, skip: dict[str, str]) -> Source:
    """An imagefolder behind a URL: the same layout, listed once (with sizes) per split."""
    if not root.fs.isdir(root.path("train")):
        raise DataError(f"missing train folder: {root.location}/train")
    ignored: list[tuple[str, str]] = []
    per_split = {
        s: _url_class_files(root, s, ignored) for s in SPLITS if root.fs.isdir(root.path(s))
    }
    classes = list(per_split["train"])
    unknown = sorted(set(per_split.get("val", {})) - set(classes))
    if unknown:
        raise DataError(f"val class not in train: {root.location}/val/{unknown[0]}")
    splits: dict[str, Split] = {}
    for name, files in per_split.items():
        kept = [(label, p, n) for label, c in enumerate(classes) for p, n in files.get(c, [])]
        kept = [(label, p, n) for label, p, n in kept if p not in skip]
        labels, paths, sizes = (list(x) for x in zip(*kept, strict=True)) if kept else ([],) * 3
        splits[name] = FileSplit(root, paths, labels, sizes)
    return Source(data, classes, splits, skipped=sorted(skip.items()), ignored=ignored)


def _url_class_files(
    root: Root, split: str, ignored: list[tuple[str, str]]
) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for path, info in sorted(root.fs.find(root.path(split), detail=True).items()):
        rel = root.relative(path)
        parts = rel.split("/")
        if len(parts) >= 3 and rel.lower().endswith(IMAGE_EXTENSIONS):
            found.setdefault(parts[1], []).append((rel, int(info["size"])))
        elif len(parts) >= 3 and not parts[-1].startswith("."):
            ignored.append((rel, unsupported(rel)))
    if not found:
        raise DataError(f"no class folders with images in {root.location}/{split}")
    return dict(sorted(found.items()))


def _cifar(data: str, kind: str, root: Path, download: bool) -> Source:
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    if not root.is_dir() and not download:
        raise DataError(f"dataset root not found: {root}")
    try:
        train = cls(str(root), train=True, download=download)
        val = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(
            f"{kind} not found under {root} ({exc}): put torchvision's {kind} files there "
            "(e.g. cifar-10-batches-py/), downloaded once by torchvision.datasets"
        ) from None
    splits = {
        "train": ArraySplit(np.asarray(train.data), np.asarray(train.targets)),
        "val": ArraySplit(np.asarray(val.data), np.asarray(val.targets)),
    }
    return Source(data, list(train.classes), splits, default_input_size=32, default_recipe="small")
