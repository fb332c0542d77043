"""`eval run`: sample every generator version on every product, judge each sample, write the numbers.

Flow: products (manifest) -> work units (version, product, chunk of samples k; seed f(product, k)) ->
generate -> paste the product back -> HFPC judges + held-out checks (in a thread, while the next unit
generates) -> rows appended to this process's shard of samples.jsonl. When every process is done, the main process merges the shards in one fixed order
(samples.py) and writes results.json (numbers, stamped), report.html and a terminal table.

Several processes (`torchrun` / `accelerate launch`, see distributed.py) share the units round-robin; the
numbers are the same as one process's. The output folder follows the run contract (hfpc_reward.runs): one
run at a time, settings stamped in run.json; `resume=True` skips every (version, product, k) that already
has a row (on any number of processes), retries rows whose generation or judging raised, and refuses
changed settings outside SAFE_KEYS.

That skeleton (run contract, pending units dealt to the processes, merge, results) is `fill_run_folder`;
`eval run` and `eval rejudge` (rejudge.py) each hand it their `RunSteps`: what to make of a process's units,
which judge to stamp, and what to put in the folder first.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfpc_eval.config import EvalConfig, VersionConfig
from hfpc_eval.distributed import EvalProcesses, Unit, pending_units, with_process_devices, work_units
from hfpc_eval.generators import Generator, Product, build_generator, load_products, sample_seed
from hfpc_eval.judging import (
    build_itm_judge,
    build_scorer,
    close_judges,
    judge_samples,
    judge_stamp,
    pixel_checks,
)
from hfpc_eval.results import RESULTS_NAME, write_results
from hfpc_eval.samples import finished_keys, merge_samples, remove_samples, shard_path
from PIL import Image
from tqdm import tqdm

from hfpc_reward.config import config_to_dict, save_resolved_config
from hfpc_reward.data.manifest import append_jsonl
from hfpc_reward.data.results import input_hashes
from hfpc_reward.images import paste_product, resize_to
from hfpc_reward.runs import RunOutput, flatten_settings, is_safe_key, settings_hash
from hfpc_reward.sample.oracle import held_out_check

logger = logging.getLogger(__name__)

IMAGE_FOLDERS = ("images", "thumbs")  # of a run folder: the judged samples and the report's thumbnails


def run_eval(
    config: EvalConfig,
    generators: dict[str, Generator] | None = None,
    scorer: Any = None,
    itm_judge: Any = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    processes: EvalProcesses | None = None,
) -> dict[str, Any] | None:
    """Run (or, with `resume`, continue) an eval; returns the results dict also written to results.json
    (None on the processes other than the main one, which only make their share of the samples).

    `generators` maps version names to ready generators (default: built from the config); `scorer` is any
    object with HFPCScorer's `score(originals, generated, masks, prompts, categories)` (default: built from
    `config.scorer`); `itm_judge` any object with `score(images, prompts)` (default: from held_out.itm_model).
    `processes` defaults to the ones torchrun / accelerate launched (see distributed.py).
    """
    generators = dict(generators or {})
    for version in config.versions:  # a folder version's folder or manifest is read before the run is stamped
        if version.kind == "folder" and version.name not in generators:
            generators[version.name] = build_generator(version, config.generation)
    steps = RunSteps(
        make=lambda share: _make_samples(share, generators, scorer, itm_judge),
        judge=lambda samples: judge_stamp(config.scorer),
        prepare=lambda products: _save_original_thumbs(config, products),
    )
    return fill_run_folder(config, steps, resume=resume, overwrite=overwrite, processes=processes)


@dataclass
class Share:
    """One process's part of a run folder's work, handed to `RunSteps.make`."""

    config: EvalConfig  # the run's config with this process's devices
    units: list[Unit]  # the units this process makes
    products: dict[str, Product]  # every product of the manifest, by id
    shard: Path  # this process's shard of samples.jsonl: every row made goes here
    settings: dict[str, str]  # version name -> the settings hash its rows carry
    processes: EvalProcesses  # this process's place in the run


@dataclass
class RunSteps:
    """What one kind of run does in an eval run folder; `fill_run_folder` does the rest. `eval run` generates
    and judges; `eval rejudge` judges another run's images again."""

    make: Callable[[Share], None]  # append the rows of this process's units to its shard
    judge: Callable[[list[dict]], dict[str, Any]]  # the merged samples -> results.json's meta.judge
    prepare: Callable[[list[Product]], None] = lambda products: None  # main process, once the folder is set
    can_make: Callable[[Unit], bool] = lambda unit: True  # units this run cannot make are left out
    inputs: Sequence[Path] = ()  # more inputs the folder must not overlap (besides manifest and versions)
    generates: bool = True  # results count the samples made this run as generated
    stamp: dict[str, Any] = field(default_factory=dict)  # more facts for run.json once finished


def fill_run_folder(
    config: EvalConfig,
    steps: RunSteps,
    *,
    resume: bool,
    overwrite: bool,
    processes: EvalProcesses | None = None,
) -> dict[str, Any] | None:
    """The skeleton every eval run folder is made by: the run contract on `out_dir` (owned_output), the pending
    (version, product, chunk of k) units dealt among the processes, the shards merged in one fixed order and
    results.json + report.html written (main process; the others return None)."""
    processes = processes or EvalProcesses.from_environment()
    out = Path(config.out_dir)
    products, skipped = load_products(config.manifest, config.generation.default_prompt)
    with owned_output(config, processes, resume, overwrite, steps.inputs) as run:
        if processes.is_main:
            if not run.resuming:  # --overwrite: start from scratch (a fresh folder holds nothing)
                remove_samples(out)
                (out / RESULTS_NAME).unlink(missing_ok=True)
                for folder in IMAGE_FOLDERS:  # a re-judge links images only where none is (a resume)
                    shutil.rmtree(out / folder, ignore_errors=True)
            save_resolved_config(config, out)
            steps.prepare(products)
        processes.wait_for_everyone()  # an --overwrite has removed the old samples
        settings = {version.name: version_settings(config, version) for version in config.versions}
        done = finished_keys(out, settings)
        names, product_ids = [v.name for v in config.versions], [p.product_id for p in products]
        chunking = (config.generation.samples_per_product, config.generation.batch_size)
        units = work_units(names, product_ids, *chunking)
        pending = [unit for unit in pending_units(units, done) if steps.can_make(unit)]
        processes.wait_for_everyone()  # all have read what is done before anyone appends
        share = Share(
            config=with_process_devices(config, processes),
            units=processes.share(pending),
            products={product.product_id: product for product in products},
            shard=shard_path(out, processes.rank, processes.world),
            settings=settings,
            processes=processes,
        )
        steps.make(share)
        processes.wait_for_everyone()  # every shard is complete
        if not processes.is_main:
            return None
        samples = merge_samples(out, names, product_ids, config.generation.samples_per_product)
        generated = sum(len(unit.ks) for unit in pending) if steps.generates else 0
        results = write_results(config, out, product_ids, skipped, samples, generated, steps.judge(samples))
        run.update_stamp(finished=True, samples=len(samples), **steps.stamp)
        return results


# settings that do not change what a sample is or how it is judged: a run resumes with them changed
# (versions: each version's rows carry its own settings hash, so adding or dropping one is safe)
SAFE_KEYS = (
    "versions",
    "generation.samples_per_product",
    "generation.batch_size",
    "generation.device",
    "scorer.reward_model.device",
    "scorer.reward_model.batch_size",
    "scorer.consistency.grounded.device",
    "scorer.cache_size",
    "held_out.itm_device",
    "consistency_workers",
    "stats",
    "report",
)


def run_settings(config: EvalConfig) -> dict[str, Any]:
    """The settings a run folder is stamped with: everything but the output folder itself, and the manifest's
    content hash (a manifest edited in place is another set of products, prompts or categories)."""
    values = config_to_dict(config)
    values.pop("out_dir")
    values["input_sha256"] = input_hashes({"manifest": config.manifest})
    return values


@contextlib.contextmanager
def owned_output(
    config: EvalConfig, processes: EvalProcesses, resume: bool, overwrite: bool, inputs: Sequence[Path] = ()
):
    """The run contract on `out_dir` (runs.RunOutput): the main process locks it and stamps the settings;
    the others compare with the stamp before the main process rewrites it, so every process agrees."""
    folders = [v.path or v.manifest for v in config.versions if v.kind == "folder"]
    run = RunOutput(
        Path(config.out_dir),
        run_settings(config),
        resume=resume,
        overwrite=overwrite,
        safe_keys=SAFE_KEYS,
        inputs=[config.manifest, *folders, *inputs],
        is_main_process=processes.is_main,
        name="eval",
        folder=True,
    )
    with contextlib.ExitStack() as stack:
        if not processes.is_main:
            stack.enter_context(run)
        processes.wait_for_everyone()
        if processes.is_main:
            stack.enter_context(run)
        yield run


def version_settings(config: EvalConfig, version: VersionConfig) -> str:
    """The hash every sample row of a version carries: the version and every run setting outside SAFE_KEYS
    (the generation, the judges, the manifest). A row with another hash was made by another generator or
    judge, and is never mixed in."""
    unsafe = {
        k: v for k, v in flatten_settings(run_settings(config)).items() if not is_safe_key(k, SAFE_KEYS)
    }
    return settings_hash({"run": unsafe, "version": config_to_dict(version)})


def _make_samples(share: Share, generators, scorer, itm_judge) -> None:
    """Generate, judge and append (to the share's shard) every unit of `share`; each version's generator and
    the judges load once."""
    if not share.units:
        return
    config, processes = share.config, share.processes
    owned_scorer = scorer is None
    if owned_scorer:
        scorer = build_scorer(config.scorer, config.consistency_workers)
    if itm_judge is None:
        itm_judge = build_itm_judge(config.held_out)
    versions = {version.name: version for version in config.versions}
    generators = dict(generators or {})
    judging = ThreadPoolExecutor(1)  # judges batch i while the generator makes batch i+1 (GPU and CPU busy)
    in_flight: list[tuple[list[dict], str, Future]] = []  # the batch being judged: (rows, version, future)
    try:
        for name, group in itertools.groupby(share.units, key=lambda unit: unit.version):
            group = list(group)
            generator = generators.pop(name, None) or build_generator(versions[name], config.generation)
            desc = f"eval {name}" + (
                f" [{processes.rank + 1}/{processes.world}]" if processes.world > 1 else ""
            )
            for unit in tqdm(group, desc=desc, unit="batch", disable=not processes.is_main):
                product = share.products[unit.product_id]
                rows, judged, raw_check = _generate_unit(config, versions[name], generator, product, unit.ks)
                future = judging.submit(judge_samples, scorer, itm_judge, product, judged, raw_check)
                _append_judged(in_flight, share.shard, share.settings)
                in_flight.append((rows, name, future))
            del generator  # free this version's pipeline before the next one loads
    finally:  # also on an interruption: the batch being judged is finished and kept
        _append_judged(in_flight, share.shard, share.settings)
        judging.shutdown()
        if owned_scorer:
            close_judges(scorer)


def _append_judged(in_flight: list, shard: Path, settings: dict[str, str]) -> None:
    """Wait for the batch being judged (if any) and append its rows to the shard."""
    while in_flight:
        rows, name, future = in_flight.pop()
        future.result()
        append_jsonl(shard, [{**row, "settings": settings[name]} for row in rows])


def _generate_unit(
    config, version: VersionConfig, generator, product: Product, ks: Sequence[int]
) -> tuple[list[dict], list[tuple], bool]:
    """Generate, paste back, save and thumbnail the samples `ks` of one product: (one row each, the
    (row, raw, final) images to judge, whether to judge consistency before paste-back too)."""
    paste = version.pastes_product(config.generation.paste_product) and product.mask is not None
    keep_raw = paste and config.held_out.raw_consistency  # kept so that `eval rejudge` can judge it again
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
        if keep_raw:
            row["raw_image"] = _save_image(raw, config.out_dir, f"{name}/raw", product.product_id, row["k"])
        row["thumb"] = _save_thumb(final, config, f"{name}/{product.product_id}_{row['k']}")
        row["pasted"] = paste
        row["held_out"] = pixel_checks(raw, final, product)
        if config.held_out.oracle:  # the mini world's ground truth, never a training reward
            row["held_out"].update(
                held_out_check(config.held_out.oracle, final, product.image, product.mask, product.prompt)
            )
        judged.append((row, raw, final))
    return rows, judged, keep_raw


def _save_original_thumbs(config: EvalConfig, products: Sequence[Product]) -> None:
    """The report's thumbnails of the originals (once: a resumed run keeps those it has)."""
    for product in products:
        _save_thumb(product.image, config, f"originals/{product.product_id}", keep=True)


def _save_image(image: Image.Image, out_dir: str, version: str, product_id: str, k: int) -> str:
    """Save a judged sample under images/<version>/ (atomically); returns its path relative to out_dir."""
    relative = Path(IMAGE_FOLDERS[0]) / version / f"{product_id}_{k}.png"
    _atomic_save(image, Path(out_dir) / relative, "PNG")
    return relative.as_posix()


def _save_thumb(image: Image.Image, config: EvalConfig, stem: str, keep: bool = False) -> str:
    """Save a JPEG thumbnail under thumbs/ (`keep`: not again when it exists); returns its relative path."""
    relative = Path(IMAGE_FOLDERS[1]) / f"{stem}.jpg"
    if keep and (Path(config.out_dir) / relative).is_file():
        return relative.as_posix()
    thumb = image.copy()
    thumb.thumbnail((config.report.thumbnail_size, config.report.thumbnail_size))
    _atomic_save(thumb, Path(config.out_dir) / relative, "JPEG")
    return relative.as_posix()


def _atomic_save(image: Image.Image, path: Path, image_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    image.save(temp, format=image_format)
    os.replace(temp, path)
