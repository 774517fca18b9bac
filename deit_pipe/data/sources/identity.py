"""What a store or a run records about its dataset, and whether another copy can replay it.

Two identities: `Source.fingerprint()` (the layout's own: paths and sizes where it has
them, so it changes when a file does) and `content_fingerprint` (classes, labels, the
count and the bytes of a few images spread over each split, whatever holds them): the same
images as an imagefolder, Parquet or WebDataset tars have one content fingerprint, so a
store made from one replays from another. A store in the block order also records its
training split's block layout, which the plan depends on.
"""

from __future__ import annotations

import hashlib

import numpy as np

from deit_pipe.data.sources.source import Source
from deit_pipe.data.sources.split import Split


def content_fingerprint(source: Source) -> str:
    """The labels and a few images' bytes: the same whether the images are files or shards."""
    return source.digest("content")


def block_layout(split: Split) -> dict:
    """The training split's blocks as the block order sees them: count and digest."""
    blocks = split.blocks()
    digest = hashlib.blake2b(np.asarray(blocks, "<i8").tobytes(), digest_size=16).hexdigest()
    return {"unit": split.block_unit, "count": len(blocks), "digest": digest}


def dataset_record(source: Source, splits, order: str) -> dict:
    """The store's `dataset` entry."""
    record = {
        "spec": source.data,
        "fingerprint": source.fingerprint(),
        "content": content_fingerprint(source),
        "classes": source.classes,
        "num_samples": {s: len(source.split(s)) for s in splits},
    }
    if order != "global":
        record["blocks"] = block_layout(source.split("train"))
    return record


def same_dataset(
    recorded_fingerprint: str, recorded_content: str | None, recorded_spec: str, source: Source
) -> bool:
    """Whether `source` holds the data recorded: the same fingerprint, or — in another kind
    of layout only (files against Parquet against tars) — the same content. Within one
    kind the fingerprint is already path-free, and stricter (every file's size)."""
    if recorded_fingerprint == source.fingerprint():
        return True
    other_kind = recorded_spec.partition(":")[0] != source.data.partition(":")[0]
    return (
        other_kind
        and recorded_content is not None
        and recorded_content == content_fingerprint(source)
    )


def dataset_problem(recorded: dict, source: Source, where: str) -> str | None:
    """One line saying why `source` cannot replay what `where` recorded, or None."""
    if not same_dataset(recorded["fingerprint"], recorded.get("content"), recorded["spec"], source):
        return (
            f"{where} was made for dataset {recorded['spec']} (fingerprint "
            f"{recorded['fingerprint'][:12]}), not this one ({source.fingerprint()[:12]})"
        )
    return blocks_problem(recorded, source, where)


def blocks_problem(recorded: dict, source: Source, where: str) -> str | None:
    """One line saying why `source`'s blocks cannot replay `where`'s block order, or None."""
    theirs = recorded.get("blocks")
    if theirs is not None and "train" in source.splits:
        ours = block_layout(source.split("train"))
        if (ours["count"], ours["digest"]) != (theirs["count"], theirs["digest"]):
            return (
                f"{where} was planned in block order over {theirs['count']:,} blocks "
                f"({theirs['unit']}); {source.data} splits the same images into "
                f"{ours['count']:,} other blocks ({ours['unit']}), so its epochs would put "
                "other samples in the stored slots: replay from data with the same blocks"
            )
    return None
