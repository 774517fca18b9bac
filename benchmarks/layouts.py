"""An imagefolder dataset rewritten in the other layouts deit-pipe reads (Hub Parquet,
WebDataset tars): for the loader benchmark and the dataset tests, which import it from here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def imagefolder_samples(root: Path, split: str) -> list[tuple[str, bytes, int]]:
    """(class, file bytes, label) of an imagefolder split, in the order deit-pipe lists it."""
    classes = sorted(d.name for d in (root / "train").iterdir())
    return [
        (c, path.read_bytes(), label)
        for label, c in enumerate(classes)
        for path in sorted((root / split / c).iterdir())
    ]


def write_parquet(root: Path, out: Path, shards: int = 2, row_group: int = 4) -> None:
    """`root` (an imagefolder) as the Hugging Face Hub lays out an image dataset."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    classes = sorted(d.name for d in (root / "train").iterdir())
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    for split, name in (("train", "train"), ("val", "validation")):
        if not (root / split).is_dir():
            continue
        samples = imagefolder_samples(root, split)
        parts = np.array_split(np.arange(len(samples)), shards)
        for i, part in enumerate(parts):
            image = [{"bytes": samples[j][1], "path": f"{j}.jpg"} for j in part]
            table = pa.table({"image": image, "label": [samples[j][2] for j in part]})
            path = out / "data" / f"{name}-{i:05d}-of-{shards:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.replace_schema_metadata(meta), path, row_group_size=row_group)


def write_wds(root: Path, out: Path, shards: int = 2) -> None:
    """`root` (an imagefolder) as WebDataset shards: KEY.jpg + KEY.cls per sample."""
    import tarfile

    for split in ("train", "val"):
        if not (root / split).is_dir():
            continue
        samples = imagefolder_samples(root, split)
        for i, part in enumerate(np.array_split(np.arange(len(samples)), shards)):
            out.mkdir(parents=True, exist_ok=True)
            with tarfile.open(out / f"{split}-{i:06d}.tar", "w") as tar:
                for j in part:
                    for ext, data in (("jpg", samples[j][1]), ("cls", str(samples[j][2]).encode())):
                        member = tarfile.TarInfo(f"{j:06d}.{ext}")
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
