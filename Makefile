# Quick start: `make demo` (main job end to end, offline) and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: venv demo test test-slow test-gpu lint clean

$(BIN)/hfpc: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(BIN)/hfpc

venv: $(BIN)/hfpc

demo: venv
	$(BIN)/python -m hfpc_reward.demo --out outputs/demo

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

test-gpu: venv
	$(BIN)/python -m pytest -q -m gpu

lint: venv
	$(BIN)/ruff check hfpc_reward finetune eval tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
