# The two commands a fresh machine needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deit-pipe-installed

.PHONY: setup test demo lint bench bench-cli bench-render bench-scale bench-gpu bench-feed gpu-smoke gpu-check table3 table4 bench-finetune bench-ensemble bench-data bench-order bench-replay bench-corpus clean

setup: $(STAMP)

# torch/torchvision are pinned first so pip takes them from the machine's local wheels.
# constraints.txt pins the releases that decide a view's bytes (Pillow, timm); the install
# compiles csrc/jpeg_region.c and csrc/jpeg_blocks.c (setup.py): a JPEG crop decoded alone, or to its DCT blocks.
$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard csrc/*.c csrc/*.h)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/deit-pipe demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check deit_pipe tests benchmarks examples
	$(BIN)/ruff format --check deit_pipe tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/cli_bench.py

bench-render: $(STAMP)
	$(BIN)/python benchmarks/render_bench.py
	$(BIN)/python benchmarks/device_render_bench.py

bench-cli: $(STAMP)
	$(BIN)/python benchmarks/cli_bench.py

# Offline vs online distillation at 224² (RegNetY-16GF teacher, DeiT-S/Ti students).
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale_bench.py

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/scale_bench.py --gpu --batch 256 --steps 20 --warmup 5 --loader-workers 8

# Views/s into a DeiT-S⚗ student with 8 loader workers, --render host vs device (CUDA).
bench-feed: $(STAMP)
	$(BIN)/python benchmarks/feed_bench.py

# Every stage on CUDA over digits (a CUDA machine only).
gpu-smoke: $(STAMP)
	PATH=$(BIN):$$PATH benchmarks/gpu_smoke.sh runs/gpu-smoke

# Every CUDA check in one run (a borrowed GPU machine): portability tests, finishing bytes,
# the smoke run and bench-gpu; logs in runs/gpu-check.
gpu-check: $(STAMP)
	PATH=$(BIN):$$PATH benchmarks/gpu_check.sh runs/gpu-check

# Tables 3 and 4 come from the same runs: one script writes both.
table3 table4: $(STAMP)
	$(BIN)/python benchmarks/paper_tables.py

bench-finetune: $(STAMP)
	$(BIN)/python benchmarks/finetune_bench.py

# One teacher or a two-teacher ensemble (one store), DeiT⚗ students, 3 seeds.
bench-ensemble: $(STAMP)
	$(BIN)/python benchmarks/ensemble_bench.py

bench-data: $(STAMP)
	$(BIN)/python benchmarks/data_bench.py

bench-order: $(STAMP)
	$(BIN)/python benchmarks/order_accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache

# Stored epochs, top-k and online distillation side by side: what replay costs in accuracy.
bench-replay: $(STAMP)
	$(BIN)/python benchmarks/replay_accuracy.py

# Pillow's own test images (odd, damaged, every format) through scan, precompute --render device, verify --render host.
bench-corpus: $(STAMP)
	$(BIN)/python benchmarks/corpus_check.py
