"""DDPO fine-tuning of a Stable Diffusion inpainting pipeline with LoRA, rewarded by HFPC (or any reward).

`hfpc finetune --config configs/finetune/ddpo_sd_inpaint.yaml [section.field=value ...] [--resume | --overwrite]`,
or `accelerate launch -m hfpc_finetune ...` on several GPUs / nodes. From Python: `hfpc_finetune.train(config)`.
The repo folder `finetune/` installs as the package `hfpc_finetune`.
"""

from hfpc_finetune.config import FinetuneConfig


def train(config: FinetuneConfig, resume: bool = False, overwrite: bool = False):
    """Run a fine-tune; returns a RunSummary (first / last epoch reward, output folder, LoRA folder)."""
    from hfpc_finetune.trainer import train as _train

    return _train(config, resume=resume, overwrite=overwrite)


__all__ = ["FinetuneConfig", "train"]
