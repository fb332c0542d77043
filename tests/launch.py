"""Launching a command on several CPU processes the way `accelerate launch` / torchrun does (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def torchrun_command(module_args: list[str], nproc: int = 2) -> list[str]:
    """`python -m torch.distributed.run --nproc_per_node N --master_port FREE -m <module_args>`."""
    with socket.socket() as probe:  # a free port for the gloo rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    return [*runner, "--master_port", str(port), "-m", *module_args]


def cpu_env() -> dict[str, str]:
    """One thread per process, no GPU, the checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def torchrun(module_args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `module_args` on `nproc` CPU processes from the repository root; output captured as text."""
    return subprocess.run(
        torchrun_command(module_args, nproc),
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
