"""The paper's figures with seaborn, as PNG and PDF that are byte-identical when rebuilt.

- eval-curves:    evaluation return against environment steps, one panel per env and budget
                  group (algorithms whose budgets are within a factor BUDGET_GROUP share a
                  panel, so a 30k-step run is not squeezed beside a 200k one; the panels of an
                  env share their y-axis), mean over seeds with a +/- 1 std band clipped to the
                  seeds' min and max (a return never shown where no seed went); an agent's
                  extra evaluation modes (QVPO's one-sample policy) dashed beside it;
- train-curves:   training-episode returns, each run smoothed over a window of steps
                  before averaging over seeds (what the paper's figures 3-5 plot);
- bandit-actions: where the bandit policy's samples lie as training goes on, one row
                  per algorithm (QVPO with and without the entropy term), over the
                  reward surface (filled contours with a colour bar, each peak marked with
                  its height) (figure 2).
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
from matplotlib.ticker import FuncFormatter

from qvpo.errors import UserError
from qvpo.report.runs import Run

PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
DPI = 150
CURVE_POINTS = 200
"""Points of a smoothed training curve (a common grid, so seeds can be averaged)."""
LEGEND_CHARS_PER_PANEL, LEGEND_ENTRY_PAD = 44, 6
"""Legend characters that fit across one panel's width; an entry's line and gaps, in characters."""
PANEL_WIDTH, PANEL_HEIGHT, TITLE_HEIGHT, LEGEND_ROW_HEIGHT = 4.2, 3.3, 0.8, 0.3
"""Inches: a panel, the title above the panels, one row of the legend below them."""
BUDGET_GROUP = 2.0
"""Algorithms share an env's panel when their budgets are within this factor of the panel's largest."""
ROW_LABELS = {"qvpo": "QVPO, with entropy term", "qvpo_no_entropy": "QVPO, without entropy term"}
"""The bandit figure's row labels (other algorithms show their names)."""


def steps_label(x: float, _=None) -> str:
    """0, 500, 2.5k, 100k, 1M: environment steps without an offset text such as 1e4."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def clipped_sd(values) -> tuple[float, float]:
    """mean +/- one (population) std, clipped to the values' min and max."""
    values = np.asarray(values, dtype=float)
    mean, sd = values.mean(), values.std()
    return max(mean - sd, values.min()), min(mean + sd, values.max())


def budget_panels(data: pd.DataFrame, envs: list[str]) -> list[tuple[str, list[str], int]]:
    """(env, its algorithms in the panel, the panel's largest budget) per panel: per env, algorithms
    by their last step, from the largest budget down, grouped within a factor BUDGET_GROUP."""
    panels = []
    for env in envs:
        budgets = data[data["env"] == env].groupby("algo")["step"].max().sort_values(ascending=False)
        group: list[str] = []
        for algo, budget in budgets.items():
            if group and budget * BUDGET_GROUP < budgets[group[0]]:
                panels.append((env, group, int(budgets[group[0]])))
                group = []
            group.append(algo)
        panels.append((env, group, int(budgets[group[0]])))
    return panels


def save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.png"), Path(f"{stem}.pdf")]
    fig.savefig(paths[0], dpi=DPI, metadata=PNG_METADATA)
    fig.savefig(paths[1], metadata=PDF_METADATA)
    return paths


EVAL_MODE = "evaluate"
"""The evaluation policy's mode (eval.csv's return_mean); other modes log return_mean_<mode>."""
MODE_LABELS = {EVAL_MODE: "evaluation policy", "single": "one policy sample"}


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
    for env, algo in dict.fromkeys((run.env, run.algo) for run in runs):
        group = [run for run in runs if (run.env, run.algo) == (env, algo)]
        last = max(run.meta["step"] for run in group)  # each algorithm's curve to its own budget
        grid = np.unique(np.linspace(0, last, CURVE_POINTS).round().astype(np.int64))
        for run in group:
            df = run.csv("train.csv")
            values = smoothed(df["step"].to_numpy(), df["episode_return"].to_numpy(dtype=float), grid, window)
            frames.append(pd.DataFrame({"env": env, "algo": run.algo, "seed": run.seed, "step": grid,
                                        "return": values}).dropna())
    return pd.concat(frames, ignore_index=True)


def curves_figure(data: pd.DataFrame, algos: list[str], ylabel: str, title: str):
    envs = list(dict.fromkeys(data["env"]))
    panels = budget_panels(data, envs)
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    palette = dict(zip(algos, sns.color_palette("tab10", len(algos))))
    modes = list(dict.fromkeys(data["mode"])) if "mode" in data else []
    dashes = {mode: "" if mode == EVAL_MODE else (4, 2) for mode in modes}
    styled = len(modes) > 1
    handles = [Line2D([], [], color=palette[a], label=a) for a in algos if a in set(data["algo"])]
    if styled:
        handles += [Line2D([], [], color="0.3", dashes=dashes[m], label=MODE_LABELS.get(m, f"'{m}' mode"))
                    for m in modes]
    # a legend column is as wide as its widest entry; a one-panel figure widens to hold three columns
    widest = max(len(h.get_label()) for h in handles) + LEGEND_ENTRY_PAD
    width = max(PANEL_WIDTH * cols, min(3, len(handles)) * widest * PANEL_WIDTH / LEGEND_CHARS_PER_PANEL)
    ncol = max(1, min(len(handles), int(width / PANEL_WIDTH * LEGEND_CHARS_PER_PANEL) // widest))
    legend_rows = -(-len(handles) // ncol)
    height = PANEL_HEIGHT * rows + TITLE_HEIGHT + LEGEND_ROW_HEIGHT * legend_rows
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    split = {env: sum(p[0] == env for p in panels) > 1 for env in envs}
    for ax, (env, panel_algos, budget) in zip(axes.flat, panels):
        shown = data[(data["env"] == env) & data["algo"].isin(panel_algos)]
        sns.lineplot(data=shown, x="step", y="return", hue="algo", hue_order=algos,
                     palette=palette, estimator="mean", errorbar=clipped_sd, ax=ax, legend=False, linewidth=1.2,
                     **({"style": "mode", "style_order": modes, "dashes": dashes} if styled else {}))
        ax.set_title(f"{env}, {steps_label(budget)} steps" if split[env] else env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, budget)
        ax.xaxis.set_major_formatter(FuncFormatter(steps_label))
    for env in envs:  # an env's panels share one y range
        env_axes = [ax for ax, panel in zip(axes.flat, panels) if panel[0] == env]
        low = min(ax.get_ylim()[0] for ax in env_axes)
        high = max(ax.get_ylim()[1] for ax in env_axes)
        for ax in env_axes:
            ax.set_ylim(low, high)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(title, wrap=True)  # wrapped: a one-panel figure is narrower than most titles
    fig.tight_layout(rect=(0, LEGEND_ROW_HEIGHT * legend_rows / height, 1, 1))
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
    fig = Figure(figsize=(2.6 * len(steps) + 1.0, 2.6 * len(shown) + 0.6))
    axes = fig.subplots(len(shown), len(steps), squeeze=False, sharex=True, sharey=True)
    for i, algo in enumerate(shown):
        for j, step in enumerate(steps):
            ax = axes[i, j]
            surface = ax.contourf(xx, yy, reward, levels=np.linspace(0, 1, 11), cmap="Greys", alpha=0.6)
            for cx, cy, height, _ in MultiPeakBandit.PEAKS:
                ax.plot(cx, cy, marker="x", color="navy", markersize=5)
                ax.annotate(f"{height:.1f}", (cx, cy), xytext=(3, 3), textcoords="offset points", fontsize=7,
                            color="navy")
            sample = actions[algo][actions[algo]["step"] == step]
            sns.scatterplot(x=sample["a0"].to_numpy(), y=sample["a1"].to_numpy(), ax=ax, s=6, color="crimson",
                            alpha=0.5, linewidth=0, legend=False)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_aspect("equal")
            ax.set_title(f"step {step:,}" if i == 0 else "")
            ax.set_ylabel(f"{ROW_LABELS.get(algo, algo)}\n$a_1$" if j == 0 else "")
            ax.set_xlabel("$a_0$" if i == len(shown) - 1 else "")
    fig.suptitle(title, wrap=True)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    bar = fig.colorbar(surface, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("reward (x: a peak and its height)")
    return fig
