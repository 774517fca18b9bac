#!/usr/bin/env bash
# Every check that needs CUDA, in one run for a borrowed GPU machine with torch already
# installed (python3): the finishing and render-kernel tests (CUDA bytes == CPU bytes ==
# Pillow's), the device stage's ms per view (P7-host), views/s into the student with host
# and device rendering, the CUDA smoke run of precompute → train → audit, and `make
# bench-gpu`. Usage: benchmarks/gpu_check.sh OUTDIR. ONLY=render keeps the rendering steps
# (build, kernel tests, device stage, views/s into the student: 10 minutes at most, boxed).
# Each step is time-boxed so that one slow step still leaves the others' results in OUTDIR.
set -uo pipefail
O=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$O"
export PYTHONUNBUFFERED=1 DEIT_PIPE="python3 -m deit_pipe"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$O/device.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" \
  | tee -a "$O/device.txt"
# The JPEG region decoder (csrc/jpeg_region.c), built in place for this host's Python:
# without a compiler the loader decodes whole images and the region tests below fail.
python3 setup.py -q build_ext --inplace 2>&1 | tail -3 | tee "$O/build.log"
# CUDA bytes == CPU bytes == Pillow's: finishing, the render kernels, the device stage.
timeout ${TESTS_S:-240} python3 -m pytest -q -rA -p no:cacheprovider tests/test_portability.py \
  tests/test_kernels_resample.py tests/test_kernels_ops.py tests/test_device_render.py \
  tests/test_jpeg_region.py tests/test_jpeg_blocks.py 2>&1 | tee "$O/portability.log"
timeout ${RENDER_S:-120} python3 benchmarks/device_render_bench.py --images 64 --rounds 5 \
  2>&1 | tee "$O/device_render.log"
# DeiT-S⚗ offline from one store, 8 loader workers, --render host then device (img_s).
timeout ${FEED_S:-240} python3 benchmarks/feed_bench.py --batch 256 --steps 20 --warmup 5 \
  --loader-workers 8 2>&1 | tee "$O/feed.log"
if [ "${ONLY:-}" = render ]; then
  cp benchmarks/device_render.json benchmarks/feed.json BENCHMARKS.md "$O/" 2>/dev/null
  exit 0
fi
[ -n "${SKIP_FINISH:-}" ] || timeout 120 python3 benchmarks/finish_bench.py 2>&1 | tee "$O/finish.log"
timeout ${SMOKE_S:-240} benchmarks/gpu_smoke.sh /tmp/gpu-smoke 2>&1 | tee "$O/smoke.log"
timeout ${BENCH_S:-240} python3 benchmarks/scale_bench.py --gpu --batch 256 --steps 20 \
  --warmup 5 --loader-workers 8 --render ${RENDER:-host} 2>&1 | tee "$O/bench.log"
cp benchmarks/scale_gpu.json benchmarks/device_render.json benchmarks/feed.json BENCHMARKS.md \
  "$O/" 2>/dev/null
true
