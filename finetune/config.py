"""Settings of a LoRA fine-tune of a Stable Diffusion inpainting pipeline against a reward (DDPO or
reward-filtered, `train.algorithm`).

Sizes marked *global* count samples over all processes (GPUs x nodes), so one config gives the same
optimisation on 1 or N processes; sizes marked *per process* are what fits in one device's memory.
`configs/finetune/*.yaml` hold deltas over these defaults; `section.field=value` overrides win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MIXED_PRECISION = ("no", "fp16", "bf16")
RESUME_CHOICES = ("", "latest")
TRACKERS = ("tensorboard", "wandb", "trackio", "none")
ALGORITHMS = ("ddpo", "reward_filtered")
# settings a resume may change without changing what the run computes (more epochs; memory, speed, device,
# logging and output knobs); any other difference from the run's stamp refuses the resume, naming the keys
SAFE_RESUME_KEYS = (
    "train.epochs",
    "train.train_batch_size",
    "sample.batch_size",
    "model.gradient_checkpointing",
    "model.xformers",
    "reward.num_workers",
    "reward.max_abstain_fraction",
    "run.cpu",
    "run.out_dir",
    "run.grid_every",
    "run.save_every",
    "run.resume",
    "run.report_to",
    "run.push_to_hub",
    "run.hub_model_id",
)


@dataclass
class ModelConfig:
    """The pipeline being fine-tuned and its LoRA adapter (base weights are frozen, only LoRA trains)."""

    pretrained: str = (
        "stable-diffusion-v1-5/stable-diffusion-inpainting"  # hub id or local folder (9-channel UNet)
    )
    revision: str | None = None  # hub revision of `pretrained` (None = default branch)
    lora_rank: int = 4  # LoRA rank r of every targeted layer
    lora_alpha: float = 4.0  # LoRA scale numerator: the update is (alpha / r) * B @ A
    lora_targets: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"]
    )  # UNet modules
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, ~30% slower
    xformers: bool = False  # xformers attention (GPU only; torch SDPA is used otherwise)

    def __post_init__(self):
        if self.lora_rank < 1:
            raise ValueError(f"model.lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(
                f"model.lora_alpha must be > 0 (use lora_rank for scale 1), got {self.lora_alpha}"
            )
        if not self.lora_targets:
            raise ValueError(
                "model.lora_targets is empty: name UNet modules, e.g. [to_q, to_k, to_v, to_out.0]"
            )


@dataclass
class DataConfig:
    """Products to inpaint. The inpainting mask is the background: NOT the product mask of each row."""

    manifest: str = (
        ""  # JSON Lines with origin (image), mask (product mask, white = product), prompt, product_id
    )
    prompts: list[str] = field(
        default_factory=list
    )  # if set, every product is crossed with every prompt here
    default_prompt: str = "a professional product photo on a clean background"  # rows without a prompt
    resolution: int = 512  # square side (px) images and masks are resized to; a multiple of 8

    def __post_init__(self):
        if self.resolution % 8 or self.resolution < 16:
            raise ValueError(f"data.resolution must be a multiple of 8 and >= 16, got {self.resolution}")


@dataclass
class SampleConfig:
    """Sampling: DDIM with eta (eta = 1 is the DDPO policy; reward_filtered may use 0), classifier-free guidance."""

    num_steps: int = 50  # DDIM steps per sample
    guidance_scale: float = 5.0  # classifier-free guidance weight (1 = no guidance, half the UNet work)
    eta: float = 1.0  # DDIM noise weight; ddpo needs > 0 (a stochastic policy with a log-prob)
    negative_prompt: str = ""  # the unconditional prompt of CFG
    batch_size: int = 8  # per process: samples generated at once
    samples_per_epoch: int = (
        256  # ddpo, global: samples per epoch (a multiple of batch_size x processes and group size)
    )
    paste_back: bool = True  # paste the original product onto the decoded image before the reward

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"sample.num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"sample.eta must be in [0, 1], got {self.eta}")
        if self.guidance_scale < 1.0:
            raise ValueError(
                f"sample.guidance_scale must be >= 1 (1 disables guidance), got {self.guidance_scale}"
            )


@dataclass
class TrainConfig:
    """How the LoRA learns from rewards. ddpo: PPO-clip on the per-step likelihood ratio, advantages
    normalised within groups. reward_filtered: each epoch keeps the best of `candidates` generations per
    (product, prompt) by reward and trains on them with the denoising loss (RAFT-style best-of-N distillation)."""

    algorithm: str = "ddpo"  # ddpo | reward_filtered
    epochs: int = 100  # sample -> reward -> update rounds
    group_size: int = (
        8  # ddpo: G samples per (product, mask, prompt) per epoch; advantages are normalised per group
    )
    min_group_count: int = 4  # ddpo: groups with fewer valid rewards use the whole batch's mean/std instead
    group_history: int = (
        0  # ddpo: past epochs of rewards kept per group for its statistics (0 = this epoch only)
    )
    learning_rate: float = 3e-4  # AdamW learning rate of the LoRA weights
    adam_beta1: float = 0.9  # AdamW momentum; with one optimizer step per epoch a lower value stops overshoot
    adam_weight_decay: float = 1e-4  # AdamW weight decay
    adam_epsilon: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # gradient clipping of the LoRA weights
    clip_range: float = 1e-4  # ddpo: PPO: the ratio exp(logp_new - logp_old) is clipped to 1 +- clip_range
    adv_clip_max: float = 5.0  # ddpo: advantages are clipped to +- this
    inner_epochs: int = 1  # ddpo: passes (optimizer rounds) over each epoch's samples
    timestep_fraction: float = (
        1.0  # ddpo: fraction of the denoising steps trained on per sample (random subset)
    )
    train_batch_size: int = 4  # per process: samples per UNet forward when training
    samples_per_step: int = 64  # global: samples (reward_filtered: kept rows drawn) per optimizer step
    kl_coef: float = (
        0.0  # ddpo: weight of the KL penalty to the reference model (LoRA disabled); > 0 costs a forward
    )
    candidates: int = 16  # reward_filtered: generations per (product, prompt) per epoch
    keep: int = 1  # reward_filtered: highest-reward generations kept per (product, prompt) per epoch
    min_reward: float | None = (
        None  # reward_filtered: keep only generations whose reward reaches this (None: the best ones)
    )
    steps_per_epoch: int = 200  # reward_filtered: optimizer steps (of samples_per_step rows) on the kept ones
    prompt_dropout: float = 0.1  # reward_filtered: share of rows trained with the negative prompt (keeps CFG)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"train.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if not 1 <= self.keep <= self.candidates:
            raise ValueError(
                f"train.keep must be in [1, train.candidates], got keep={self.keep}, candidates={self.candidates}"
            )
        if self.min_reward is not None and not math.isfinite(self.min_reward):
            raise ValueError(f"train.min_reward must be a finite number or null, got {self.min_reward}")
        if self.steps_per_epoch < 1 or not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError("train.steps_per_epoch must be >= 1 and train.prompt_dropout in [0, 1)")
        if self.group_size < 1 or self.min_group_count < 1:
            raise ValueError("train.group_size and train.min_group_count must be >= 1")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ValueError(f"train.timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if not 0.0 <= self.adam_beta1 < 1.0:
            raise ValueError(f"train.adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        if self.clip_range <= 0 or self.adv_clip_max <= 0:
            raise ValueError("train.clip_range and train.adv_clip_max must be > 0")
        if self.samples_per_step % self.train_batch_size:
            raise ValueError(
                f"train.samples_per_step ({self.samples_per_step}) must be a multiple of train.train_batch_size "
                f"({self.train_batch_size}) x processes"
            )
        if self.kl_coef < 0 or self.inner_epochs < 1 or self.epochs < 1 or self.group_history < 0:
            raise ValueError(
                "train.kl_coef and train.group_history must be >= 0, epochs and inner_epochs >= 1"
            )


@dataclass
class RewardFuncConfig:
    """One term of the reward: a reward by name and its weight in the sum (TRL's reward_funcs + reward_weights)."""

    name: str = (
        ""  # a name from hfpc_finetune.rewards.REWARDS, or `module:attribute` naming any TRL-style reward
    )
    weight: float = 1.0  # this term's weight in the summed reward
    kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # constructor arguments (a class) or bound keywords (a function)

    def __post_init__(self):
        if not self.name:
            raise ValueError("every reward.funcs entry needs a name, e.g. {name: hfpc, weight: 1.0}")


@dataclass
class RewardConfig:
    """The reward: one named reward (`name` + `kwargs`) or a weighted sum of several (`funcs`)."""

    name: str = (
        "hfpc"  # a name from hfpc_finetune.rewards.REWARDS (hfpc, background_brightness, ...) or module:attr
    )
    kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # passed to the reward's constructor (e.g. config: path)
    funcs: list[RewardFuncConfig] = field(
        default_factory=list
    )  # several rewards summed with weights; when set, leave name/kwargs at their defaults
    num_workers: int = 2  # threads computing rewards while the next batch samples
    max_abstain_fraction: float = (
        0.5  # an epoch in which a larger share of rewards abstains (None) stops the run
    )

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"reward.num_workers must be >= 1, got {self.num_workers}")
        if not 0.0 <= self.max_abstain_fraction < 1.0:
            raise ValueError(
                f"reward.max_abstain_fraction must be in [0, 1) (an epoch without rewards cannot train), "
                f"got {self.max_abstain_fraction}"
            )
        if self.funcs and (self.name != RewardConfig.name or self.kwargs):
            raise ValueError(
                "set either reward.name/reward.kwargs (one reward) or reward.funcs (a weighted list), not both"
            )

    def terms(self) -> list[RewardFuncConfig]:
        """The reward's terms: `funcs`, or the single `name` with weight 1."""
        return list(self.funcs) or [RewardFuncConfig(self.name, 1.0, dict(self.kwargs))]


@dataclass
class RunConfig:
    """Outputs, seeding, precision, tracking and checkpointing of a run."""

    out_dir: str = (
        "outputs/finetune"  # the run's folder: metrics.jsonl, grids/, lora/, state/, run.json, logs/
    )
    seed: int = (
        0  # every random draw derives from (seed, epoch, sample index): runs and resumes are reproducible
    )
    mixed_precision: str = "fp16"  # no | fp16 | bf16: frozen weights in this dtype, LoRA weights stay float32
    cpu: bool = False  # force the CPU even when a GPU is visible
    grid_every: int = 10  # save (and track) a grid of samples with their rewards every N epochs (0 = never)
    save_every: int = 1  # save LoRA + resumable training state every N epochs (and always at the end)
    resume: str = (
        ""  # "latest": continue from out_dir/state if present (the same as --resume); "" = a new run
    )
    report_to: str = (
        "tensorboard"  # tracker: tensorboard (offline, under out_dir/logs) | wandb | trackio | none
    )
    push_to_hub: bool = False  # upload the final LoRA folder (with its model card) to hub_model_id
    hub_model_id: str = ""  # the hub repository of push_to_hub, e.g. my-org/sd-inpaint-hfpc-lora

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"run.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if self.grid_every < 0 or self.save_every < 1:
            raise ValueError("run.grid_every must be >= 0 and run.save_every >= 1")
        if self.seed < 0:
            raise ValueError(f"run.seed must be >= 0 (it seeds numpy's generators), got {self.seed}")
        if self.resume not in RESUME_CHOICES:
            raise ValueError(f"run.resume must be one of {RESUME_CHOICES}, got {self.resume!r}")
        if self.report_to not in TRACKERS:
            raise ValueError(f"run.report_to must be one of {TRACKERS}, got {self.report_to!r}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("run.push_to_hub needs run.hub_model_id (e.g. my-org/sd-inpaint-hfpc-lora)")


@dataclass
class FinetuneConfig:
    """A whole fine-tuning run."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the pipeline and its LoRA
    data: DataConfig = field(default_factory=DataConfig)  # the products to inpaint
    sample: SampleConfig = field(default_factory=SampleConfig)  # the rollouts (DDIM with log-probs)
    train: TrainConfig = field(default_factory=TrainConfig)  # the PPO update
    reward: RewardConfig = field(default_factory=RewardConfig)  # what the samples are rewarded by
    run: RunConfig = field(default_factory=RunConfig)  # outputs, tracking, resume

    def __post_init__(self):
        if self.train.algorithm != "ddpo":  # the sizes below are DDPO's epoch layout
            return
        if self.sample.eta == 0.0:
            raise ValueError("sample.eta must be > 0 for train.algorithm=ddpo (eta = 0 has no log-prob)")
        if self.sample.samples_per_epoch % self.sample.batch_size:
            raise ValueError(
                f"sample.samples_per_epoch ({self.sample.samples_per_epoch}) must be a multiple of "
                f"sample.batch_size ({self.sample.batch_size})"
            )
        if self.sample.samples_per_epoch % self.train.group_size:
            raise ValueError(
                f"sample.samples_per_epoch ({self.sample.samples_per_epoch}) must be a multiple of "
                f"train.group_size ({self.train.group_size})"
            )
        if self.sample.samples_per_epoch % self.train.samples_per_step:
            raise ValueError(
                f"sample.samples_per_epoch ({self.sample.samples_per_epoch}) must be a multiple of "
                f"train.samples_per_step ({self.train.samples_per_step})"
            )
