"""The target store: a self-describing Zarr v3 group of teacher top-k logits + Parquet manifest."""

from deit_pipe.storage.epoch import EpochTargets, StoredTargets, dense_soft
from deit_pipe.storage.format import FORMAT_VERSION, StoreSpec
from deit_pipe.storage.inspect import summarize
from deit_pipe.storage.reader import TargetStore
from deit_pipe.storage.writer import StoreWriter, create_store, write_manifest

__all__ = [
    "FORMAT_VERSION",
    "EpochTargets",
    "StoredTargets",
    "StoreSpec",
    "StoreWriter",
    "TargetStore",
    "create_store",
    "dense_soft",
    "summarize",
    "write_manifest",
]
