"""What a run records and how: the resolved config, the CSV logs, meta.json (identity, code hash, machine),
and the progress of a long run on stderr. The run directory's layout is qvpo.rundir's.
"""
from __future__ import annotations

import csv
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qvpo import identity as code_identity
from qvpo.checkpoint import atomic_write_text
from qvpo.settings import NOT_IDENTITY

PACKAGE_DIR = Path(__file__).resolve().parent


def code_hash(algo: str) -> str:
    """The code identity of `algo`'s training (qvpo.identity): what it computes, not its bytes."""
    return code_identity.current(algo).hash


def code_definitions(algo: str) -> dict[str, str]:
    """Each definition `algo`'s training reaches -> its digest: a refusal names the ones that changed."""
    return code_identity.current(algo).definitions


def training_sources(algo: str) -> list[Path]:
    """The package files holding the definitions `algo`'s training reaches."""
    return list(code_identity.current(algo).files)


def identity(algo: str, env_id: str, seed: int, settings: dict, code: str) -> str:
    learned = {k: v for k, v in settings.items() if k not in NOT_IDENTITY}
    blob = json.dumps({"algo": algo, "env": env_id, "seed": seed, "settings": learned, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def marker_key(run: str, env_id: str, seed: int, steps: int, identity: str) -> str:
    """The key of a run's pipeline marker done-<key>.json: run (the algorithm or variant name of its
    directory), env, seed, the steps asked for and the run's identity."""
    return _short_hash({"run": run, "env": env_id, "seed": seed, "steps": steps, "identity": identity})


def final_key(marker: str, episodes: int, evaluate_code: str) -> str:
    """The key of a run's final evaluation final-<key>.json: its marker's key, the episodes and the code
    identity of `qvpo evaluate` for its algorithm."""
    return _short_hash({"marker": marker, "episodes": episodes, "evaluate_code": evaluate_code})


def _short_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve")
"""CPU features that decide which kernels torch and qvpo.native run, hence how results round."""


def machine(device: str = "cpu") -> dict:
    """The machine kind a run's numbers are bit-exact on: CPU vendor, model and instruction sets, and the
    GPU when it ran on one. Recorded in meta.json, never part of the identity."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    info: dict[str, str] = {}
    for line in text.splitlines():  # the first processor's lines
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cpu = {"arch": platform.machine(), "vendor": info.get("vendor_id", ""),
           "model": info.get("model name") or platform.processor() or "unknown",
           "isa": sorted(flags & set(ISA_FLAGS))}
    found = {"cpu": cpu}
    if device.startswith("cuda"):
        import torch

        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import gymnasium
    import numpy
    import torch

    from qvpo import __version__

    found = {"qvpo": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "gymnasium": gymnasium.__version__, "numpy": numpy.__version__}
    try:
        import mujoco

        found["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    return found


def read_meta(run_dir: Path) -> dict | None:
    path = run_dir / "meta.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_meta(run_dir: Path, meta: dict) -> None:
    atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def write_config(run_dir: Path, algo: str, env_id: str, seed: int, settings: dict) -> None:
    text = yaml.safe_dump({"algo": algo, "env": env_id, "seed": seed, "settings": settings}, sort_keys=False)
    atomic_write_text(run_dir / "config.yaml", text)


class CsvLog:
    """An append-only CSV with a fixed header, flushed per row, truncatable to a step on resume."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Keep rows with step <= `step` (rows written after the checkpoint we resume from go)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _complete(r) and int(r["step"]) <= step]
        self.reset()
        for r in rows:
            self.write(r)

    def reset(self) -> None:
        self.close()
        atomic_write_text(self.path, ",".join(self.columns) + "\n")

    def write(self, row: dict) -> None:
        if self._file is None:
            if not self.path.exists():
                self.reset()
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, self.columns, extrasaction="ignore")
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _complete(row: dict) -> bool:
    """False for a row a kill cut short mid-write."""
    return None not in row.values() and None not in row and row["step"].isdigit()


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    return v


class Progress:
    """A tqdm bar on a terminal; otherwise a plain log line every ~30 s."""

    def __init__(self, total: int, start: int, run_dir: Path, force: bool | None):
        self.tty = sys.stderr.isatty() if force is None else force
        self.total, self.run_dir = total, run_dir
        self.t0, self.s0, self.last_line = time.monotonic(), start, 0.0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc=run_dir.name)

    def update(self, step: int, last_eval: float | None) -> None:
        if self.bar is not None:
            self.bar.n = step
            if last_eval is not None:
                self.bar.set_postfix_str(f"eval {last_eval:.1f}", refresh=False)
            self.bar.refresh() if step % 100 == 0 else None
            return
        now = time.monotonic()
        if now - self.last_line >= 30 or step >= self.total:
            rate = (step - self.s0) / max(now - self.t0, 1e-9)
            ev = "n/a" if last_eval is None else f"{last_eval:.1f}"
            print(f"qvpo: {self.run_dir} step {step}/{self.total} ({rate:.0f} steps/s) last eval {ev}",
                  file=sys.stderr, flush=True)
            self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
