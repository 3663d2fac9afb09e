"""The algorithm registry: name -> module:class, imported only when asked for.

The built-in algorithms are BUILT_IN. Another package adds one without editing this project by
declaring an entry point in the group PLUGIN_GROUP (pyproject.toml:
`[project.entry-points."qvpo.algorithms"] toy = "toy_algo:Toy"`); the CLI, the workflow's schema
checks and the code identity (qvpo.identity) then know it like the others.
"""
from __future__ import annotations

import importlib
import re
from importlib import metadata

from qvpo.errors import UserError

BUILT_IN = {
    "sac": "qvpo.algos.sac:SAC",
    "td3": "qvpo.algos.td3:TD3",
    "qvpo": "qvpo.algos.qvpo:QVPO",
    "ppo": "qvpo.algos.ppo:PPO",
    "spo": "qvpo.algos.spo:SPO",
    "dipo": "qvpo.algos.dipo:DIPO",
    "qsm": "qvpo.algos.qsm:QSM",
    "dacer": "qvpo.algos.dacer:DACER",
    "sdac": "qvpo.algos.sdac:SDAC",
    "dpmd": "qvpo.algos.dpmd:DPMD",
}
PLUGIN_GROUP = "qvpo.algorithms"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def plugins() -> dict[str, str]:
    """Algorithms other packages register as entry points of PLUGIN_GROUP (built-in names stay built-in)."""
    found = {ep.name: ep.value for ep in metadata.entry_points(group=PLUGIN_GROUP)}
    return {name: target for name, target in found.items() if name not in BUILT_IN and NAME_PATTERN.match(name)}


ALGORITHMS = {**BUILT_IN, **plugins()}


def get(name: str):
    """The agent class of algorithm `name`, or a UserError listing the known ones."""
    if not NAME_PATTERN.match(name or "") or name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
