"""LoRA export in diffusers format and the resumable training state (atomic writes).

`save_lora` writes `pytorch_lora_weights.safetensors` (and the model card README.md) that
`StableDiffusionInpaintPipeline.load_lora_weights(dir)` loads: peft key names (the older `lora.down/up` naming of `convert_state_dict_to_diffusers` covers attention
layers only, so a conv LoRA would mix both namings and the loader would drop half) plus the adapter
metadata, so alpha != rank survives. The training state lives in
`state/epoch-NNNN/` (LoRA tensors, optimizer, trainer JSON), written to a temporary folder first, renamed,
and only then named by the `state/latest` pointer (itself replaced atomically), so an interrupt at any
moment leaves the previous complete state in place.

Why not `accelerator.save_state`: the UNet is deliberately not `prepare`d (see ppo.py), so accelerate would
hold the LoRA only as a registered custom object, which it pickles and reloads with `weights_only=False`
(our weights stay safetensors; the optimizer loads with `weights_only=True`), and it writes in place (an
interrupted save would be the "latest" checkpoint). The RNG state it saves is not needed: every draw is
seeded by (run.seed, epoch, sample index).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hfpc_reward.runs import replace_directory

LATEST = "latest"


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA tensors in peft naming (the DDP `module.` prefix never appears: the UNet is not wrapped)."""
    from peft.utils import get_peft_model_state_dict

    return {
        name: tensor.detach().cpu().contiguous() for name, tensor in get_peft_model_state_dict(unet).items()
    }


def save_lora(unet, out_dir: str | Path, card=None) -> Path:
    """Write the LoRA in diffusers format (`pipe.load_lora_weights(out_dir)` loads it), with a model card
    (`huggingface_hub.ModelCard`) as README.md when given."""
    from diffusers import StableDiffusionInpaintPipeline

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionInpaintPipeline.save_lora_weights(
        tmp,
        # peft key names: diffusers' loader reads them for any layer type
        unet_lora_layers=lora_state_dict(unet),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    if card is not None:
        card.save(tmp / "README.md")
    replace_directory(tmp, out)
    return out


def save_state(state_root: str | Path, epoch: int, unet, optimizer, trainer_state: dict) -> Path:
    """Everything needed to continue after `epoch` (the number of finished epochs)."""
    root = Path(state_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f"epoch-{epoch:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(lora_state_dict(unet), tmp / "lora.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "trainer.json").write_text(json.dumps({"epoch": epoch, **trainer_state}))
    replace_directory(tmp, final)
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(state_root: str | Path, unet, optimizer) -> dict | None:
    """Restore LoRA and optimizer from the latest complete state; returns the trainer JSON (None if none)."""
    from peft.utils import set_peft_model_state_dict

    root = Path(state_root)
    if not (root / LATEST).is_file():
        return None
    folder = root / (root / LATEST).read_text().strip()
    result = set_peft_model_state_dict(unet, load_file(folder / "lora.safetensors"))
    if getattr(result, "unexpected_keys", None):
        raise ValueError(
            f"{folder}: LoRA state does not fit this UNet (unexpected keys {result.unexpected_keys[:3]})"
        )
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return json.loads((folder / "trainer.json").read_text())
