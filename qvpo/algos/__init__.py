"""The algorithm registry: name -> module:class, imported only when asked for."""
from __future__ import annotations

import importlib
import re

from qvpo.errors import UserError

ALGORITHMS = {
    "sac": "qvpo.algos.sac:SAC",
    "td3": "qvpo.algos.td3:TD3",
    "qvpo": "qvpo.algos.qvpo:QVPO",
    "ppo": "qvpo.algos.ppo:PPO",
    "spo": "qvpo.algos.spo:SPO",
    "dipo": "qvpo.algos.dipo:DIPO",
    "qsm": "qvpo.algos.qsm:QSM",
}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def get(name: str):
    """The agent class of algorithm `name`, or a UserError listing the known ones."""
    if not NAME_PATTERN.match(name or "") or name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
