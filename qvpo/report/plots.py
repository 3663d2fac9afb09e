"""The paper's figures with seaborn, as PNG and PDF that are byte-identical when rebuilt.

- eval-curves:    evaluation return against environment steps, one panel per env,
                  mean over seeds with a +/- 1 std band (figure 3's layout); an agent's
                  extra evaluation modes (QVPO's one-sample policy) dashed beside it;
- train-curves:   training-episode returns, each run smoothed over a window of steps
                  before averaging over seeds (what the paper's figures 3-5 plot);
- bandit-actions: where the bandit policy's samples lie as training goes on, one row
                  per algorithm (QVPO with and without the entropy term), over the
                  reward's contour lines (figure 2).
Rebuilding the same figure from the same runs gives the same bytes: figures drawn by
matplotlib's Agg renderer without pyplot (no GUI backend, no global state), no
timestamps or software versions in the files, no randomness.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from qvpo.errors import UserError
from qvpo.report.runs import Run

PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
DPI = 150
CURVE_POINTS = 200
"""Points of a smoothed training curve (a common grid, so seeds can be averaged)."""
LEGEND_CHARS_PER_PANEL, LEGEND_ENTRY_PAD = 44, 6
"""Legend characters that fit across one panel's width; an entry's line and gaps, in characters."""


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.png"), Path(f"{stem}.pdf")]
    fig.savefig(paths[0], dpi=DPI, metadata=PNG_METADATA)
    fig.savefig(paths[1], metadata=PDF_METADATA)
    return paths


EVAL_MODE = "evaluate"
"""The evaluation policy's mode (eval.csv's return_mean); other modes log return_mean_<mode>."""


def eval_curves(runs: list[Run]) -> pd.DataFrame:
    """Every run's evaluation returns, one row per step and evaluation mode (column `mode`)."""
    frames = []
    for run in runs:
        df = run.csv("eval.csv")
        columns = {EVAL_MODE: "return_mean"}
        columns.update({c.removeprefix("return_mean_"): c for c in df.columns if c.startswith("return_mean_")})
        for mode, column in columns.items():
            frames.append(pd.DataFrame({"env": run.env, "algo": run.algo, "seed": run.seed, "mode": mode,
                                        "step": df["step"], "return": df[column]}))
    return pd.concat(frames, ignore_index=True)


def smoothed(steps: np.ndarray, returns: np.ndarray, grid: np.ndarray, window: int) -> np.ndarray:
    """Mean of the episode returns that ended in (g - window, g] for each grid step g (NaN if none)."""
    order = np.argsort(steps, kind="stable")
    steps, returns = steps[order], returns[order]
    cum = np.concatenate([[0.0], np.cumsum(returns)])
    hi = np.searchsorted(steps, grid, side="right")
    lo = np.searchsorted(steps, grid - window, side="right")
    count = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (cum[hi] - cum[lo]) / count, np.nan)


def train_curves(runs: list[Run], window: int) -> pd.DataFrame:
    if window <= 0:
        raise UserError(f"--window must be positive, got {window}")
    frames = []
    for env in dict.fromkeys(run.env for run in runs):
        env_runs = [run for run in runs if run.env == env]
        last = max(run.meta["step"] for run in env_runs)
        grid = np.unique(np.linspace(0, last, CURVE_POINTS).round().astype(np.int64))
        for run in env_runs:
            df = run.csv("train.csv")
            values = smoothed(df["step"].to_numpy(), df["episode_return"].to_numpy(dtype=float), grid, window)
            frames.append(pd.DataFrame({"env": env, "algo": run.algo, "seed": run.seed, "step": grid,
                                        "return": values}).dropna())
    return pd.concat(frames, ignore_index=True)


def curves_figure(data: pd.DataFrame, algos: list[str], ylabel: str, title: str):
    envs = list(dict.fromkeys(data["env"]))
    cols = min(len(envs), 3)
    rows = -(-len(envs) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    palette = dict(zip(algos, sns.color_palette("tab10", len(algos))))
    modes = list(dict.fromkeys(data["mode"])) if "mode" in data else []
    dashes = {mode: "" if mode == EVAL_MODE else (4, 2) for mode in modes}
    styled = len(modes) > 1
    for ax, env in zip(axes.flat, envs):
        sns.lineplot(data=data[data["env"] == env], x="step", y="return", hue="algo", hue_order=algos,
                     palette=palette, estimator="mean", errorbar="sd", ax=ax, legend=False, linewidth=1.2,
                     **({"style": "mode", "style_order": modes, "dashes": dashes} if styled else {}))
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(ylabel)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    for ax in list(axes.flat)[len(envs):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=palette[a], label=a) for a in algos if a in set(data["algo"])]
    if styled:
        handles += [Line2D([], [], color="0.3", dashes=dashes[m], label="evaluation policy" if m == EVAL_MODE else f"'{m}' mode")
                    for m in modes]
    widths = [len(h.get_label()) + LEGEND_ENTRY_PAD for h in handles]
    legend_rows = -(-sum(widths) // (LEGEND_CHARS_PER_PANEL * cols))
    ncol = -(-len(handles) // legend_rows)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(title, wrap=True)  # wrapped: a one-panel figure is narrower than most titles
    legend_rows = -(-len(handles) // ncol)  # ncol entries per row can still need fewer rows than planned
    fig.tight_layout(rect=(0, (0.08 if rows == 1 else 0.05) * legend_rows, 1, 1))
    return fig


def bandit_figure(runs: list[Run], algos: list[str], snapshots: int, title: str):
    """Rows: algorithms (their lowest seed); columns: `snapshots` recorded steps from first to last."""
    from qvpo.envs import MultiPeakBandit

    first = {}
    for run in sorted(runs, key=lambda r: r.seed):
        first.setdefault(run.algo, run)
    shown = [a for a in algos if a in first]
    actions = {a: first[a].csv("actions.csv") for a in shown}
    common = sorted(set.intersection(*(set(df["step"]) for df in actions.values())))
    if not common:
        raise UserError("the runs recorded no actions at common steps (set record_actions_every)")
    steps = [common[i] for i in np.unique(np.linspace(0, len(common) - 1, snapshots).round().astype(int))]

    axis = np.linspace(-1, 1, 201)
    xx, yy = np.meshgrid(axis, axis)
    reward = MultiPeakBandit.reward(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(xx.shape)
    fig = Figure(figsize=(2.6 * len(steps), 2.6 * len(shown) + 0.6))
    axes = fig.subplots(len(shown), len(steps), squeeze=False, sharex=True, sharey=True)
    for i, algo in enumerate(shown):
        for j, step in enumerate(steps):
            ax = axes[i, j]
            ax.contour(xx, yy, reward, levels=8, cmap="viridis", linewidths=0.8)
            sample = actions[algo][actions[algo]["step"] == step]
            sns.scatterplot(x=sample["a0"].to_numpy(), y=sample["a1"].to_numpy(), ax=ax, s=6, color="crimson",
                            alpha=0.5, linewidth=0, legend=False)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_aspect("equal")
            ax.set_title(f"step {step:,}" if i == 0 else "")
            ax.set_ylabel(f"{algo}\n$a_1$" if j == 0 else "")
            ax.set_xlabel("$a_0$" if i == len(shown) - 1 else "")
    fig.suptitle(title, wrap=True)
    fig.tight_layout()
    return fig
