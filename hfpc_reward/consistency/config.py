"""Settings of the product-consistency checker. Each backend owns its section; YAML files under
configs/consistency/ change only what they need."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKEND_NAMES = ("classic", "grounded-sam", "grounded-efficientsam")


@dataclass
class GroundedConfig:
    """GroundingDINO finds the product; a SAM-family segmenter cuts it out (backends grounded-*)."""

    detector_id: str = "IDEA-Research/grounding-dino-tiny"  # hub id or local folder of a GroundingDINO checkpoint
    sam_id: str = "facebook/sam-vit-base"  # hub id or folder of a transformers SAM (SlimSAM / SAM-HQ ids work too)
    efficientsam_checkpoint: str = ""  # EfficientSAM weights (.pt / folder) for grounded-efficientsam
    default_prompt: str = "product"  # detection text when a row has no category / prompt
    box_threshold: float = 0.3  # minimum box confidence kept from the detector
    text_threshold: float = 0.25  # minimum phrase confidence for a box's label
    box_choice: str = "best-overlap"  # generated-side box: "best-overlap" (with the original's box) or "highest-score"
    fallback: str = "original-box"  # nothing detected in the generated image: "original-box" (segment there) or "empty"
    device: str = "cpu"  # torch device for both models
    dtype: str = "float32"  # torch dtype name for both models

    def __post_init__(self):
        if self.box_choice not in ("best-overlap", "highest-score"):
            raise ValueError(f"grounded.box_choice must be 'best-overlap' or 'highest-score', got {self.box_choice!r}")
        if self.fallback not in ("original-box", "empty"):
            raise ValueError(f"grounded.fallback must be 'original-box' or 'empty', got {self.fallback!r}")
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"grounded.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class ConsistencyConfig:
    backend: str = "classic"  # one of BACKEND_NAMES: "classic" is weight-free; grounded-* load models
    grounded: GroundedConfig = field(default_factory=GroundedConfig)  # settings of the grounded-* backends

    def __post_init__(self):
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"consistency backend must be one of {BACKEND_NAMES}, got {self.backend!r}")
