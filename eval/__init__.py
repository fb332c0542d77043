"""Eval harness: pass rates of generator versions (before / after fine-tuning, or any folder of outputs),
with bootstrap intervals over products, paired differences, and a self-contained HTML report.

Run from a checkout: `python -m eval run --config configs/eval/tiny.yaml` (see eval/__main__.py).
"""
