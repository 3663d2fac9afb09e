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


@pytest.mark.parametrize("variant, setting, value", [("qsm_mq10", "m_q", 10.0), ("qsm_mq1", "m_q", 1.0)])
def test_ablation_variants_change_one_setting_of_the_cpu_presets_qsm(variant, setting, value):
    config = yaml.safe_load((CONFIG / "config.yaml").read_text())
    overlay = yaml.safe_load((CONFIG / "cpu-ablations.yaml").read_text())
    variants = {**config["variants"], **overlay["variants"]}  # Snakemake merges the dicts
    assert variants[variant] == {"algo": "qsm", "set": {setting: value}}
    assert variants["qvpo_no_entropy"]["set"] == {"omega_ent": 0.0, "omega_ent_min": 0.0}  # both, not the floor's 0.002
    assert set(overlay["grids"]["ablations"][0]["algos"]) == {"qvpo", "qvpo_no_entropy", "qsm", "qsm_mq10", "qsm_mq1"}
