"""Where a run executes: the device, the SLURM job's time left, and the random number generators'
state (seeded at the start, captured into every checkpoint and restored on resume)."""
from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import torch

from qvpo.errors import UserError


def parse_slurm_duration(text: str) -> float | None:
    """Seconds in squeue's time format ([days-][hours:]minutes:seconds); None for UNLIMITED, NOT_SET, etc."""
    days, _, clock = text.strip().rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        whole_days = int(days) if days else 0
    except ValueError:
        return None
    if not 1 <= len(parts) <= 3:
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + p
    return whole_days * 86400 + seconds


def slurm_time_left() -> float | None:
    """Seconds until this SLURM job's time limit (squeue %L), or None outside a job or without squeue.
    SLURM's --signal reaches a batch step's processes only through srun, so qvpo asks for the time itself."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or not job.isdigit():
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_slurm_duration(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


def pick_device(name: str) -> torch.device:
    """auto: CUDA when present, else the CPU; never hard-coded."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)  # MT19937: its key array travels as a tensor (weights_only)
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].numpy().astype(np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
