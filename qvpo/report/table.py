"""The results table: one row per (env, algo) from each run's final evaluation, beside the paper's.

A run's score is the mean return of its final evaluation (`qvpo evaluate`). Per
(env, algo): mean and std (ddof=0) over seeds, IQM with a 95% stratified-bootstrap
interval, mean wall time per run, and the published numbers of the QVPO paper
(Table 1, v3 environments) and of CleanRL (v4) where they exist.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from qvpo.checkpoint import atomic_write_text
from qvpo.report.runs import Run
from qvpo.report.stats import BOOTSTRAP_REPS, iqm, stratified_bootstrap_ci

PUBLISHED = {"paper": "paper_table1.csv", "cleanrl_v4": "cleanrl_v4_1M.csv"}
"""Package data: prefix of the table's columns -> file (each file's header comment names its source)."""
COLUMNS = ["env", "algo", "n_seeds", "mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high", "wall_time_mean_s",
           "paper_mean", "paper_std", "cleanrl_v4_mean", "cleanrl_v4_std"]


def published(name: str) -> pd.DataFrame:
    with resources.files("qvpo.report").joinpath(PUBLISHED[name]).open() as f:
        return pd.read_csv(f, comment="#")


def published_key(env: str, algo: str) -> tuple[str, str]:
    """Hopper-v5, qvpo -> Hopper, QVPO: how the published tables name them (any env version)."""
    return re.sub(r"-v\d+$", "", env), algo.upper()


def summarize(runs: list[Run]) -> pd.DataFrame:
    """table.csv's rows, in the order the runs come (grid order)."""
    scores: dict[tuple[str, str], list[float]] = {}
    walls: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        key = (run.env, run.algo)
        scores.setdefault(key, []).append(run.final()["return_mean"])
        walls.setdefault(key, []).append(run.meta["wall_time_s"])
    refs = {name: published(name).set_index(["env", "algo"]) for name in PUBLISHED}
    rows = []
    for (env, algo), values in scores.items():
        x = np.asarray(values, dtype=float)
        low, high = stratified_bootstrap_ci([x])
        row = {"env": env, "algo": algo, "n_seeds": len(x), "mean": x.mean(), "std": x.std(), "iqm": iqm(x),
               "iqm_ci_low": low, "iqm_ci_high": high, "wall_time_mean_s": float(np.mean(walls[(env, algo)]))}
        for name, ref in refs.items():
            found = ref.loc[published_key(env, algo)] if published_key(env, algo) in ref.index else None
            row[f"{name}_mean"] = np.nan if found is None else found["mean"]
            row[f"{name}_std"] = np.nan if found is None else found["std"]
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def settings_changes(runs: list[Run]) -> list[str]:
    """One line per algorithm (and env, where they differ): the settings its runs changed from the defaults."""
    from qvpo import algos
    from qvpo.settings import as_dict, resolve

    by_algo: dict[str, dict[str, str]] = {}
    for run in runs:
        config = yaml.safe_load((run.path / "config.yaml").read_text())
        defaults = as_dict(resolve(algos.get(config["algo"]).Settings, {}))
        changed = {k: v for k, v in config["settings"].items() if _plain(v) != _plain(defaults.get(k))}
        text = ", ".join(f"{k}={_plain(v)}" for k, v in sorted(changed.items())) or "none"
        by_algo.setdefault(run.algo, {})[run.env] = text
    lines = []
    for algo, per_env in by_algo.items():
        if len(set(per_env.values())) == 1:
            lines.append(f"{algo}: {next(iter(per_env.values()))}")
        else:
            lines += [f"{algo} on {env}: {text}" for env, text in per_env.items()]
    return lines


def _plain(value):
    """Tuples and lists compare (and print) alike."""
    return json.loads(json.dumps(value))


def steps_line(runs: list[Run]) -> str:
    steps: dict[str, set[int]] = {}
    for run in runs:
        steps.setdefault(run.algo, set()).add(run.meta["steps"])
    if len({s for v in steps.values() for s in v}) == 1:
        return f"{next(iter(next(iter(steps.values())))):,} environment steps per run"
    return "environment steps per run: " + "; ".join(
        f"{algo} {'/'.join(f'{s:,}' for s in sorted(v))}" for algo, v in steps.items())


def cell(mean: float, std: float) -> str:
    return "N/A" if np.isnan(mean) else f"{mean:.1f} ({std:.1f})"


def grid_table(table: pd.DataFrame, envs: list[str], algos: list[str], value, best_col: str | None) -> list[str]:
    """A markdown table with envs as rows and algos as columns (the paper's layout); the best per row in bold,
    every one of them when several tie (InvertedPendulum's ceiling of 1000 is often reached by many)."""
    lines = ["| Environment | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    indexed = table.set_index(["env", "algo"])
    for env in envs:
        present = [a for a in algos if (env, a) in indexed.index]
        if not present:  # an env outside this table's blocks
            continue
        best = set()
        if best_col is not None:
            column = indexed.loc[[(env, a) for a in present], best_col].dropna()
            best = {a for (_, a), v in column.items() if v == column.max()}
        cells = []
        for algo in algos:
            text = value(indexed.loc[(env, algo)]) if algo in present else "-"
            cells.append(f"**{text}**" if algo in best else text)
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    return lines


def markdown(table: pd.DataFrame, runs: list[Run], envs: list[str], algos: list[str], title: str,
             notes: list[str], missing: int) -> str:
    episodes = sorted({run.final()["episodes"] for run in runs})
    lines = [f"# {title}", ""]
    lines += [*notes, ""] if notes else []
    lines += [
        (f"- {steps_line(runs)}; a run's score is the mean return of its final evaluation "
         f"({'/'.join(map(str, episodes))} episodes, `qvpo evaluate`, start states unseen in training)."),
        "- Cells: mean (std) over seeds (std with ddof=0); the best mean per environment in bold (each of a tie).",
        "- Settings changed from each algorithm's defaults: " + "; ".join(settings_changes(runs)) + ".",
        ("- Environments: gymnasium MuJoCo v5. The paper used v3 (mujoco-py), so its numbers are beside ours, "
         "not comparable one to one."),
    ]
    if missing:
        lines.append(f"- **{missing} run(s) of the grid were missing or unfinished and are left out** "
                     "(`--allow-missing`).")
    lines += ["", "## This reproduction", ""]
    lines += grid_table(table, envs, algos, lambda r: f"{cell(r['mean'], r['std'])}", "mean")
    lines += ["", f"## IQM [95% stratified-bootstrap interval, {BOOTSTRAP_REPS:,} resamples], seeds", ""]
    lines += grid_table(table, envs, algos,
                        lambda r: f"{r['iqm']:.1f} [{r['iqm_ci_low']:.1f}, {r['iqm_ci_high']:.1f}], "
                                  f"n={int(r['n_seeds'])}", "iqm")
    paper_algos = [a for a in algos if a.upper() in set(published("paper")["algo"])]
    paper_envs = [e for e in envs if table.loc[table["env"] == e, "paper_mean"].notna().any()]
    if paper_envs:
        lines += ["", "## The paper's Table 1 (QVPO, NeurIPS 2024; v3 environments)", ""]
        lines += grid_table(table, paper_envs, paper_algos, lambda r: cell(r["paper_mean"], r["paper_std"]),
                            "paper_mean")
    lines += ["", "Mean wall time per run (s): " + "; ".join(
        f"{r.env} {r.algo} {r.wall_time_mean_s:,.1f}" for r in table.itertuples()) + ".", ""]
    return "\n".join(lines)


def write(table: pd.DataFrame, md: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "table.csv", table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / "table.md", md)
