"""The mini world's ground-truth judge: never a training reward, only a held-out check.

A generation (the product pasted on a repainted background) passes when
1. **scene**: a classifier of scene statistics (background colour, layout and texture at a coarse scale,
   fitted on clean world renders) recognises the scene kind the prompt names;
2. **no bleed**: the ring of background just outside the known product mask does not take the product's
   colours (object expansion: the product smeared or grown past its outline);
3. **no artefacts**: the background holds no blotch of colours foreign to the scene kind (which also
   catches product ghosts) and no excess high-frequency noise.
Every threshold is a high percentile of the same statistic on clean renders (`fit`); the accuracy of the
classifier and the detection rates of the flaws are measured on renders of held-out products (`validate`).
The fitted oracle is a small JSON file (no pickle).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hfpc_reward.errors import UsageError
from hfpc_reward.sample.world import FLAWS, SCENE_KINDS, WORLD_SIZE, render, scene_of_prompt, world_products

logger = logging.getLogger(__name__)

COARSE = 16  # side of the coarse grid the scene statistics are computed on (robust to a blurry decoder)
PALETTE_SIZE = 12  # colour centres per scene kind
RING = (1, 4)  # bleed ring: pixels between these distances (px at 64 px) outside the product mask
BLEED_NEAR = 0.12  # a ring pixel bleeds when within this RGB distance of a product colour ...
BLEED_RATIO = 0.5  # ... and closer than this share of its distance to the scene's palette


@dataclass
class Verdict:
    passed: bool
    scene_predicted: str
    scene_expected: str | None
    bleed: float  # share of the ring outside the product that took product colours
    off_palette: float  # share of coarse background cells with colours foreign to the expected scene
    noise: float  # mean high-frequency energy of the background
    reasons: list[str] = field(default_factory=list)

    def to_record(self) -> dict:
        return {
            "oracle_passed": self.passed,
            "oracle_scene": self.scene_predicted,
            "oracle_bleed": round(self.bleed, 4),
            "oracle_off_palette": round(self.off_palette, 4),
            "oracle_noise": round(self.noise, 5),
            "oracle_reasons": self.reasons,
        }


def _coarse_cells(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(COARSE,COARSE,3) area-averaged colours and the (COARSE,COARSE) cells that are background."""
    cells = cv2.resize(image, (COARSE, COARSE), interpolation=cv2.INTER_AREA)
    product = cv2.resize(mask.astype(np.float32), (COARSE, COARSE), interpolation=cv2.INTER_AREA)
    return cells, product < 0.2


def _noise(image: np.ndarray, mask: np.ndarray) -> float:
    grey = image.mean(axis=2)
    background = ~cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    detail = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.0))
    return float(detail[background].mean()) if background.any() else 0.0


def scene_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Background statistics: colour moments of four horizontal bands and of the whole, and texture."""
    cells, background = _coarse_cells(image, mask)
    everything = cells[background] if background.any() else cells.reshape(-1, 3)
    parts = [everything.mean(0), everything.std(0)]
    for band in np.array_split(np.arange(COARSE), 4):
        inside = cells[band][background[band]]
        parts.append(inside.mean(0) if len(inside) else everything.mean(0))
    hsv = cv2.cvtColor(everything[None].astype(np.float32), cv2.COLOR_RGB2HSV)[0]
    angle = np.deg2rad(hsv[:, 0])
    parts.append([np.cos(angle).mean() * hsv[:, 1].mean(), np.sin(angle).mean() * hsv[:, 1].mean()])
    grey = cells.mean(axis=2)
    parts.append([np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()])
    return np.concatenate([np.ravel(p) for p in parts]).astype(np.float64)


def _nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Distance of each colour (N,3) to its nearest palette colour (M,3)."""
    if len(colours) == 0:
        return np.zeros(0)
    return np.sqrt(((colours[:, None, :] - palette[None, :, :]) ** 2).sum(-1)).min(1)


def _ring(mask: np.ndarray) -> np.ndarray:
    inner, outer = (cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) for r in RING)
    m = mask.astype(np.uint8)
    return cv2.dilate(m, outer).astype(bool) & ~cv2.dilate(m, inner).astype(bool)


class Oracle:
    """Scene classifier (standardised features, multinomial logistic regression) + per-kind palettes and limits."""

    def __init__(self, params: dict):
        self.params = params
        self.mean = np.asarray(params["feature_mean"])
        self.scale = np.asarray(params["feature_scale"])
        self.coef = np.asarray(params["coef"])
        self.intercept = np.asarray(params["intercept"])
        self.palettes = {kind: np.asarray(p) for kind, p in params["palettes"].items()}
        self.limits = params["limits"]

    # ---- judging ---------------------------------------------------------------------------------------
    def classify(self, image: np.ndarray, mask: np.ndarray) -> str:
        logits = ((scene_features(image, mask) - self.mean) / self.scale) @ self.coef.T + self.intercept
        return SCENE_KINDS[int(np.argmax(logits))]

    def bleed(self, image: np.ndarray, original: np.ndarray, mask: np.ndarray, kind: str) -> float:
        ring = _ring(mask)
        core = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        product = original[core if core.any() else mask][::3]
        pixels = image[ring]
        if not len(pixels) or not len(product):
            return 0.0
        to_product, to_scene = _nearest(pixels, product), _nearest(pixels, self.palettes[kind])
        bleeding = (to_product < BLEED_NEAR) & (to_product < BLEED_RATIO * to_scene)
        return float(bleeding.mean())

    def off_palette(self, image: np.ndarray, mask: np.ndarray, kind: str) -> float:
        cells, background = _coarse_cells(image, mask)
        distances = _nearest(cells[background], self.palettes[kind])
        return float((distances > self.limits[kind]["cell_distance"]).mean()) if len(distances) else 0.0

    def judge(self, image, original, mask: np.ndarray, prompt: str) -> Verdict:
        """One generation (RGB float (H,W,3) in [0,1] or uint8) against its original and product mask."""
        image, original = _as_float(image), _as_float(original)
        expected = scene_of_prompt(prompt)
        predicted = self.classify(image, mask)
        kind = expected or predicted
        verdict = Verdict(
            False,
            predicted,
            expected,
            self.bleed(image, original, mask, kind),
            self.off_palette(image, mask, kind),
            _noise(image, mask),
        )
        limits = self.limits[kind]
        if expected is None:
            verdict.reasons.append("prompt names no scene kind of the world")
        elif predicted != expected:
            verdict.reasons.append(f"wrong scene: shows {predicted}, prompt asks for {expected}")
        if verdict.bleed > self.limits["bleed"]:
            verdict.reasons.append(f"product bled into the background ({verdict.bleed:.2f} of the ring)")
        if verdict.off_palette > limits["off_palette"]:
            verdict.reasons.append(
                f"blotch: {verdict.off_palette:.2f} of the background off the scene palette"
            )
        if verdict.noise > limits["noise"]:
            verdict.reasons.append(f"noisy background ({verdict.noise:.3f})")
        verdict.passed = not verdict.reasons
        return verdict

    # ---- fitting, saving -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, renders_per_kind: int = 120, seed: int = 0, size: int = WORLD_SIZE) -> Oracle:
        """Fit on clean renders of train products (each kind `renders_per_kind` times)."""
        if renders_per_kind < 1:
            raise UsageError(f"renders_per_kind must be >= 1, got {renders_per_kind}")
        from sklearn.cluster import KMeans
        from sklearn.linear_model import LogisticRegression

        products = world_products("train", 64, size)
        features, labels, cells, offs, noises, bleeds = [], [], {}, {}, {}, []
        renders = []
        for k, kind in enumerate(SCENE_KINDS):
            for i in range(renders_per_kind):
                rng = np.random.default_rng([seed, k, i])
                item = render(products[i % len(products)], kind, rng, size=size)
                renders.append(item)
                features.append(scene_features(item.image, item.product_mask))
                labels.append(k)
                coarse, background = _coarse_cells(item.image, item.product_mask)
                cells.setdefault(kind, []).append(coarse[background])
                noises.setdefault(kind, []).append(_noise(item.image, item.product_mask))
        x = np.stack(features)
        mean, scale = x.mean(0), x.std(0) + 1e-6
        classifier = LogisticRegression(C=10.0, max_iter=3000).fit((x - mean) / scale, labels)
        palettes, limits = {}, {}
        for kind in SCENE_KINDS:
            colours = np.concatenate(cells[kind])
            km = KMeans(PALETTE_SIZE, n_init=3, random_state=seed).fit(colours)
            palettes[kind] = km.cluster_centers_
            distance = float(np.quantile(_nearest(colours, km.cluster_centers_), 0.995)) * 1.25
            limits[kind] = {"cell_distance": distance, "noise": float(np.quantile(noises[kind], 0.99)) * 1.5}
            offs[kind] = []
        params = {
            "feature_mean": mean.tolist(),
            "feature_scale": scale.tolist(),
            "coef": classifier.coef_.tolist(),
            "intercept": classifier.intercept_.tolist(),
            "palettes": {kind: p.tolist() for kind, p in palettes.items()},
            "limits": {**limits, "bleed": 0.0},
            "size": size,
            "seed": seed,
        }
        oracle = cls(params)
        for item in renders:
            offs[item.scene].append(oracle.off_palette(item.image, item.product_mask, item.scene))
            original = _studio(item)
            bleeds.append(oracle.bleed(item.image, original, item.product_mask, item.scene))
        for kind in SCENE_KINDS:
            limits[kind]["off_palette"] = max(0.04, float(np.quantile(offs[kind], 0.99)) * 1.25)
        params["limits"] = {**limits, "bleed": max(0.08, float(np.quantile(bleeds, 0.99)) * 1.25)}
        return cls(params)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.params))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Oracle:
        if not Path(path).is_file():
            raise UsageError(f"oracle {path} does not exist: write one with `hfpc world oracle {path}`")
        return cls(json.loads(Path(path).read_text()))


def _as_float(image) -> np.ndarray:
    array = np.asarray(image)
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


def _studio(item) -> np.ndarray:
    """The original of a render: its product pixels over white (what the generator was given)."""
    return np.where(item.product_mask[..., None], item.image, np.float32(1.0))


def validate(oracle: Oracle, renders_per_kind: int = 40, seed: int = 1) -> dict:
    """Scene accuracy on clean renders of held-out products, and the pass rate per flaw (clean should pass)."""
    products = world_products("heldout", 32, oracle.params["size"])
    correct, passed = 0, {flaw: [] for flaw in FLAWS}
    for k, kind in enumerate(SCENE_KINDS):
        for i in range(renders_per_kind):
            product = products[i % len(products)]
            for flaw in FLAWS:
                item = render(product, kind, np.random.default_rng([seed, k, i, FLAWS.index(flaw)]), flaw)
                verdict = oracle.judge(item.image, _studio(item), item.product_mask, item.prompt)
                passed[flaw].append(verdict.passed)
                if flaw == "none":
                    correct += verdict.scene_predicted == kind
    total = renders_per_kind * len(SCENE_KINDS)
    return {
        "scene_accuracy": correct / total,
        "pass_rate": {flaw: float(np.mean(values)) for flaw, values in passed.items()},
        "n_per_flaw": total,
    }


@functools.cache
def _cached(path: str) -> Oracle:
    return Oracle.load(path)


def held_out_check(oracle_path: str, generated, original, product_mask: np.ndarray, prompt: str) -> dict:
    """The oracle's verdict as eval held-out fields (`oracle_passed`, ...); the oracle file loads once."""
    oracle = _cached(str(oracle_path))
    size = oracle.params["size"]
    generated, original = (
        np.asarray(image.convert("RGB").resize((size, size))) for image in (generated, original)
    )
    if product_mask.shape != (size, size):
        product_mask = (
            cv2.resize(product_mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        )
    return oracle.judge(generated, original, product_mask, prompt).to_record()
