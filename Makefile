# The two commands a fresh machine needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deit-pipe-installed

.PHONY: setup test demo lint bench table3 clean

setup: $(STAMP)

# torch/torchvision are pinned first so pip takes them from the machine's local wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/deit-pipe demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check deit_pipe tests benchmarks
	$(BIN)/ruff format --check deit_pipe tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

table3: $(STAMP)
	$(BIN)/python benchmarks/table3.py

clean:
	rm -rf $(VENV) runs .pytest_cache
