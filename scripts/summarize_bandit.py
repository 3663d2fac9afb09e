"""Summarise the figure-2 bandit runs: where the policy's recorded samples lie.

Usage: python scripts/summarize_bandit.py RUN_DIR... --out CSV

Per run (a directory with actions.csv): the spread of the samples (the mean over action dims of their
std) at `--early` (default: the first recorded step) and, as columns spread_<step>, at every recorded
step; for the last recorded step the share of samples within `--radius` of each peak of
qvpo.envs.MultiPeakBandit, the highest peak first. Every step is reported because one early step can
mislead: the untrained sampler clamps most samples to the corners (spread ~0.8, wider than the uniform
distribution's 0.58 that the entropy term fits), so right after warm-up the entropy term narrows it.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from qvpo.envs import MultiPeakBandit


def summarize(run: Path, radius: float, early: int | None) -> dict:
    with open(run / "actions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in rows})
    first = early if early is not None else steps[0]
    samples = {s: np.array([[float(r["a0"]), float(r["a1"])] for r in rows if int(r["step"]) == s]) for s in steps}
    spread = {s: float(a.std(axis=0).mean()) for s, a in samples.items()}
    out = {"run": str(run), "early_step": first, "early_spread": spread[first], "final_step": steps[-1]}
    final = samples[steps[-1]]
    for i, (cx, cy, height, _) in enumerate(MultiPeakBandit.PEAKS):
        near = np.hypot(final[:, 0] - cx, final[:, 1] - cy) < radius
        out[f"final_share_peak{i}_h{height}"] = float(near.mean())
    out["final_mean_reward"] = float(MultiPeakBandit.reward(final).mean())
    return out | {f"spread_{s}": v for s, v in spread.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--radius", type=float, default=0.3)
    p.add_argument("--early", type=int, default=None)
    args = p.parse_args()
    rows = [summarize(r, args.radius, args.early) for r in args.runs]
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
