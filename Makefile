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

# The main job end to end on tiny random models, offline (a few minutes on a CPU): sample product pairs,
# check product consistency (with overlays), train the tiny reward model on the pairs' pass/fail labels,
# score the pairs with both judges, DDPO-fine-tune the tiny inpainting pipeline with LoRA, then evaluate
# base vs LoRA and write the HTML report. Every run starts from a clean outputs/demo; the tiny kit lives in
# outputs/tiny, the one place every tiny config (configs/*/tiny*.yaml) reads it from.
DEMO := outputs/demo
TINY := outputs/tiny
demo: venv
	rm -rf $(DEMO)
	$(BIN)/hfpc tiny-models $(TINY) --only reward_model sd_inpaint
	$(BIN)/hfpc sample-data $(DEMO)/pairs --pairs 96 --products 0 --size 128
	$(BIN)/hfpc check --manifest $(DEMO)/pairs/manifest.jsonl --out $(DEMO)/check/results.jsonl --overlays $(DEMO)/check/overlays
	$(BIN)/hfpc train-reward --config $(TINY)/reward_tiny.yaml data.train_manifest=$(DEMO)/pairs/manifest.jsonl training.out_dir=$(DEMO)/reward
	$(BIN)/hfpc score --manifest $(DEMO)/pairs/manifest.jsonl --out $(DEMO)/score/results.jsonl reward_model.path=$(DEMO)/reward/model
	$(BIN)/hfpc finetune --config $(TINY)/finetune_tiny.yaml run.out_dir=$(DEMO)/finetune
	$(BIN)/hfpc eval run --config configs/eval/tiny.yaml scorer.reward_model.path=$(DEMO)/reward/model
	@echo "consistency overlays: $(DEMO)/check/overlays   eval report: $(DEMO)/eval/report.html"

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

test-gpu: venv
	$(BIN)/python -m pytest -q -m gpu

lint: venv
	$(BIN)/ruff check hfpc_reward finetune eval tests benchmarks
	$(BIN)/ruff format --check hfpc_reward finetune eval tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
