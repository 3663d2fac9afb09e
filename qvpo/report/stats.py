"""Summary statistics over runs: IQM and its stratified-bootstrap confidence interval.

numpy and scipy only (rliable does not import beside pandas 3); the same definitions
as rliable: IQM is the 25%-trimmed mean, the interval a percentile bootstrap that
resamples runs within each task (stratum) independently.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import trim_mean

BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0
"""Fixed, so a table rebuilt from the same runs is the same table."""


def iqm(scores, axis=None) -> float | np.ndarray:
    """Interquartile mean: the mean of the middle 50% (scipy cuts int(0.25 n) values from each end)."""
    return trim_mean(scores, 0.25, axis=axis)


def stratified_bootstrap_ci(strata: list, statistic=iqm, level: float = 0.95, reps: int = BOOTSTRAP_REPS,
                            seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of `statistic` over all runs, resampling each stratum's runs with replacement.

    `strata` holds one 1-D array of run scores per task; `statistic(samples, axis=1)` reduces
    the (reps, runs) matrix of resampled scores. One stratum is the per-task case.
    """
    rng = np.random.default_rng(seed)
    resampled = []
    for scores in strata:
        scores = np.asarray(scores, dtype=float)
        resampled.append(scores[rng.integers(0, len(scores), size=(reps, len(scores)))])
    values = statistic(np.concatenate(resampled, axis=1), axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
