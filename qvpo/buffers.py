"""Replay storage, saved incrementally.

The buffer is cut into fixed blocks of rows. A checkpoint rewrites only the blocks
written since the previous one, each to a new file name, and the checkpoint's state
file lists the files it owns; files no state lists are deleted after the state is
committed. A 1M-transition Humanoid buffer (~3 GB) thus costs one block per
checkpoint, and a crash mid-save never mixes rows of two checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qvpo import checkpoint

BLOCK_ROWS = 10_000
"""Rows per saved block: a checkpoint interval of 10k steps dirties at most two."""


class ReplayBuffer:
    """A ring buffer of named float32 columns with uniform sampling."""

    def __init__(self, capacity: int, columns: dict[str, int], seed: int, device: torch.device):
        self.capacity = capacity
        self.data = {name: np.zeros((capacity, width), dtype=np.float32) for name, width in columns.items()}
        self.pos = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)
        self.device = device
        self._dirty: set[int] = set()
        self._files: dict[int, str] = {}

    def add(self, **rows: np.ndarray) -> np.ndarray:
        """Append n rows (each column [n, width] or [n]); returns their indices."""
        n = len(next(iter(rows.values())))
        idx = (self.pos + np.arange(n)) % self.capacity
        for name, value in rows.items():
            self.data[name][idx] = np.asarray(value, dtype=np.float32).reshape(n, -1)
        self._dirty.update((idx // BLOCK_ROWS).tolist())
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        return idx

    def sample_indices(self, batch_size: int) -> np.ndarray:
        return self.rng.integers(0, self.size, size=batch_size)

    def get(self, idx: np.ndarray, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        names = names or tuple(self.data)
        return {k: torch.from_numpy(self.data[k][idx]).to(self.device, non_blocking=True) for k in names}

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.get(self.sample_indices(batch_size))

    def write(self, name: str, idx: np.ndarray, values: torch.Tensor) -> None:
        """Overwrite rows of one column in place (DIPO's improved actions)."""
        self.data[name][idx] = values.detach().to("cpu", torch.float32).numpy()
        self._dirty.update(np.unique(idx // BLOCK_ROWS).tolist())

    # -- incremental checkpointing -------------------------------------------------
    def save_blocks(self, directory: Path, prefix: str, tag: int) -> dict:
        """Write dirty blocks as new files; return the state describing the whole buffer."""
        for block in sorted(self._dirty):
            lo, hi = block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, self.capacity)
            hi = min(hi, max(self.size, lo))
            name = f"{prefix}-block{block:05d}-{tag}.pt"
            checkpoint.save({k: torch.from_numpy(v[lo:hi].copy()) for k, v in self.data.items()}, directory / name)
            self._files[block] = name
        self._dirty.clear()
        return {"pos": self.pos, "size": self.size, "rng": self.rng.bit_generator.state, "files": dict(self._files)}

    def load_blocks(self, directory: Path, state: dict) -> None:
        for block, name in state["files"].items():
            arrays = checkpoint.load(directory / name)
            lo = int(block) * BLOCK_ROWS
            for k, v in arrays.items():
                self.data[k][lo:lo + len(v)] = v.numpy()
        self.size = state["size"]
        # Sampling is uniform, so row order is free: a run extended to a larger buffer continues at `size`.
        self.pos = state["pos"] if self.size == self.capacity else self.size
        self.rng.bit_generator.state = state["rng"]
        self._files = {int(b): n for b, n in state["files"].items()}
        self._dirty.clear()

    def files(self) -> set[str]:
        return set(self._files.values())
