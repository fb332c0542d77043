"""Settings of an eval run: which generator versions, which products, how many samples, how to judge.

A YAML file under `configs/eval/` holds only the fields it changes; `section.field=value` overrides on the
command line win over the file (`hfpc_reward.config.load_config`). The resolved config is saved with the
results so a run can be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hfpc_reward.scorer import ScorerConfig

VERSION_KINDS = ("pipeline", "lora", "folder")
PAIRED_TESTS = ("permutation", "bootstrap")


@dataclass
class VersionConfig:
    """One generator version to evaluate.

    - kind "pipeline": `path` is an SD-inpainting hub id or folder (StableDiffusionInpaintPipeline).
    - kind "lora": `path` is a LoRA folder (diffusers format) loaded on top of `base` (or `generation.base`).
    - kind "folder": `path` is a folder of images made by any system, named `{product_id}_{k}.png`
      (.jpg/.jpeg/.webp also accepted), k = 0..samples_per_product-1; or `manifest` is a JSON Lines file
      with rows {"product_id", "generation", "k"?} (paths relative to it; without "k", a product's rows
      are k = 0, 1, ... in file order).
    """

    name: str = ""  # label used in tables, file names and the report (letters, digits, -, _, .)
    kind: str = "pipeline"  # "pipeline" | "lora" | "folder"
    path: str = ""  # pipeline id/folder, LoRA folder, or image folder (see above)
    base: str = ""  # kind "lora": base pipeline id/folder; "" = generation.base
    lora_scale: float = 1.0  # kind "lora": strength of the LoRA (1.0 = as trained)
    manifest: str = ""  # kind "folder": JSON Lines {product_id, generation, k?} instead of names
    paste_product: bool | None = (
        None  # None: generation.paste_product; folder versions: off (judged as delivered)
    )

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"versions[].name must be non-empty letters/digits/-/_/., got {self.name!r}")
        if self.kind not in VERSION_KINDS:
            raise ValueError(f"version {self.name!r}: kind must be one of {VERSION_KINDS}, got {self.kind!r}")
        if self.kind != "folder" and not self.path:
            raise ValueError(f"version {self.name!r}: kind {self.kind!r} needs `path` (model id or folder)")
        if self.kind == "folder" and not (self.path or self.manifest):
            raise ValueError(
                f"version {self.name!r}: kind 'folder' needs `path` (image folder) or `manifest`"
            )

    def pastes_product(self, default: bool) -> bool:
        """Whether this version's samples get the original product pasted back before judging."""
        if self.paste_product is not None:
            return self.paste_product
        return default and self.kind != "folder"


@dataclass
class GenerationConfig:
    """How generator versions sample: shared by every version so that samples pair up."""

    samples_per_product: int = 4  # K samples per product and version
    seed: int = 0  # base seed; sample k of product p uses seed f(seed, p, k), the same for every version
    base: str = ""  # default base pipeline (hub id or folder) for kind "lora" versions
    resolution: int = 512  # longest side of the generation canvas (rounded to a multiple of 8)
    num_inference_steps: int = 30  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance scale
    negative_prompt: str = ""  # negative prompt for every sample ("" = none)
    default_prompt: str = "a product photo on a clean, tasteful background"  # prompt of rows without one
    paste_product: bool = True  # paste the product back onto pipeline/lora samples before judging
    batch_size: int = 4  # samples of one product generated per pipeline call
    device: str = (
        "auto"  # torch device of the pipelines; "auto" = cuda:LOCAL_RANK if CUDA is present, else cpu
    )
    dtype: str = "float32"  # torch dtype name of the pipelines ("float16" on GPU)

    def __post_init__(self):
        if self.samples_per_product < 1:
            raise ValueError(f"generation.samples_per_product must be >= 1, got {self.samples_per_product}")
        if self.resolution < 64:
            raise ValueError(f"generation.resolution must be >= 64, got {self.resolution}")
        if self.num_inference_steps < 1 or self.batch_size < 1:
            raise ValueError("generation.num_inference_steps and generation.batch_size must be >= 1")


@dataclass
class HeldOutConfig:
    """Checks that are never a training reward, reported next to HFPC to expose reward hacking."""

    raw_consistency: bool = False  # versions that paste back: also judge consistency BEFORE paste-back
    itm_model: str = ""  # BlipForImageTextRetrieval id/folder: zero-shot image-prompt match; "" = off
    itm_device: str = "auto"  # torch device of the ITM model ("auto": cuda:LOCAL_RANK if CUDA is present)
    oracle: str = ""  # mini-world oracle JSON (hfpc world oracle): ground-truth verdicts; "" = off


@dataclass
class StatsConfig:
    """Confidence intervals and tests; every resample draws whole products."""

    n_resamples: int = 2000  # bootstrap / permutation resamples
    confidence: float = 0.95  # two-sided interval level
    seed: int = 0  # seed of the resampling
    paired_test: str = (
        "permutation"  # p-value of a version difference: "permutation" (sign flip) | "bootstrap"
    )
    best_of: list[int] = field(
        default_factory=lambda: [2, 4, 8]
    )  # best-of-n by the HFPC reward among each product's samples (n above samples_per_product is skipped)

    def __post_init__(self):
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"stats.confidence must be in [0.5, 1), got {self.confidence}")
        if self.n_resamples < 100:
            raise ValueError(f"stats.n_resamples must be >= 100 for usable intervals, got {self.n_resamples}")
        if any(n < 2 for n in self.best_of):
            raise ValueError(
                f"stats.best_of sizes must be >= 2 (1 is the version itself), got {self.best_of}"
            )
        if self.paired_test not in PAIRED_TESTS:
            raise ValueError(f"stats.paired_test must be one of {PAIRED_TESTS}, got {self.paired_test!r}")


@dataclass
class ReportConfig:
    """What report.html shows."""

    thumbnail_size: int = 160  # longest side of grid thumbnails, in pixels
    max_products: int = 40  # products shown in the image grid (all are counted in the numbers)
    title: str = "HFPC eval"  # page title


@dataclass
class EvalConfig:
    manifest: str = (
        ""  # JSON Lines of products: origin, mask, prompt, category, product_id (rows of one product merge)
    )
    out_dir: str = "outputs/eval"  # results.json, samples.jsonl, report.html, images/ and thumbs/ go here
    versions: list[VersionConfig] = field(
        default_factory=list
    )  # generator versions, the first is the reference
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # sampling, shared by versions
    scorer: ScorerConfig = field(default_factory=ScorerConfig)  # the HFPC judges
    held_out: HeldOutConfig = field(default_factory=HeldOutConfig)  # checks that are not a training reward
    stats: StatsConfig = field(default_factory=StatsConfig)  # intervals and tests
    report: ReportConfig = field(default_factory=ReportConfig)  # report.html
    consistency_workers: int = 1  # processes per eval process for the classic consistency judge (1 = in it)

    def __post_init__(self):
        if not self.manifest:
            raise ValueError(
                "manifest is empty: set `manifest=path/to/products.jsonl` (origin, mask, prompt, ...)"
            )
        if not self.versions:
            raise ValueError("versions is empty: list at least one {name, kind, path} generator version")
        if self.consistency_workers < 1:
            raise ValueError(f"consistency_workers must be >= 1, got {self.consistency_workers}")
        if self.consistency_workers > 1 and self.scorer.consistency.backend != "classic":
            raise ValueError(
                "consistency_workers > 1 needs scorer.consistency.backend=classic (model backends run on the "
                "process's device); set consistency_workers=1"
            )
        names = [version.name for version in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"version names must be unique, got {names}")
        for version in self.versions:
            if version.kind == "lora" and not (version.base or self.generation.base):
                raise ValueError(f"version {version.name!r}: kind 'lora' needs `base` or `generation.base`")
