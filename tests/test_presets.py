"""The presets' settings: what the mid preset keeps of the cpu preset's diffusion settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[1] / "config"


def requested_settings(config: dict, algo: str, env: str) -> dict:
    """The `--set` values a preset asks for: defaults, then the matching overrides in order (as the workflow)."""
    settings = dict(config["defaults"]["set"])
    for entry in config.get("overrides", []):
        if algo in entry.get("algos", [algo]) and env in entry.get("envs", [env]):
            settings.update(entry.get("set", {}))
    return settings


@pytest.mark.parametrize("algo", ["qvpo", "dipo", "qsm"])
def test_mid_keeps_the_cpu_presets_diffusion_settings_but_the_departures_it_names(algo):
    cpu = yaml.safe_load((CONFIG / "cpu.yaml").read_text())
    mid = yaml.safe_load((CONFIG / "mid.yaml").read_text())
    ours = requested_settings(mid, algo, "Hopper-v5")
    theirs = requested_settings(cpu, algo, "InvertedPendulum-v5")
    departures = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    assert departures, "the mid preset's evaluation schedule differs from the cpu preset's"
    for key in departures:  # each named, with its reason, in the description the table prints
        assert key in mid["description"], f"{algo}: {key} differs from cpu.yaml but the description does not say so"
