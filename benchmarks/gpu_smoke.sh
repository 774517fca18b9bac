#!/usr/bin/env bash
# CUDA smoke run of the whole pipeline on digits: precompute on CPU and on CUDA (the two
# stores' targets compared), verify, offline students (hard, soft, none), an online
# student, eval and audit — every stage on the GPU. Usage: benchmarks/gpu_smoke.sh DIR
# (DEIT_PIPE overrides the command, e.g. "python3 -m deit_pipe").
set -uo pipefail
W=${1:-runs/gpu-smoke}
DP=${DEIT_PIPE:-deit-pipe}
rm -rf "$W" && mkdir -p "$W"
T=(--teacher-model regnety_002 --teacher-random-init)
S=(--img-size 32 --patch-size 8 --depth 4 --embed-dim 96 --num-heads 3 --batch-size 64
   --epochs 2 --loader-workers 4 --device ${DEV:-cuda})
fail=0
step() { echo "== $*"; local t0=$SECONDS; "$@" || { echo "!! FAILED: $*"; fail=1; }
         echo "   ($((SECONDS - t0)) s)"; }
step $DP precompute --data digits --out "$W/gpu.zarr" --epochs 2 "${T[@]}" --device ${DEV:-cuda}
step $DP precompute --data digits --out "$W/cpu.zarr" --epochs 2 "${T[@]}" --device cpu --dask-workers 0
step python3 - "$W" <<'PY'
import sys
import numpy as np
from deit_pipe.storage import TargetStore
w = sys.argv[1]
g, c = TargetStore(f"{w}/gpu.zarr"), TargetStore(f"{w}/cpu.zarr")
for split, epoch in (("train", 0), ("train", 1), ("val", 0)):
    a, b = g.read_arrays(epoch, split), c.read_arrays(epoch, split)
    same = np.mean(a["topk_indices"][:, 0] == b["topk_indices"][:, 0])
    dv = np.abs(a["topk_values"][:, 0].astype(np.float32) - b["topk_values"][:, 0]).max()
    print(f"{split} e{epoch}: CUDA bf16 vs CPU fp32 teacher top-1 agree {same:.4f}, "
          f"max |Δ top-1 logit| {dv:.4f}")
PY
step $DP verify "$W/gpu.zarr"
step $DP inspect "$W/gpu.zarr"
for d in hard soft; do
  step $DP train --store "$W/gpu.zarr" --out "$W/$d" --distill $d "${S[@]}"
done
step $DP train --store "$W/gpu.zarr" --out "$W/none" --distill none \
  --model deit_tiny_patch16_224 "${S[@]}"
step $DP train --data digits --preset small --teacher-model regnety_002 --teacher-random-init \
  --out "$W/online" "${S[@]}"
step $DP eval --checkpoint "$W/hard"
step $DP audit --store "$W/gpu.zarr" --run "$W/none" --run "$W/hard" --run "$W/soft" \
  --out "$W/audit"
exit $fail
