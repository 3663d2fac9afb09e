"""The results table: one row per (env, algo) from each run's final evaluation, beside the paper's.

A run's score is the mean return of its final evaluation (`qvpo evaluate`); a reference run's
(another library's) is its last evaluation. Per (env, algo): mean and std (ddof=0) over seeds,
IQM with a 95% stratified-bootstrap interval, the mean of each run's last three evaluations,
for a policy that also logs one-sample evaluations (QVPO) those beside its best-of-K ones, mean
wall time per run, and the published numbers of the QVPO paper (Table 1, v3 environments) and of
CleanRL (v4) where they exist.
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
COLUMNS = ["env", "algo", "n_seeds", "mean", "std", "iqm", "iqm_ci_low", "iqm_ci_high", "last3_mean", "last3_std",
           "single_last_mean", "single_last_std", "single_last3_mean", "single_last3_std", "wall_time_mean_s",
           "paper_mean", "paper_std", "cleanrl_v4_mean", "cleanrl_v4_std"]
SINGLE = "return_mean_single"
"""eval.csv's one-policy-sample evaluation (QVPO's K = 1 beside its best of K)."""


def published(name: str) -> pd.DataFrame:
    with resources.files("qvpo.report").joinpath(PUBLISHED[name]).open() as f:
        return pd.read_csv(f, comment="#")


def published_key(env: str, algo: str) -> tuple[str, str]:
    """Hopper-v5, qvpo -> Hopper, QVPO: how the published tables name them (any env version)."""
    return re.sub(r"-v\d+$", "", env), algo.upper()


def mean_std(values: list) -> tuple[float, float]:
    """Mean and std (ddof=0) of the values that exist (NaN, NaN: none)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return (x.mean(), x.std()) if len(x) else (np.nan, np.nan)


def last_single(run: Run) -> float | None:
    evals = run.csv("eval.csv")
    return float(evals[SINGLE].iloc[-1]) if SINGLE in evals else None


def summarize(runs: list[Run]) -> pd.DataFrame:
    """table.csv's rows, in the order the runs come (grid order)."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.env, run.algo), []).append(run)
    refs = {name: published(name).set_index(["env", "algo"]) for name in PUBLISHED}
    rows = []
    for (env, algo), group in groups.items():
        x = np.asarray([run.score() for run in group], dtype=float)
        low, high = stratified_bootstrap_ci([x])
        row = {"env": env, "algo": algo, "n_seeds": len(x), "mean": x.mean(), "std": x.std(), "iqm": iqm(x),
               "iqm_ci_low": low, "iqm_ci_high": high,
               "wall_time_mean_s": float(np.mean([run.meta["wall_time_s"] for run in group]))}
        row["last3_mean"], row["last3_std"] = mean_std([run.last_mean() for run in group])
        row["single_last_mean"], row["single_last_std"] = mean_std([last_single(run) for run in group])
        row["single_last3_mean"], row["single_last3_std"] = mean_std([run.last_mean(SINGLE) for run in group])
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
    for run in (run for run in runs if not run.reference):
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


def reference_line(algo: str, runs: list[Run]) -> str:
    versions = sorted({json.dumps(run.meta.get("versions", {}), sort_keys=True) for run in runs})
    return (f"- {algo}: a reference run of another library (`{runs[0].meta.get('command', '').split(' --seed')[0]}`"
            f", {', '.join(f'{k} {v}' for k, v in json.loads(versions[0]).items())}), scored by its last "
            f"evaluation ({runs[0].meta.get('eval_episodes')} episodes, deterministic policy), as it keeps no "
            "checkpoint for `qvpo evaluate`.")


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
    ours = [run for run in runs if not run.reference]
    episodes = sorted({run.final()["episodes"] for run in ours})
    lines = [f"# {title}", ""]
    lines += [*notes, ""] if notes else []
    lines += [
        (f"- {steps_line(runs)}; a run's score is the mean return of its final evaluation "
         f"({'/'.join(map(str, episodes))} episodes, `qvpo evaluate`, start states unseen in training)."),
        "- Cells: mean (std) over seeds (std with ddof=0); the best mean per environment in bold (each of a tie).",
        "- Settings changed from each algorithm's defaults: " + "; ".join(settings_changes(ours)) + ".",
        *(reference_line(algo, [run for run in runs if run.algo == algo])
          for algo in dict.fromkeys(run.algo for run in runs if run.reference)),
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
    lines += ["", "## Mean of each run's last three evaluations, mean (std) over seeds", ""]
    lines += grid_table(table, envs, algos, lambda r: cell(r["last3_mean"], r["last3_std"]), "last3_mean")
    single = table[table["single_last_mean"].notna()]
    if len(single):
        lines += ["", "## One policy sample (K = 1) beside the evaluation policy (best of K by Q)", "",
                  "| Environment | algorithm | last evaluation, best of K | last evaluation, one sample "
                  "| last three, best of K | last three, one sample |", "|---|---|---|---|---|---|"]
        for r in single.itertuples():
            last = [e for e in runs if (e.env, e.algo) == (r.env, r.algo)]
            best_last = mean_std([float(e.csv("eval.csv")["return_mean"].iloc[-1]) for e in last])
            lines.append(f"| {r.env} | {r.algo} | {cell(*best_last)} | {cell(r.single_last_mean, r.single_last_std)} "
                         f"| {cell(r.last3_mean, r.last3_std)} | {cell(r.single_last3_mean, r.single_last3_std)} |")
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
