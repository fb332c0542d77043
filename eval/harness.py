"""`eval run`: sample every generator version on every product, judge each sample, write the numbers.

Flow: products (manifest) -> for each version, each product: pending samples k (seed f(product, k)) ->
generate -> paste the product back -> HFPC judges + held-out checks -> one row appended to samples.jsonl.
Then results.json (numbers, stamped), report.html and a terminal table.

Resuming: samples.jsonl is appended and fsynced per product; a rerun in the same out_dir skips every
(version, product, k) that already has a row, so an interrupted run never regenerates finished samples.
Rows whose generation or scoring raised are retried. Rows made with other seeds are refused.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hfpc_eval.config import EvalConfig, VersionConfig
from hfpc_eval.generators import Generator, Product, build_generator, sample_seed
from hfpc_eval.stats import summarise
from PIL import Image
from tqdm import tqdm

from hfpc_reward.config import config_to_dict, save_resolved_config
from hfpc_reward.data.manifest import append_jsonl, read_jsonl, read_manifest
from hfpc_reward.images import ImageLoadError, load_mask, open_image, paste_product, resize_to

logger = logging.getLogger(__name__)

SAMPLES_NAME = "samples.jsonl"
RESULTS_NAME = "results.json"
REPORT_NAME = "report.html"
# config keys that do not change what a sample is or how it is judged (left out of settings_key)
RESUME_FREE_KEYS = frozenset(
    {"device", "itm_device", "dtype", "batch_size", "samples_per_product", "cache_size"}
)
PACKAGES = ("hfpc-reward", "torch", "transformers", "diffusers", "peft", "numpy", "pillow", "scikit-learn")


def load_products(manifest: str | Path, default_prompt: str) -> tuple[list[Product], dict[str, str]]:
    """Products of an eval manifest, and {product: why it was skipped} for rows whose images do not load.

    Rows that repeat a product_id with the same origin are the same product (a labelled pairs manifest has one
    row per generation); the same product_id with another origin is an error.
    """
    products, skipped, seen = [], {}, {}
    for row in read_manifest(manifest):
        product_id = row.product_id or Path(row.origin).stem
        if product_id in seen:
            if seen[product_id] != row.origin:
                raise ValueError(
                    f"{manifest}:{row.line}: product_id {product_id!r} names two originals; make it unique"
                )
            continue
        seen[product_id] = row.origin
        try:
            loaded = open_image(row.origin)
            mask = load_mask(row.mask, size=loaded.rgb.size) if row.mask else loaded.alpha
        except ImageLoadError as exc:
            logger.warning("skipping product %s: %s", product_id, exc)
            skipped[product_id] = str(exc)
            continue
        products.append(
            Product(
                product_id, row.origin, loaded.rgb, mask, row.prompt or default_prompt, row.category or ""
            )
        )
    if not products:
        raise ValueError(f"manifest {manifest} has no loadable product")
    return products, skipped


def run_eval(
    config: EvalConfig,
    generators: dict[str, Generator] | None = None,
    scorer: Any = None,
    itm_judge: Any = None,
) -> dict[str, Any]:
    """Run (or resume) an eval; returns the results dict also written to results.json.

    `generators` maps version names to ready generators (default: built from the config); `scorer` is any
    object with HFPCScorer's `score(originals, generated, masks, prompts, categories)` (default: built from
    `config.scorer`); `itm_judge` any object with `score(images, prompts)` (default: from held_out.itm_model).
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, out)
    products, skipped = load_products(config.manifest, config.generation.default_prompt)
    samples_path = out / SAMPLES_NAME
    settings = {version.name: settings_key(config, version) for version in config.versions}
    done = _finished_rows(samples_path, settings)
    if scorer is None:
        from hfpc_reward.scorer import HFPCScorer

        scorer = HFPCScorer.from_config(config.scorer)
    if itm_judge is None and config.held_out.itm_model:
        from hfpc_eval.itm import BlipITMJudge

        itm_judge = BlipITMJudge(config.held_out.itm_model, config.held_out.itm_device)
    generators = dict(generators or {})
    n_generated = 0
    ks = range(config.generation.samples_per_product)
    for version in config.versions:
        pending = [(p, [k for k in ks if (version.name, p.product_id, k) not in done]) for p in products]
        pending = [(p, todo) for p, todo in pending if todo]
        if not pending:
            continue
        generator = generators.get(version.name) or build_generator(version, config.generation)
        for product, todo in tqdm(pending, desc=f"eval {version.name}", unit="product"):
            rows = _sample_product(config, version, generator, scorer, itm_judge, product, todo)
            append_jsonl(samples_path, [{**row, "settings": settings[version.name]} for row in rows])
            n_generated += len(todo)
        generators.pop(version.name, None)
        del generator  # free this version's pipeline before the next one loads
    return _write_results(config, out, products, skipped, n_generated)


def settings_key(config: EvalConfig, version: VersionConfig) -> str:
    """A short hash of everything that decides a version's samples and their scores: the version, the
    generation settings (seed included; for folder versions only paste-back) and the judges. Devices, dtypes, batch sizes and the number of
    samples are left out, so a run can resume on another machine or be extended to more samples."""
    generation = config_to_dict(config.generation)
    if version.kind == "folder":  # its images exist already: only paste-back changes what is judged
        generation = {"paste_product": version.pastes_product(config.generation.paste_product)}
    payload = {
        "version": config_to_dict(version),
        "generation": generation,
        "scorer": config_to_dict(config.scorer),
        "held_out": config_to_dict(config.held_out),
    }
    text = json.dumps(_without_keys(payload, RESUME_FREE_KEYS), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without_keys(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {key: _without_keys(item, keys) for key, item in value.items() if key not in keys}
    return value


def _finished_rows(samples_path: Path, settings: dict[str, str]) -> dict[tuple[str, str, int], dict]:
    """The last row of every (version, product, k) in samples.jsonl that needs no retry.

    Raises ValueError when rows of a configured version were made with other settings (mixing them would
    silently compare different generators or judges)."""
    rows: dict[tuple[str, str, int], dict] = {}
    for row in read_jsonl(samples_path):
        expected = settings.get(row["version"])
        if expected is not None and row.get("settings") != expected:
            raise ValueError(
                f"{samples_path} holds samples of version {row['version']!r} made with other settings (version, "
                "generation or judges changed); use a new out_dir, or rename the version"
            )
        rows[(row["version"], row["product_id"], row["k"])] = row
    return {key: row for key, row in rows.items() if not row.get("retry")}


def _sample_product(
    config, version: VersionConfig, generator, scorer, itm_judge, product: Product, ks: Sequence[int]
) -> list[dict]:
    """Generate, paste back, judge and thumbnail the samples `ks` of one product; one row each."""
    paste = version.pastes_product(config.generation.paste_product) and product.mask is not None
    name = version.name
    seeds = [sample_seed(config.generation.seed, product.product_id, k) for k in ks]
    base = {
        "version": name,
        "product_id": product.product_id,
        "category": product.category,
        "prompt": product.prompt,
        "origin": product.origin,
    }
    rows = [{**base, "k": k, "seed": seed} for k, seed in zip(ks, seeds)]
    try:
        outputs = generator.generate(product, list(ks), seeds)
    except Exception as exc:  # a crashed batch is recorded and retried on resume; the run goes on
        logger.exception("generation of %s / %s failed", name, product.product_id)
        outputs = [exc] * len(ks)
    judged = []
    for row, output in zip(rows, outputs):
        if isinstance(output, Exception):
            row.update(
                passed=False, reward=None, reasons=[], error=f"generation failed: {output}", retry=True
            )
            continue
        raw = resize_to(output.convert("RGB"), product.image.size)
        final = paste_product(raw, product.image, product.mask) if paste else raw
        row["image"] = _save_image(final, config.out_dir, name, product.product_id, row["k"])
        row["thumb"] = _save_thumb(final, config, f"{name}/{product.product_id}_{row['k']}")
        row["pasted"] = paste
        row["held_out"] = _pixel_checks(raw, final, product)
        judged.append((row, raw, final))
    _save_thumb(product.image, config, f"originals/{product.product_id}")
    if judged:
        _judge(scorer, itm_judge, product, judged, raw_check=paste and config.held_out.raw_consistency)
    return rows


def _judge(
    scorer, itm_judge, product: Product, judged: list[tuple[dict, Image.Image, Image.Image]], raw_check: bool
):
    """HFPC judges on the judged images; with `raw_check`, consistency before paste-back too; ITM if given."""
    n = len(judged)
    masks = None if product.mask is None else [product.mask] * n
    finals = [final for _, _, final in judged]
    sides = {"masks": masks, "prompts": [product.prompt] * n, "categories": [product.category or None] * n}
    try:
        results = scorer.score([product.image] * n, finals, **sides)
        for (row, _, _), result in zip(judged, results):
            row.update(result.to_record())
            row["passed"] = bool(result.passed)  # an item the judges could not judge is not a pass
        if raw_check:
            raws = [raw for _, raw, _ in judged]
            for (row, _, _), result in zip(judged, scorer.score([product.image] * n, raws, **sides)):
                report = result.consistency
                row["held_out"]["raw_consistent"] = None if report is None else bool(report.consistent)
                row["held_out"]["raw_consistency_score"] = None if report is None else float(report.score)
        if itm_judge is not None:
            for (row, _, _), value in zip(judged, itm_judge.score(finals, [product.prompt] * n)):
                row["held_out"]["itm_match"] = float(value)
    except Exception as exc:  # recorded and retried on resume
        logger.exception("judging %s failed", product.product_id)
        for row, _, _ in judged:
            row.update(passed=False, reward=None, reasons=[], error=f"judging failed: {exc}", retry=True)


def _pixel_checks(raw: Image.Image, final: Image.Image, product: Product) -> dict[str, float]:
    """Held-out pixel statistics: product drift before paste-back, background brightness and saturation.

    `product_drift` = mean |raw - original| over product pixels, in [0, 1]: how much the generator itself
    changed the product (paste-back hides it from the judges). Brightness / saturation of the background
    expose a reward model that is being gamed by global colour tricks.
    """
    original = np.asarray(product.image, dtype=np.float32) / 255.0
    raw_px = np.asarray(raw, dtype=np.float32) / 255.0
    hsv = np.asarray(final.convert("HSV"), dtype=np.float32) / 255.0
    background = ~product.mask if product.mask is not None else np.ones(original.shape[:2], bool)
    checks = {}
    if product.mask is not None and product.mask.any():
        checks["product_drift"] = float(np.abs(raw_px - original)[product.mask].mean())
    if background.any():
        checks["background_brightness"] = float(hsv[..., 2][background].mean())
        checks["background_saturation"] = float(hsv[..., 1][background].mean())
    return checks


def _save_image(image: Image.Image, out_dir: str, version: str, product_id: str, k: int) -> str:
    """Save a judged sample under images/<version>/ (atomically); returns its path relative to out_dir."""
    relative = Path("images") / version / f"{product_id}_{k}.png"
    _atomic_save(image, Path(out_dir) / relative, "PNG")
    return relative.as_posix()


def _save_thumb(image: Image.Image, config: EvalConfig, stem: str) -> str:
    relative = Path("thumbs") / f"{stem}.jpg"
    thumb = image.copy()
    thumb.thumbnail((config.report.thumbnail_size, config.report.thumbnail_size))
    _atomic_save(thumb, Path(config.out_dir) / relative, "JPEG")
    return relative.as_posix()


def _atomic_save(image: Image.Image, path: Path, image_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    image.save(temp, format=image_format)
    os.replace(temp, path)


def latest_samples(samples_path: Path) -> list[dict]:
    """The last row of each (version, product, k) in samples.jsonl."""
    rows = {(row["version"], row["product_id"], row["k"]): row for row in read_jsonl(samples_path)}
    return list(rows.values())


def _write_results(config: EvalConfig, out: Path, products, skipped, n_generated: int) -> dict[str, Any]:
    names = [version.name for version in config.versions]
    wanted = {product.product_id for product in products}
    samples = [  # this config's samples only (an out_dir may hold rows of dropped versions, products or k)
        row
        for row in latest_samples(out / SAMPLES_NAME)
        if row["version"] in names
        and row["product_id"] in wanted
        and row["k"] < config.generation.samples_per_product
    ]
    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "packages": _package_versions(),
            "config": config_to_dict(config),
            "counts": {
                "products": len(products),
                "skipped_products": skipped,
                "samples_per_product": config.generation.samples_per_product,
                "samples": {name: sum(row["version"] == name for row in samples) for name in names},
                "generated_this_run": n_generated,
            },
        },
        **summarise(samples, names, config.stats),
    }
    write_json(out / RESULTS_NAME, results)
    from hfpc_eval.report import write_report

    write_report(out, results, samples, config)
    return results


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON atomically (temp file + rename); NaN / infinity become null."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False))
    os.replace(temp, path)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _git_commit() -> str | None:
    try:
        repo = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
