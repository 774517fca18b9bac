"""Finishing cost on a device: ms per 224² batch (DeiT recipe, erasing raised to 0.5, every
pair mixed), and whether CUDA's finished bytes equal the CPU's. `python finish_bench.py`."""

from __future__ import annotations

import time

import torch

from deit_pipe.data import MixConfig, PairDataset, ViewConfig, collate_views, finish, open_source
from deit_pipe.data import plan as make_plan


def main(pairs: int = 128, repeats: int = 10) -> None:
    src = open_source(f"fake:{2 * pairs}:256")
    cfg = ViewConfig.for_source(src, input_size=224, re_prob=0.5, re_count=1, re_mode="pixel")
    split = src.split("train")
    ds = PairDataset(split, make_plan(0, 0, len(split), 1, MixConfig(), 224), cfg)
    batch = collate_views([ds[p] for p in range(pairs)])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = {}
    for name in devices:
        dev = torch.device(name)
        if name == "cuda":
            batch = batch.pin_memory()
        out[name] = finish(batch, cfg, dev).cpu()  # warm-up
        sync = torch.cuda.synchronize if name == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            finish(batch, cfg, dev)
        sync()
        ms = 1000 * (time.perf_counter() - start) / repeats
        print(
            f"{name}: finish {2 * pairs} views at 224² in {ms:.2f} ms "
            f"({ms / (2 * pairs):.3f} ms/view)"
        )
    if "cuda" in out:
        same = torch.equal(out["cpu"].view(torch.int32), out["cuda"].view(torch.int32))
        print(f"CUDA ({torch.cuda.get_device_name(0)}) finished bytes == CPU's: {same}")


if __name__ == "__main__":
    main()
