"""Category balancing as in HFPC: cluster originals by backbone image features, balance pairs over clusters.

The paper balances its training data over 25 product categories found by clustering BLIP features. Here:
1. `original_features` runs a `features_fn(list[PIL.Image]) -> (N, D) array` over the distinct originals
   (default `BlipImageFeatures`: the pooled output of a BLIP vision encoder);
2. `cluster_originals` runs seeded KMeans on the L2-normalised features (k capped by the number of
   originals) and returns a `ClusterAssignment` (original -> cluster, saved as JSON);
3. `BalancedPairSampler` draws comparison pairs so each cluster is equally likely and pairs within a
   cluster uniform; `write_contact_sheets` draws one thumbnail grid per cluster to look at.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hfpc_reward.config import resolve_device
from hfpc_reward.data.manifest import ManifestRow
from hfpc_reward.errors import UsageError
from hfpc_reward.images import ImageLoadError, load_rgb
from hfpc_reward.runs import write_json_atomic

logger = logging.getLogger(__name__)

FeaturesFn = Callable[[list[Image.Image]], np.ndarray]
BLIP_VISION_TYPE = "blip_vision_model"


@dataclass
class ClusterConfig:
    k: int = 25  # number of clusters (the paper balances 25 categories); capped at the number of originals
    seed: int = 0  # KMeans initialisation seed: same seed and features -> same assignment
    backbone: str = (
        "Salesforce/blip-itm-base-coco"  # BLIP ITM id/folder, a BLIP vision folder or a reward model
    )
    batch_size: int = 32  # images per vision-encoder forward pass
    device: str = "auto"  # torch device of the vision encoder ("auto": CUDA when present, else CPU)
    sheet_thumbnails: int = 48  # originals shown per contact sheet (the most typical first)
    thumbnail_px: int = 96  # edge of one contact-sheet cell, pixels

    def __post_init__(self):
        if self.k < 1:
            raise UsageError(f"k must be >= 1, got {self.k}")
        if self.batch_size < 1 or self.sheet_thumbnails < 1 or self.thumbnail_px < 8:
            raise UsageError("batch_size and sheet_thumbnails must be >= 1 and thumbnail_px >= 8")


class ClusterFileError(UsageError):
    """A cluster assignment file is missing, not one `hfpc data clusters` wrote, or misses originals."""


@dataclass
class ClusterAssignment:
    """Which cluster each original belongs to, and how far it lies from its cluster's centre."""

    assignment: dict[str, int]  # original -> cluster id (0 = largest cluster)
    distances: dict[str, float]  # original -> distance to its cluster centre (normalised features)
    k: int  # clusters actually used (after capping)
    skipped: dict[str, str] = field(default_factory=dict)  # original -> why it has no features
    meta: dict = field(default_factory=dict)  # how it was made (seed, backbone, ...)

    def members(self, cluster: int) -> list[str]:
        """Originals of one cluster, most typical (closest to the centre) first."""
        chosen = [origin for origin, label in self.assignment.items() if label == cluster]
        return sorted(chosen, key=lambda origin: self.distances[origin])

    def sizes(self) -> list[int]:
        counts = np.bincount(list(self.assignment.values()), minlength=self.k)
        return counts.tolist()

    def save(self, path: str | Path) -> Path:
        record = {"k": self.k, "sizes": self.sizes(), "meta": self.meta, "assignment": self.assignment,
                  "distances": self.distances, "skipped": self.skipped}  # fmt: skip
        return write_json_atomic(Path(path), record, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> ClusterAssignment:
        try:
            record = json.loads(Path(path).read_text())
            return cls(
                assignment={origin: int(label) for origin, label in record["assignment"].items()},
                distances=record["distances"],
                k=record["k"],
                skipped=record.get("skipped", {}),
                meta=record.get("meta", {}),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ClusterFileError(
                f"{path} is not a cluster assignment ({type(exc).__name__}: {exc}); make one with "
                "`hfpc data clusters`"
            ) from None


class BlipImageFeatures:
    """`features_fn` from a BLIP vision encoder: pooled output (N, D) as float32 numpy.

    `backbone` is a hub id or folder of a full BLIP checkpoint (e.g. Salesforce/blip-itm-base-coco), a
    BLIP vision-only checkpoint, or an HFPCRewardModel folder (its fine-tuned vision encoder is used).
    """

    def __init__(self, backbone: str, device: str = "auto", dtype=None):
        import torch

        self.torch = torch
        self.vision, self.image_processor = load_blip_vision(backbone)
        device = resolve_device(device)
        self.vision = self.vision.eval().to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with self.torch.inference_mode():
            pooled = self.vision(pixel_values=pixels.to(device=self.device, dtype=self.dtype)).pooler_output
        return pooled.float().cpu().numpy()


def load_blip_vision(source: str):
    """(vision encoder, image processor) of a BLIP checkpoint, strictly: missing vision weights raise."""
    from transformers import BlipForImageTextRetrieval, BlipVisionModel
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from hfpc_reward.reward.model import CONFIG_KEY, HFPCRewardModel, resolve_model_file

    stored = json.loads(resolve_model_file(source, "config.json").read_text())  # a bad source: one line
    if CONFIG_KEY in stored:
        model = HFPCRewardModel.from_pretrained(source)
        return model.vision, model.processor.image_processor
    if stored.get("model_type") == BLIP_VISION_TYPE:
        vision, info = BlipVisionModel.from_pretrained(source, output_loading_info=True)
        missing = info["missing_keys"]
    elif stored.get("model_type") == "blip":
        blip, info = BlipForImageTextRetrieval.from_pretrained(source, output_loading_info=True)
        vision = blip.vision_model
        missing = [key for key in info["missing_keys"] if key.startswith("vision_model.")]
    else:
        raise ValueError(
            f"{source}: model_type {stored.get('model_type')!r} is not a BLIP checkpoint; pass a BLIP id or "
            "folder (e.g. Salesforce/blip-itm-base-coco) or a reward-model folder as the backbone"
        )
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks vision-encoder weights {sorted(missing)[:5]}")
    try:
        processor = BlipImageProcessorPil.from_pretrained(source)
    except OSError:
        size = vision.config.image_size
        logger.info(
            "%s has no preprocessor_config.json; using BLIP's default preprocessing at %d px", source, size
        )
        processor = BlipImageProcessorPil(size={"height": size, "width": size})
    return vision, processor


def original_features(
    originals: Sequence[str], features_fn: FeaturesFn, batch_size: int = 32
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Features of the originals that open as images: (kept originals, (N, D) features, {skipped: why})."""
    from tqdm.auto import tqdm

    kept, chunks, skipped = [], [], {}
    for start in tqdm(range(0, len(originals), batch_size), desc="features", unit="batch"):
        images, names = [], []
        for origin in originals[start : start + batch_size]:
            try:
                images.append(load_rgb(origin))
                names.append(origin)
            except ImageLoadError as exc:
                logger.warning("skipping original: %s", exc)
                skipped[origin] = str(exc)
        if not images:
            continue
        features = np.asarray(features_fn(images), dtype=np.float64)
        if features.ndim != 2 or features.shape[0] != len(images):
            raise ValueError(
                f"features_fn returned shape {features.shape} for {len(images)} images; expected (N, D)"
            )
        kept.extend(names)
        chunks.append(features)
    width = chunks[0].shape[1] if chunks else 0
    return kept, (np.concatenate(chunks) if chunks else np.zeros((0, width))), skipped


def cluster_originals(
    originals: Sequence[str], features_fn: FeaturesFn, k: int = 25, seed: int = 0, batch_size: int = 32
) -> ClusterAssignment:
    """Seeded KMeans over the originals' L2-normalised features; cluster 0 is the largest."""
    from sklearn.cluster import KMeans

    kept, features, skipped = original_features(list(dict.fromkeys(originals)), features_fn, batch_size)
    if not kept:
        raise UsageError("no original could be opened as an image; nothing to cluster (see the warnings)")
    k_requested = k
    if k > len(kept):
        logger.warning(
            "k=%d is more than the %d originals with features; using k=%d", k, len(kept), len(kept)
        )
        k = len(kept)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(features)
    labels = kmeans.labels_
    distances = kmeans.transform(features)[np.arange(len(kept)), labels]
    by_size = sorted(range(k), key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    renumber = {old: new for new, old in enumerate(by_size)}
    return ClusterAssignment(
        assignment={origin: renumber[int(label)] for origin, label in zip(kept, labels)},
        distances={origin: float(distance) for origin, distance in zip(kept, distances)},
        k=k,
        skipped=skipped,
        meta={"seed": seed, "k_requested": k_requested, "features": "l2-normalised"},
    )


def write_contact_sheets(
    clusters: ClusterAssignment, out_dir: str | Path, thumbnails: int = 48, thumbnail_px: int = 96
) -> list[Path]:
    """One PNG per cluster (`cluster_XX.png`): a grid of its most typical originals with a title line."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cluster in range(clusters.k):
        members = clusters.members(cluster)
        shown = members[:thumbnails]
        columns = max(1, math.ceil(math.sqrt(len(shown))))
        rows = max(1, math.ceil(len(shown) / columns))
        title_px = 20
        sheet = Image.new("RGB", (max(columns * thumbnail_px, 240), rows * thumbnail_px + title_px), "white")
        ImageDraw.Draw(sheet).text(
            (4, 4), f"cluster {cluster}: {len(members)} originals (showing {len(shown)})", fill="black"
        )
        for index, origin in enumerate(shown):
            thumb = load_rgb(origin).copy()
            thumb.thumbnail((thumbnail_px - 4, thumbnail_px - 4))
            cell_x, cell_y = (index % columns) * thumbnail_px, title_px + (index // columns) * thumbnail_px
            sheet.paste(
                thumb,
                (cell_x + (thumbnail_px - thumb.width) // 2, cell_y + (thumbnail_px - thumb.height) // 2),
            )
        path = out / f"cluster_{cluster:02d}.png"
        sheet.save(path)
        written.append(path)
    return written


def pair_weights(
    pairs: Sequence[tuple[ManifestRow, ManifestRow]], assignment: Mapping[str, int]
) -> np.ndarray:
    """Sampling probability per pair: 1 / (clusters with pairs x pairs in the pair's cluster); sums to 1."""
    if not pairs:
        raise ValueError(
            "no comparison pairs to sample from (each original needs a label-1 and a label-0 row)"
        )
    missing = [pos.origin for pos, _ in pairs if pos.origin not in assignment]
    if missing:
        raise ClusterFileError(
            f"{len(missing)} pairs have an original without a cluster (e.g. {missing[0]}); run "
            "`hfpc data clusters` on the manifest these pairs come from"
        )
    clusters = np.array([assignment[pos.origin] for pos, _ in pairs])
    present, counts = np.unique(clusters, return_counts=True)
    per_cluster = dict(zip(present.tolist(), counts.tolist()))
    return np.array([1.0 / (len(present) * per_cluster[c]) for c in clusters.tolist()])


class BalancedPairSampler:
    """Indices into `pairs`, drawn with replacement: every cluster equally likely, pairs uniform within one.

    Works as a torch DataLoader `sampler` (an iterable of indices with a length). Each epoch is its own
    seeded draw: call `set_epoch(epoch)` before iterating, so a resumed run draws the same indices.
    Clusters without any pair cannot be drawn; balance is over the clusters that have pairs.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[ManifestRow, ManifestRow]],
        assignment: Mapping[str, int],
        seed: int = 0,
        num_samples: int | None = None,
    ):
        self.weights = pair_weights(pairs, assignment)
        self.num_samples = len(pairs) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.choice(len(self.weights), size=self.num_samples, p=self.weights).tolist())


def balanced_pair_sampler(
    pairs: Sequence[tuple[ManifestRow, ManifestRow]], assignment: Mapping[str, int], seed: int = 0
) -> BalancedPairSampler:
    """A `BalancedPairSampler` drawing one epoch of len(pairs) indices; see the class."""
    return BalancedPairSampler(pairs, assignment, seed)
