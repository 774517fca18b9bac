"""What replay costs in accuracy (`make bench-replay`): stored epochs, top-k and online
distillation side by side on digits.

Beyer et al. (CVPR 2022) report that students trained on precomputed teacher outputs
overfit the finite set of stored views. Here, with exact replay, every row trains the same
student for T epochs of the `small` recipe from the demo's regnety_002 teacher:
  online hard (the teacher on every step's views), offline hard and soft (τ 3, k 10) from
  stores of E ∈ {60, 20, 6, 2, 1} epochs replayed cyclically (`--cycle-epochs`: stored
  epoch e mod E), soft with k ∈ {1, 3, 5} at E = 20 (k = 10 is all of digits' classes),
  and no distillation, over several training seeds. Every store is verified
  (`verify --all`) before its students train.

Writes benchmarks/replay.json, the table in BENCHMARKS.md and benchmarks/replay.png.
`--small` (the CI test): 2 seeds × 2 rows × 2 epochs of a tiny student, into `--out`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from report import record_section  # noqa: E402
from run_all import machine  # noqa: E402

from deit_pipe.demo import STUDENT, DemoConfig, store_job, train_teacher  # noqa: E402
from deit_pipe.pipeline.precompute import precompute  # noqa: E402
from deit_pipe.pipeline.request import StoreRequest  # noqa: E402
from deit_pipe.pipeline.verify import verify  # noqa: E402
from deit_pipe.storage import TargetStore, summarize  # noqa: E402
from deit_pipe.student.train import TrainConfig, train  # noqa: E402
from deit_pipe.teacher import TeacherConfig  # noqa: E402

TITLE = "## What replay costs in accuracy: stored epochs, top-k, online (`make bench-replay`)"
HERE = Path(__file__).parent


@dataclass(frozen=True)
class Plan:
    epochs: int  # T, the students' training epochs
    seeds: tuple[int, ...]
    stored: tuple[int, ...]  # E of the offline rows
    ks: tuple[int, ...]  # soft top-k at E = k_epochs
    k_epochs: int
    teacher_epochs: int
    student: dict
    rows: tuple[str, ...] | None = None  # all rows, or these


FULL = Plan(60, (0, 1, 2), (60, 20, 6, 2, 1), (1, 3, 5), 20, 15, STUDENT)
SMALL = Plan(
    2, (0, 1), (1,), (), 1, 1, dict(img_size=32, patch_size=8, depth=1, embed_dim=32,
                                    num_heads=2), rows=("online hard", "hard E=1"),
)  # fmt: skip


def rows(plan: Plan, stores: dict[tuple[int, int], str], ckpt: Path) -> dict[str, dict]:
    """Row name → how its students train: store (or online teacher), distillation, model."""
    distilled = "deit_tiny_distilled_patch16_224"
    table = {"online hard": dict(store=None, distill="hard", model=distilled, teacher=ckpt)}
    for distill in ("hard", "soft"):
        for e in plan.stored:
            table[f"{distill} E={e}"] = dict(
                store=stores[(e, 10)], distill=distill, model=distilled
            )
    for k in plan.ks:
        table[f"soft k={k} E={plan.k_epochs}"] = dict(
            store=stores[(plan.k_epochs, k)], distill="soft", model=distilled
        )
    table["no distillation"] = dict(
        store=stores[(max(plan.stored), 10)], distill="none", model="deit_tiny_patch16_224"
    )
    return {n: r for n, r in table.items() if plan.rows is None or n in plan.rows}


def config(plan: Plan, name: str, row: dict, seed: int, out: Path, recipe: dict) -> TrainConfig:
    common = dict(
        out=str(out / f"{name.replace(' ', '_').replace('=', '')}-{seed}"),
        model=row["model"],
        model_overrides=plan.student,
        distill=row["distill"],
        epochs=plan.epochs,
        warmup_epochs=min(5, plan.epochs / 4),
        batch_size=64,
        eval_every=plan.epochs,
        train_seed=seed,
        device="cpu",
    )
    if row["store"] is None:  # online: the same views (the store's recipe), the teacher live
        teacher = TeacherConfig("regnety_002", str(row["teacher"]))
        return TrainConfig(data="digits", recipe=recipe, teacher=teacher, **common)
    return TrainConfig(store=row["store"], cycle_epochs=True, **common)


def _train_one(cfg: TrainConfig) -> dict:
    import torch

    torch.set_num_threads(1)  # two runs side by side on the two cores
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    head = "avg" if "avg" in result else "cls"
    records = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    last = [r["loss"] for r in records if "loss" in r and r["epoch"] == cfg.epochs - 1]
    return {"top1": result[head]["top1"], "seconds": seconds, "last_epoch_loss": np.mean(last)}


def make_stores(plan: Plan, work: Path, ckpt: Path) -> tuple[dict, dict]:
    """Every store the rows read, each verified whole; (stores, their facts)."""
    wanted = {(e, 10) for e in plan.stored} | {(plan.k_epochs, k) for k in plan.ks}
    stores, facts = {}, {}
    for e, k in sorted(wanted):
        url = str(work / f"store-E{e}-k{k}.zarr")
        made = precompute(store_job(url, ckpt), StoreRequest(epochs=e, k=k), workers=0)
        checked = verify(url, all_views=True, device="cpu")
        assert checked.ok, f"{url}: {checked.mismatches} views differ"
        info = summarize(TargetStore(url))
        train_views = made.views - TargetStore(url).spec.views("val")
        images = train_views // e
        facts[(e, k)] = {
            "bytes_per_image": info["bytes_per_view"] * train_views / images,
            "teacher_passes": train_views,
            "verified_views": checked.checked,
        }
        stores[(e, k)] = url
    return stores, facts


def run(plan: Plan, work: Path) -> dict:
    t0 = time.perf_counter()
    train_teacher(work / "teacher", DemoConfig(out=str(work), teacher_epochs=plan.teacher_epochs))
    ckpt = work / "teacher" / "checkpoint.pt"
    stores, facts = make_stores(plan, work, ckpt)
    recipe = TargetStore(next(iter(stores.values()))).spec.recipe
    table = rows(plan, stores, ckpt)
    jobs = [(n, s) for s in plan.seeds for n in table]
    configs = [config(plan, n, table[n], s, work / "runs", recipe) for n, s in jobs]
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
        results = list(pool.map(_train_one, configs))
    train_images = None
    out: dict = {"plan": {**plan.__dict__, "student": plan.student}, "rows": {}}
    for name, row in table.items():
        got = [r for (n, _), r in zip(jobs, results, strict=True) if n == name]
        key = next((k for k, url in stores.items() if url == row["store"]), None)
        if key is not None:
            train_images = facts[key]["teacher_passes"] // key[0]
        out["rows"][name] = {
            "top1": [g["top1"] for g in got],
            "seconds": [g["seconds"] for g in got],
            "last_epoch_loss": [g["last_epoch_loss"] for g in got],
            "distill": row["distill"],
            "stored_epochs": key[0] if key else None,
            "k": key[1] if key else None,
            "bytes_per_image": facts[key]["bytes_per_image"] if key else 0.0,
            "teacher_passes": facts[key]["teacher_passes"] if key else None,
        }
    online = out["rows"].get("online hard")
    if online is not None and train_images:
        online["teacher_passes"] = plan.epochs * train_images
    out["wall_seconds"] = time.perf_counter() - t0
    out["machine"] = machine()
    return out


def probe(work: Path, seed: int = 0) -> dict:
    """Is a student of few stored epochs memorising them? Its hard-distillation loss (the
    averaged heads, eval mode) on the views it replayed — stored epoch 0 — against views of
    the same images it never saw — epoch T − 1 of the plan, with their teacher targets —
    beside the online student's (it saw both)."""
    import torch

    import deit_pipe as dp
    from deit_pipe.student.runs import load_run

    stores = sorted(work.glob("store-E*-k10.zarr"), key=lambda p: -int(p.name[7:].split("-")[0]))
    full = stores[0]  # the most epochs: epoch T - 1 is there
    store = dp.open_store(full)
    last = store.epochs - 1
    criterion = dp.distillation_loss("hard")
    out = {}
    for name in ("hard E=1", "hard E=2", "hard E=6", "hard E=20", "online hard"):
        run = work / "runs" / f"{name.replace(' ', '_').replace('=', '')}-{seed}"
        if not (run / "checkpoint.pt").exists():
            continue
        model = load_run(run).model().eval()
        losses = {}
        for label, epoch in (("replayed", 0), ("fresh", last)):
            kw = dict(batch_size=256, epochs=store.epochs, device="cpu", distill="hard")
            loader = dp.ReplayLoader(store, **kw)
            loader.load_state_dict({**loader.state_dict(), "step": epoch * loader.per_epoch})
            total, count = 0.0, 0
            with torch.no_grad():
                for batch in loader:
                    if batch.epoch != epoch:
                        break
                    outputs = model(batch.images)
                    loss, _ = criterion(outputs, batch.label_targets, None, batch.teacher_hard)
                    total, count = total + loss.item() * len(batch), count + len(batch)
            loader.close()
            losses[label] = total / count
        out[name] = losses
    store.close()
    return out


def table_text(result: dict, command: str) -> str:
    rows_ = result["rows"]
    anchor = np.array(rows_["online hard"]["top1"])
    m = result["machine"]
    plan = result["plan"]
    lines = [
        TITLE,
        "",
        f"`{command}` on {m['cpu']} ({m['cores']} cores), {m['date']}, "
        f"{result['wall_seconds'] / 60:.0f} min wall. Digits, the `small` recipe, the demo's "
        f"regnety_002 teacher ({plan['teacher_epochs']} epochs), students {plan['student']} "
        f"(DeiT⚗ with a distillation token; the last row a ViT without one), "
        f"T = {plan['epochs']} epochs, batch 64, seeds {tuple(plan['seeds'])}; val top-1 of "
        "the averaged heads. Offline rows replay stored epoch e mod E; every store was "
        "verified whole (`verify --all`) first. Gap: offline − online, in points and in "
        "online's standard deviations. The last epoch's mean training loss shows "
        "memorisation: replayed views get easier.",
        "",
        "| row | top-1 % (mean ± std) | gap (points) | gap (std) | stored bytes / train image "
        "| teacher passes | last-epoch train loss | wall s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    std = max(float(anchor.std(ddof=1)), 1e-9) if len(anchor) > 1 else float("nan")
    for name, r in rows_.items():
        top = np.array(r["top1"]) * 100
        gap = top.mean() - anchor.mean() * 100
        spread = f"{top.std(ddof=1):.1f}" if len(top) > 1 else "–"
        teacher = r["distill"] != "none"  # a plain student reads no targets
        passes = f"{r['teacher_passes']:,}" if teacher and r["teacher_passes"] else "0"
        stored = r["bytes_per_image"] if teacher else 0.0
        lines.append(
            f"| {name} | {top.mean():.1f} ± {spread} | {gap:+.1f} | {gap / (std * 100):+.1f} "
            f"| {stored:,.0f} | {passes} | {np.mean(r['last_epoch_loss']):.3f} "
            f"| {np.mean(r['seconds']):.0f} |"
        )
    if result.get("probe"):
        lines += [
            "",
            "Memorisation (`probe`, seed 0): each hard student's hard-distillation loss (its "
            "averaged heads, eval mode) on the views it replayed (stored epoch 0) and on views "
            f"of the same images it never saw (epoch {plan['epochs'] - 1} of the plan, with "
            "their teacher targets):",
            "",
            "| student | loss on replayed views | loss on fresh views | fresh − replayed |",
            "|---|---|---|---|",
        ]
        for name, p in result["probe"].items():
            gap = p["fresh"] - p["replayed"]
            lines.append(f"| {name} | {p['replayed']:.3f} | {p['fresh']:.3f} | {gap:+.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_ = result["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    online = np.array(rows_["online hard"]["top1"]) * 100
    ax.axhspan(online.mean() - online.std(ddof=1), online.mean() + online.std(ddof=1),
               color="grey", alpha=0.3, label="online hard (± std)")  # fmt: skip
    for distill, colour in (("hard", "tab:blue"), ("soft", "tab:orange")):
        pts = sorted(
            (r["stored_epochs"], np.array(r["top1"]) * 100)
            for n, r in rows_.items()
            if n.startswith(f"{distill} E=")
        )
        if pts:
            es, tops = [e for e, _ in pts], [t for _, t in pts]
            means, stds = [t.mean() for t in tops], [t.std(ddof=1) for t in tops]
            ax.errorbar(
                es,
                means,
                yerr=stds,
                marker="o",
                color=colour,
                capsize=3,
                label=f"offline {distill}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("stored epochs E (replayed cyclically)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"Replay vs online distillation, T = {result['plan']['epochs']} epochs, digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description="What replay costs in accuracy")
    p.add_argument("--small", action="store_true", help="the CI check: a few seconds of runs")
    p.add_argument("--out", type=Path, default=None, help="work folder [a temporary one]")
    p.add_argument(
        "--probe-only",
        action="store_true",
        help="the memorisation probe alone, on --out of an earlier run (replay.json kept)",
    )
    args = p.parse_args()
    plan = SMALL if args.small else FULL
    work = args.out or Path(tempfile.mkdtemp(prefix="deit-pipe-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = HERE / "replay.json"
    result = json.loads(saved.read_text()) if args.probe_only else run(plan, work)
    if not args.small:
        result["probe"] = probe(work)
    command = "python benchmarks/replay_accuracy.py" + (" --small" if args.small else "")
    text = table_text(result, command)
    target = work if args.small else HERE
    (target / "replay.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    plot(result, target / "replay.png")
    if not args.small:
        record_section("replay", text)
    print(text)


if __name__ == "__main__":
    main()
