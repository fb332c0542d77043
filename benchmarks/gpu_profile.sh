#!/usr/bin/env bash
# Issue 15's GPU profile in one command, on a machine with one CUDA GPU and the project's venv:
#     bash benchmarks/gpu_profile.sh [OUT_DIR]        (default outputs/gpu_profile; about 10 minutes)
# 1. DDPO at SD-1.5 sizes (random weights, fp16, 512 px, 50 steps, CFG 5): seconds per sample for sampling,
#    reward wait and training, peak memory, without and then with gradient checkpointing;
# 2. HFPCScorer at BLIP-base shapes, 16 originals x 8 generations as one fp16 tensor on the GPU, the classic
#    consistency judge on 16 CPU threads: pairs per second and the per-phase split vs a per-pair loop;
# 3. BLIP's vision tower, eager vs SDPA attention, fp16 on the GPU.
# Each prints its own table; everything is also written to OUT_DIR/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_profile}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
DDPO=(--size sd15 --device cuda --dtype float16 --resolution 512 --steps 50 --batch 8 --guidance 5)
$PY -m benchmarks.ddpo_step "${DDPO[@]}" | tee "$OUT/ddpo.txt"
$PY -m benchmarks.ddpo_step "${DDPO[@]}" --gradient-checkpointing | tee "$OUT/ddpo_checkpointing.txt"
$PY -m benchmarks.scorer_throughput --vision-hidden 768 --vision-layers 12 --image-size 384 \
  --originals 16 --generations 8 --device cuda --dtype float16 --tensors --threads 16 | tee "$OUT/scorer.txt"
$PY -m benchmarks.vision_attention --device cuda --dtype float16 --batch 64 --repeats 10 | tee "$OUT/vision_attention.txt"
