# Two set-up commands: `make demo` and `make test`. Both build .venv on first use and reuse it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.eagle-align-installed

.PHONY: demo test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Torch first, then the package with the extras the tests use, both at the versions method_comparison/ measures with
# (constraints.txt: results are deterministic for fixed versions only).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,quant,deepspeed,tensorboard,grpo]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/eagle-align demo

# One thread per test worker (two workers on two cores): torch's own threads on top would oversubscribe the
# cores, and the tests that start training subprocesses would slow each other several-fold.
test: $(STAMP)
	@start=$$(date +%s); \
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --timeout 900 tests; rc=$$?; \
	echo "make test: $$(( $$(date +%s) - start ))s"; exit $$rc

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs
