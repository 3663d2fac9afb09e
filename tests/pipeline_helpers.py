"""Running the workflow in a temporary directory, and reading what Snakemake planned."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import trim_mean

PROJECT = Path(__file__).resolve().parents[1]

# A grid of a few hundred steps: 2 algorithms x 1 env x 2 seeds, one figure of each curve kind.
TINY_CONFIG = {
    "preset": "tiny",
    "description": "A test grid: a few hundred steps per run.",
    "results": "results/tiny",
    "final_eval_episodes": 2,
    "threads": 1,
    "defaults": {
        "steps": 300,
        "set": {"eval_every": 100, "eval_episodes": 2, "warmup_steps": 100, "batch_size": 32, "hidden": [32, 32]},
        "resources": {"mem_mb": 1000, "runtime": 10, "gpu": 0},
    },
    "grids": {"table": [{"envs": ["InvertedPendulum-v5"], "algos": ["sac", "td3"], "seeds": [0, 1]}]},
    "figures": [
        {"name": "eval", "kind": "eval-curves", "grid": "table", "title": "tiny: evaluation"},
        {"name": "train", "kind": "train-curves", "grid": "table", "window": 100, "title": "tiny: training"},
    ],
}


def write_config(directory: Path, config: dict, name: str = "test.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, snakefile: Path = PROJECT / "Snakefile", env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """`snakemake` on the project's Snakefile with `workdir` as working directory (results, .snakemake)."""
    cmd = ["snakemake", "-s", str(snakefile), "--directory", str(workdir), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})})


def planned_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run (-n) printed."""
    jobs, rule = [], None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m.group(1)
        elif rule and (m := re.match(r"^output: ([^,\s]+)", line.strip())):
            jobs.append((rule, m.group(1)))
            rule = None
    return jobs


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry run."""
    counts = {}
    block = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def expected_table(results: Path, envs: list[str], algos: list[str], seeds: list[int]) -> pd.DataFrame:
    """What table.csv must hold, computed here from each run's final-*.json."""
    rows = []
    for env in envs:
        for algo in algos:
            scores = []
            for seed in seeds:
                (final,) = (results / "runs" / env / algo / f"seed{seed}").glob("final-*.json")
                scores.append(json.loads(final.read_text())["return_mean"])
            x = np.array(scores)
            rows.append({"env": env, "algo": algo, "n_seeds": len(x), "mean": x.mean(), "std": x.std(),
                         "iqm": trim_mean(x, 0.25)})
    return pd.DataFrame(rows)


def check_table(results: Path, config: dict) -> pd.DataFrame:
    (grid,) = config["grids"]["table"]
    table = pd.read_csv(results / "table.csv")
    expected = expected_table(results, grid["envs"], grid["algos"], grid["seeds"])
    assert list(table["env"]) == list(expected["env"]) and list(table["algo"]) == list(expected["algo"])
    assert list(table["n_seeds"]) == list(expected["n_seeds"])
    for column in ("mean", "std", "iqm"):
        np.testing.assert_allclose(table[column], expected[column], atol=1e-4, err_msg=column)
    assert (table["iqm_ci_low"] <= table["iqm"] + 1e-4).all() and (table["iqm"] <= table["iqm_ci_high"] + 1e-4).all()
    return table


def write_run(root, env, algo, seed, score, status="complete", steps=600):
    """A run directory as `qvpo train` + the workflow leave it, with made-up numbers."""
    run = root / env / algo / f"seed{seed}"
    run.mkdir(parents=True)
    meta = {"algo": algo, "env": env, "seed": seed, "status": status, "steps": steps, "step": steps,
            "wall_time_s": 10.0 * (seed + 1)}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "config.yaml").write_text(yaml.safe_dump({"algo": algo, "env": env, "seed": seed,
                                                     "settings": {"eval_every": 200}}))
    (run / "final-0123456789abcdef.json").write_text(json.dumps(
        {"step": steps, "status": status, "episodes": 10, "return_mean": score, "return_std": 1.0}))
    steps_logged = np.arange(200, steps + 1, 200)
    pd.DataFrame({"step": steps_logged, "return_mean": score * steps_logged / steps, "return_std": 1.0,
                  "episodes": 10, "wall_time_s": 1.0}).to_csv(run / "eval.csv", index=False)
    episodes = np.arange(20, steps + 1, 20)
    pd.DataFrame({"step": episodes, "episode_return": score * episodes / steps + seed,
                  "episode_length": 20}).to_csv(run / "train.csv", index=False)
    rng = np.random.default_rng(seed)
    rows = [{"step": s, "sample": j, "a0": x, "a1": y} for s in (200, 400, 600)
            for j, (x, y) in enumerate(rng.uniform(-1, 1, size=(50, 2)))]
    pd.DataFrame(rows).to_csv(run / "actions.csv", index=False)
    return run
