"""Reporting commands: `qvpo aggregate` (runs -> table) and `qvpo plot` (runs -> figures).

Both read a grid (--runs ROOT --block ENVS ALGOS SEEDS ...) of run directories
ROOT/<env>/<algo>/seed<S>/ and use only complete runs; a missing or unfinished one
stops them with its name unless --allow-missing.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
COMMAND_MODULES = {"aggregate": "table", "plot": "plots"}


def sources(command: str) -> list[Path]:
    """The code `qvpo COMMAND` runs: this module, the command's module, the qvpo.report modules they
    import (transitively) and the package data files they name."""
    files, todo = set(), ["__init__", COMMAND_MODULES[command]]
    while todo:
        path = PACKAGE_DIR / f"{todo.pop()}.py"
        if path in files:
            continue
        files.add(path)
        text = path.read_text()
        todo += re.findall(r"qvpo\.report\.(\w+)", text)
        files |= {PACKAGE_DIR / name for name in re.findall(r"\"([\w.-]+\.csv)\"", text)
                  if (PACKAGE_DIR / name).exists()}
    return sorted(files)


def code_hash(command: str) -> str:
    """sha256 (16 hex) of `sources(command)`, names and contents.

    The workflow names its provenance files with it, so editing the plotting code reruns
    the plots and nothing else.
    """
    h = hashlib.sha256()
    for path in sources(command):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
