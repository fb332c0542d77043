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

# The mission in miniature, offline, on a CPU: the mini product-photo world (hfpc world). The committed mini
# generator (assets/mini_world/pipeline, trained by `hfpc world train-generator`) paints backgrounds for train
# products; simulated annotators (the oracle's verdict with 10% label noise) label them; `hfpc train-reward`
# learns the image-referenced reward model from those labels (and an unreferenced ablation); `hfpc finetune`
# fine-tunes a LoRA on the generations the HFPC reward ranks first (reward-filtered); `hfpc eval run`
# compares base vs LoRA on held-out products with HFPC and with the oracle, which no training step sees.
# The held-out labels and the unreferenced ablation need neither the reward model nor the LoRA: they run in
# the background on the second core while the reward model trains and the LoRA fine-tunes (each process on
# one thread, so the numbers do not depend on the overlap). Starts from a clean outputs/demo.
# The random tiny kit (hfpc tiny-models) stays for the unit tests.
DEMO := outputs/demo
WORLD := assets/mini_world
demo: venv
	rm -rf $(DEMO)
	$(BIN)/hfpc world oracle $(DEMO)/oracle.json
	$(BIN)/hfpc world products $(DEMO)/products --split train --count 12
	$(BIN)/hfpc world products $(DEMO)/products --split heldout --count 24 --scenes-per-product 1
	$(BIN)/hfpc world label --pipeline $(WORLD)/pipeline --products $(DEMO)/products/train.jsonl --oracle $(DEMO)/oracle.json --out $(DEMO)/feedback --samples 4 --steps 10 --guidance 4
	@echo "held-out labels and the unreferenced ablation run beside training on the second core: $(DEMO)/ablation.log"
	{ $(BIN)/hfpc world label --pipeline $(WORLD)/pipeline --products $(DEMO)/products/heldout.jsonl --oracle $(DEMO)/oracle.json --out $(DEMO)/feedback_heldout --samples 6 --steps 10 --guidance 4 --label-noise 0 --seed 1 && \
	  $(BIN)/hfpc train-reward --config configs/world/reward.yaml model=$(WORLD)/blip architecture.referenced=false training.out_dir=$(DEMO)/reward_unreferenced && \
	  $(BIN)/hfpc eval-reward --model $(DEMO)/reward_unreferenced/model --manifest $(DEMO)/feedback_heldout/manifest.jsonl --out $(DEMO)/reward_eval/unreferenced.json; \
	} > $(DEMO)/ablation.log 2>&1 & ablation=$$!; trap 'pkill -P $$ablation 2>/dev/null; kill $$ablation 2>/dev/null' EXIT; \
	$(BIN)/hfpc train-reward --config configs/world/reward.yaml model=$(WORLD)/blip && \
	$(BIN)/hfpc finetune --config configs/world/finetune.yaml || exit 1; \
	wait $$ablation || { tail -n 20 $(DEMO)/ablation.log; echo "the ablation branch failed: $(DEMO)/ablation.log"; exit 1; }
	$(BIN)/hfpc eval-reward --model $(DEMO)/reward/model --manifest $(DEMO)/feedback_heldout/manifest.jsonl --out $(DEMO)/reward_eval/referenced.json
	$(BIN)/hfpc eval run --config configs/world/eval.yaml
	$(BIN)/hfpc world summary $(DEMO)

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
