"""The processes of an `eval run`: which samples each one makes, on which device, and when they wait.

Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1; several machines included) the work is a fixed list
of units, one per (version, product, chunk of samples k), in the order a one-process run makes them; the
units still pending are dealt round-robin to the processes. A unit's seeds depend only on its product and
its k (`generators.sample_seed`) and a unit is always generated and judged as the same batch, so the images,
scores and results are identical whatever the number of processes.

Devices: "auto" is `cuda:LOCAL_RANK` when CUDA is present (else "cpu"); a bare "cuda" under several
processes also means `cuda:LOCAL_RANK`, so a config written for one GPU spreads over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hfpc_reward.config import config_from_dict, config_to_dict


@dataclass(frozen=True)
class Unit:
    """Samples `ks` of one product under one version: generated in one pipeline call, judged in one batch."""

    version: str  # version name
    product_id: str  # product of the eval manifest
    ks: tuple[int, ...]  # sample indices, ascending


@dataclass(frozen=True)
class EvalProcesses:
    """This process's place in the run: rank among `world` processes, GPU index on its machine."""

    rank: int = 0  # global process index (0 = main: merges shards, writes results and the report)
    world: int = 1  # number of processes of the run
    local_rank: int = 0  # index of this process on its machine (its GPU)

    @classmethod
    def from_environment(cls) -> EvalProcesses:
        """The processes torchrun / accelerate launched (one process when WORLD_SIZE is unset or 1)."""
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes: gloo, each takes its share
        return cls(state.process_index, state.num_processes, state.local_process_index)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for_everyone(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def share(self, units: Sequence[Unit]) -> list[Unit]:
        """This process's units: every world-th one, starting at its rank."""
        return list(units[self.rank :: self.world])

    def device(self, name: str) -> str:
        """The torch device this process uses for a configured device name (see the module docstring)."""
        return resolve_device(name, self.local_rank, self.world)


def resolve_device(name: str, local_rank: int | None = None, world: int | None = None) -> str:
    """A configured device name as a torch device ("auto", "cuda" -> cuda:LOCAL_RANK, see the module
    docstring); the rank and world size default to torchrun's LOCAL_RANK / WORLD_SIZE."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if name == "auto":
        import torch

        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world > 1:
        return f"cuda:{local_rank}"
    return name


def with_process_devices(config: Any, processes: EvalProcesses) -> Any:
    """A copy of a config dataclass with every `device` / `*_device` field mapped to this process's device."""

    def resolve(values: dict) -> dict:
        for key, value in values.items():
            if isinstance(value, dict):
                resolve(value)
            elif isinstance(value, str) and (key == "device" or key.endswith("_device")):
                values[key] = processes.device(value)
        return values

    return config_from_dict(type(config), resolve(config_to_dict(config)))


def work_units(versions: Sequence[str], product_ids: Sequence[str], samples: int, batch: int) -> list[Unit]:
    """Every unit of a run in one-process order: versions, then products, then chunks of `batch` samples."""
    chunks = [tuple(range(start, min(start + batch, samples))) for start in range(0, samples, batch)]
    return [
        Unit(version, product_id, ks) for version in versions for product_id in product_ids for ks in chunks
    ]


def pending_units(units: Sequence[Unit], done: set[tuple[str, str, int]]) -> list[Unit]:
    """The units with samples still to make, each reduced to its missing ks."""
    pending = []
    for unit in units:
        todo = tuple(k for k in unit.ks if (unit.version, unit.product_id, k) not in done)
        if todo:
            pending.append(Unit(unit.version, unit.product_id, todo))
    return pending
