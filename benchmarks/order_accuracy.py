"""Does the block order's narrower shuffle cost accuracy? (`make bench-order`)

The digits set written as Hub-layout Parquet with 32-image row groups (45 blocks), a ViT
(the demo's student, no teacher) trained with `--order global` and with `--order blocks:4`
(windows of 128 of the 1,437 training images), 3 plan/training seeds each. Reports mean ±
std of the final val top-1 per order and whether the gap is within seed noise.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from report import record_section  # noqa: E402
from run_all import machine  # noqa: E402

from deit_pipe.data import open_source  # noqa: E402
from deit_pipe.student.train import TrainConfig, train  # noqa: E402

SEEDS, EPOCHS, ROW_GROUP, WINDOW = (0, 1, 2), 12, 32, 4
STUDENT = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}
TITLE = "## Global vs block order: accuracy on digits (`make bench-order`)"


def write_digits_parquet(out: Path) -> None:
    """Digits (its seeded split, in index order) as data/{train,validation}-*.parquet, PNG."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = open_source("digits")
    for split, name in (("train", "train"), ("val", "validation")):
        data = source.split(split)
        images = []
        for i in range(len(data)):
            buf = io.BytesIO()
            data.load(i).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
        table = pa.table({"image": images, "label": data.labels.tolist()})
        path = out / "data" / f"{name}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=ROW_GROUP)


def run(data: str, order: str, seed: int, out: Path) -> float:
    from deit_pipe.cli import RECIPE_FLAGS, build_recipe

    source = open_source(data)
    opts = {k: None for k in ("recipe", "scale_min")}
    opts.update({flag: None for flag in RECIPE_FLAGS}, seed=seed, order=order)
    opts.update(recipe="small", input_size=32, hflip=0.0)  # as `digits` itself defaults
    recipe = build_recipe(source, opts).to_dict()
    cfg = TrainConfig(
        out=str(out),
        data=data,
        recipe=recipe,
        model="deit_tiny_patch16_224",
        model_overrides=STUDENT,
        distill="none",
        epochs=EPOCHS,
        warmup_epochs=5,
        batch_size=64,
        seed=seed,
        device="cpu",
        eval_every=EPOCHS,
    )
    result = train(cfg)
    return float(next(iter(result.values()))["top1"])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="deit-pipe-order-"))
    write_digits_parquet(work / "pq")
    data = f"parquet:{work / 'pq'}"
    top1: dict[str, list[float]] = {"global": [], f"blocks:{WINDOW}": []}
    for seed in SEEDS:
        for order in top1:
            top1[order].append(run(data, order, seed, work / f"{order}-{seed}"))
            print(order, seed, top1[order][-1], flush=True)
    g, b = (np.array(v) for v in top1.values())
    noise = max(g.std(ddof=1), b.std(ddof=1))
    gap = b.mean() - g.mean()
    m = machine()
    lines = [
        TITLE,
        "",
        f"Digits as Parquet ({ROW_GROUP}-image row groups), ViT {STUDENT} without a teacher, "
        f"{EPOCHS} epochs of the `small` recipe, batch 64, seeds {SEEDS} (plan and training). "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['date']}.",
        "",
        "| order | val top-1 per seed | mean ± std |",
        "|---|---|---|",
        *(
            f"| {order} | {' / '.join(f'{v:.3f}' for v in vals)} | "
            f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f} |"
            for order, vals in top1.items()
        ),
        "",
        f"Gap (blocks − global): {gap:+.3f}; seed noise (largest std): {noise:.3f} → "
        + ("within seed noise." if abs(gap) <= 2 * noise else "larger than seed noise."),
    ]
    record_section("order", "\n".join(lines))
    (Path(__file__).parent / "order.json").write_text(json.dumps(top1, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
