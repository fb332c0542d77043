"""Settings of the product-consistency checker. Each backend owns its section; YAML files under
configs/consistency/ change only what they need."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKEND_NAMES = ("classic", "grounded-sam", "grounded-efficientsam")


@dataclass
class GroundedConfig:
    """GroundingDINO finds the product; a SAM-family segmenter cuts it out (backends grounded-*)."""

    detector_id: str = (
        "IDEA-Research/grounding-dino-tiny"  # hub id or local folder of a GroundingDINO checkpoint
    )
    sam_id: str = (
        "facebook/sam-vit-base"  # hub id or folder of a transformers SAM (SlimSAM / SAM-HQ ids work too)
    )
    efficientsam_checkpoint: str = ""  # EfficientSAM weights (.pt / folder) for grounded-efficientsam
    default_prompt: str = "product"  # detection text when a row has no category / prompt
    box_threshold: float = 0.3  # minimum box confidence kept from the detector
    text_threshold: float = 0.25  # minimum phrase confidence for a box's label
    box_choice: str = (
        "best-overlap"  # generated-side box: "best-overlap" (with the original's box) or "highest-score"
    )
    fallback: str = (
        "original-box"  # nothing detected in the generated image: "original-box" (segment there) or "empty"
    )
    clip_masks_to_box: bool = (
        True  # cut each SAM mask to its prompt box (the detector's box bounds the product)
    )
    batch_size: int = 8  # images per detector / SAM encoder forward pass (lower it when memory is short)
    device: str = "auto"  # torch device for both models; "auto" = CUDA when present, else CPU
    dtype: str = "float32"  # torch dtype name for both models: "float32", "float16" or "bfloat16"

    def __post_init__(self):
        if self.box_choice not in ("best-overlap", "highest-score"):
            raise ValueError(
                f"grounded.box_choice must be 'best-overlap' or 'highest-score', got {self.box_choice!r}"
            )
        if self.fallback not in ("original-box", "empty"):
            raise ValueError(f"grounded.fallback must be 'original-box' or 'empty', got {self.fallback!r}")
        for name in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"grounded.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"grounded.batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"grounded.dtype must be 'float32', 'float16' or 'bfloat16', got {self.dtype!r}")


@dataclass
class ClassicConfig:
    """The weight-free OpenCV/numpy backend: studio-background extraction and mask-guided segmentation."""

    segment_size: int = 160  # longest side (px) at which the generated product is segmented; larger = slower
    band_fraction: float = 0.012  # uncertain band around the outline (feathered edges), x the product's size
    band_image_fraction: float = 0.004  # ... and at least this fraction of the image side (mask errors)
    search_fraction: float = 0.35  # how far outside the original mask expansion is searched, x product size
    same_delta_e: float = 12.0  # Lab distance below which a generated pixel still "is" the original pixel
    product_margin: float = 4.0  # Lab distance by which a pixel must be closer to product than background
    palette_size: int = 8  # k-means colours that model the new background of a generated image
    shadow_max_chroma: float = (
        12.0  # shadows/reflections: a darker pixel within this Lab chroma of the background
    )
    studio_delta_e: float = (
        10.0  # studio extraction: Lab distance from the backdrop colour that counts as product
    )

    def __post_init__(self):
        if not 32 <= self.segment_size <= 2048:
            raise ValueError(f"classic.segment_size must be in [32, 2048] pixels, got {self.segment_size}")
        for name in ("band_fraction", "band_image_fraction", "search_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"classic.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("same_delta_e", "studio_delta_e", "shadow_max_chroma"):
            if getattr(self, name) <= 0:
                raise ValueError(f"classic.{name} must be a positive Lab distance, got {getattr(self, name)}")
        if self.product_margin < 0:
            raise ValueError(f"classic.product_margin must be >= 0, got {self.product_margin}")
        if not 2 <= self.palette_size <= 32:
            raise ValueError(f"classic.palette_size must be in [2, 32], got {self.palette_size}")


@dataclass
class ThresholdConfig:
    """Verdict: a pair is consistent when every metric is on the good side of its threshold.

    Defaults: design values with a margin over the worst harmless change (JPEG, noise, blur, shadows,
    reflections, feathered edges, grading, masks a few pixels off). max_reach, max_halo and max_edge_changed
    were chosen on a small grid over four development families of benchmarks/consistency_validation.py
    (sample, heldout, cutouts, drawn); the family `packshot` was not used for any choice (README).

    `hfpc calibrate-consistency` fits these on a labelled manifest and writes them as a YAML delta.
    """

    min_iou: float = 0.85  # mask IoU of the generated product with the original product
    max_expansion: float = 0.1  # object expansion E (added area / original area)
    max_lost_area: float = 0.03  # fraction of the original product missing in the generated image
    max_centroid_shift: float = 0.05  # centroid shift / diagonal of the original product's box
    min_boundary_f: float = 0.6  # boundary F-score of the two outlines (tolerance: boundary_tolerance)
    max_delta_e: float = (
        2.5  # mean CIE76 Lab colour difference inside the product (after mild-grading compensation)
    )
    min_ssim: float = 0.88  # structural similarity of the product region (greyscale)
    max_changed_area: float = (
        0.01  # fraction of the product whose local colour changed by more than changed_delta_e
    )
    max_bleed: float = 0.15  # share of the ring just outside the outline covered by the generated product
    max_reach: float = (
        0.1  # how far a solid part of the generated product reaches past the outline / its size
    )
    max_halo: float = (
        0.15  # product-colour share gained by the thin ring just outside the outline (glow, smear)
    )
    max_edge_changed: float = (
        0.1  # fraction of the product's edge zone changed by more than edge_delta_e (melting)
    )
    max_aspect_mismatch: float = (
        0.03  # |log(aspect_gen / aspect_orig)|; above it the pair is refused as distorted
    )

    def __post_init__(self):
        for name in ("min_iou", "min_boundary_f", "min_ssim"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"thresholds.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in (
            "max_expansion",
            "max_lost_area",
            "max_centroid_shift",
            "max_delta_e",
            "max_changed_area",
            "max_edge_changed",
            "max_bleed",
            "max_reach",
            "max_halo",
            "max_aspect_mismatch",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"thresholds.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class MetricsConfig:
    """How the metrics are measured (resolution, tolerances); thresholds live in ThresholdConfig."""

    analysis_size: int = 256  # longest side (px) at which masks and appearance are compared
    boundary_tolerance: float = (
        0.02  # boundary F-score match distance, as a fraction of the product box diagonal
    )
    ignore_band: float = 0.02  # appearance ignores this band inside the product outline (x box diagonal)
    edge_delta_e: float = 5.0  # Lab difference that marks an edge-zone pixel as changed (metric edge_changed)
    changed_delta_e: float = (
        10.0  # local Lab difference (CIE76, after smoothing) that marks a pixel as changed
    )
    grading_gain: float = 0.15  # mild global colour grading absorbed: per-channel gain within 1 +- this
    grading_offset: float = 20.0  # ... and per-channel offset within +- this (0-255 scale)

    def __post_init__(self):
        if not 64 <= self.analysis_size <= 4096:
            raise ValueError(f"metrics.analysis_size must be in [64, 4096] pixels, got {self.analysis_size}")
        for name in ("boundary_tolerance", "ignore_band", "grading_gain"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"metrics.{name} must be in [0, 0.5], got {getattr(self, name)}")
        if self.changed_delta_e <= 0 or self.edge_delta_e <= 0 or self.grading_offset < 0:
            raise ValueError(
                "metrics.changed_delta_e and edge_delta_e must be > 0, metrics.grading_offset >= 0"
            )


@dataclass
class ConsistencyConfig:
    backend: str = "classic"  # one of BACKEND_NAMES: "classic" is weight-free; grounded-* load models
    grounded: GroundedConfig = field(default_factory=GroundedConfig)  # settings of the grounded-* backends
    classic: ClassicConfig = field(
        default_factory=ClassicConfig
    )  # settings of the weight-free classic backend
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # how masks and appearance are compared
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)  # verdict thresholds (calibratable)
    min_mask_fraction: float = (
        0.001  # an original product mask smaller than this fraction of the image is refused
    )
    max_mask_fraction: float = 0.95  # ... and one larger than this (no background left to compare) is refused
    min_image_size: int = 32  # an original or generated image with a side shorter than this (px) is an error
    refine_mask_fraction: float = 0.012  # a given mask is snapped to the original's edges within this x the
    # image side (at least 5 px), so a mask a few pixels off is corrected; 0 = use the mask exactly as given

    def __post_init__(self):
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"consistency backend must be one of {BACKEND_NAMES}, got {self.backend!r}")
        if not 0.0 <= self.min_mask_fraction < self.max_mask_fraction <= 1.0:
            raise ValueError(
                "need 0 <= min_mask_fraction < max_mask_fraction <= 1, got "
                f"{self.min_mask_fraction} and {self.max_mask_fraction}"
            )
        if not 0.0 <= self.refine_mask_fraction <= 0.1:
            raise ValueError(f"refine_mask_fraction must be in [0, 0.1], got {self.refine_mask_fraction}")
        if self.min_image_size < 1:
            raise ValueError(f"min_image_size must be >= 1 pixel, got {self.min_image_size}")
