"""Eval harness: pass rates of generator versions (before / after fine-tuning, or any folder of outputs),
with bootstrap intervals over products, paired differences, and a self-contained HTML report.

`hfpc eval run --config configs/eval/tiny.yaml` (see __main__.py). The repo folder `eval/` installs as
the package `hfpc_eval`.
"""
