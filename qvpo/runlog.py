"""The run directory: resolved config, CSV logs, meta.json, identity and code hash.

    RUN_DIR/config.yaml    resolved settings (tracked)
    RUN_DIR/eval.csv       one row per evaluation (tracked)
    RUN_DIR/train.csv      one row per training episode, with mean losses since the last row (tracked)
    RUN_DIR/actions.csv    recorded policy samples, when asked for (tracked)
    RUN_DIR/meta.json      identity, code hash, versions, device, threads, status, resumes (tracked)
    RUN_DIR/checkpoint/    everything needed to continue exactly (never tracked)
"""
from __future__ import annotations

import csv
import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path

import yaml

from qvpo.checkpoint import atomic_write_text
from qvpo.settings import NOT_IDENTITY

PACKAGE_DIR = Path(__file__).resolve().parent
TRAINING_EXCLUDED = ("report", "bench")
"""Subpackages that cannot change what a training run learns or records."""


TRAINING_ROOTS = ("loop", "cli")
"""Modules a training run starts from; with the algorithm's module, their qvpo imports are hashed."""
IMPORT = re.compile(r"^\s*(?:from\s+qvpo((?:\.\w+)*)\s+import\s+([\w, ()]+)|import\s+qvpo((?:\.\w+)+))", re.M)


def _module_path(dotted: str) -> Path | None:
    """qvpo.a.b -> its file (a module or a package's __init__), or None."""
    base = PACKAGE_DIR.joinpath(*dotted.split(".")[1:]) if "." in dotted else PACKAGE_DIR
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def training_sources(algo: str) -> list[Path]:
    """The package files a training run of `algo` can execute: the import closure of the loop, the
    CLI and the algorithm's module. Other algorithms, the algorithm registry (a name -> module table)
    and the report and bench subpackages stay out, so editing one algorithm changes only its runs."""
    todo = [f"qvpo.{m}" for m in TRAINING_ROOTS] + [f"qvpo.algos.{algo}"]
    seen: set[Path] = set()
    while todo:
        path = _module_path(todo.pop())
        if path is None or path in seen:
            continue
        rel = path.relative_to(PACKAGE_DIR)
        if rel.parts[0] in TRAINING_EXCLUDED or rel == Path("algos/__init__.py"):
            continue
        seen.add(path)
        for package, names, module in IMPORT.findall(path.read_text()):
            if module:
                todo.append(f"qvpo{module}")
            else:
                todo.append(f"qvpo{package}")
                todo += [f"qvpo{package}.{n.strip()}" for n in names.strip("()").split(",") if n.strip()]
    return sorted(seen)


def code_hash(algo: str) -> str:
    """sha256 (16 hex) over `training_sources(algo)`, names and contents."""
    h = hashlib.sha256()
    for path in training_sources(algo):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def identity(algo: str, env_id: str, seed: int, settings: dict, code: str) -> str:
    learned = {k: v for k, v in settings.items() if k not in NOT_IDENTITY}
    blob = json.dumps({"algo": algo, "env": env_id, "seed": seed, "settings": learned, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
