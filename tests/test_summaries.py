"""`qvpo summarize`: the learning checks' criterion (the mean of the last three evaluations) and the bandit
summary, by hand."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from qvpo.cli import main

ENV = "InvertedPendulum-v5"


def write_run(root: Path, env: str, algo: str, seed: int, returns: list[float], singles: list[float] | None,
              actions: list[tuple[int, float, float]] | None = None) -> None:
    run = root / env / algo / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"env": env, "algo": algo, "seed": seed, "status": "complete",
                                               "step": 1000 * len(returns)}))
    with open(run / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "return_mean"] + (["return_mean_single"] if singles is not None else []))
        for i, r in enumerate(returns):
            writer.writerow([1000 * (i + 1), r] + ([singles[i]] if singles is not None else []))
    if actions is not None:
        with open(run / "actions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "sample", "a0", "a1"])
            writer.writerows((step, i, a0, a1) for i, (step, a0, a1) in enumerate(actions))


def summarize(root: Path, kind: str, block: list[str]) -> dict[str, dict]:
    out = root / "summary.csv"
    assert main(["summarize", kind, "--runs", str(root), "--block", *block, "--out", str(out)]) == 0
    return {r["seed"]: r for r in csv.DictReader(open(out))}


def test_last_three_means_of_best_of_k_and_single_sample(tmp_path):
    write_run(tmp_path, ENV, "qvpo", 0, [0.0, 500.0, 1000.0, 1000.0], [0.0, 100.0, 200.0, 900.0])
    write_run(tmp_path, ENV, "qvpo", 1, [10.0, 20.0, 1000.0, 1000.0], [30.0, 60.0, 30.0, 600.0])
    rows = summarize(tmp_path, "learning", [ENV, "qvpo", "0,1"])
    assert float(rows["0"]["last3_return_mean"]) == pytest.approx(2500 / 3)   # 500, 1000, 1000
    assert float(rows["0"]["last3_single_mean"]) == pytest.approx(400.0)      # 100, 200, 900
    assert float(rows["1"]["last3_single_mean"]) == pytest.approx(230.0)      # 60, 30, 600
    mean = rows["mean"]
    assert float(mean["last3_single_mean"]) == pytest.approx(315.0)
    assert float(mean["last3_single_std"]) == pytest.approx(85.0)             # population std of 400, 230
    assert float(mean["last3_return_mean"]) == pytest.approx((2500 / 3 + 2020 / 3) / 2)


def test_runs_without_single_sample_evaluations_leave_it_empty(tmp_path):
    write_run(tmp_path, ENV, "sac", 0, [1.0, 2.0], None)   # fewer than three: the ones it has
    rows = summarize(tmp_path, "learning", [ENV, "sac", "0"])
    assert float(rows["0"]["last3_return_mean"]) == pytest.approx(1.5)
    assert rows["0"]["last3_single_mean"] == "" and rows["mean"]["last3_single_mean"] == ""


def test_saturation_is_the_share_of_the_last_sample_at_the_bounds(tmp_path):
    # last recorded step 200: components 1.0, 0.5, -0.995, 0.2 -> two of four at |a| >= 0.99
    write_run(tmp_path, ENV, "qsm", 0, [5.0], None, [(100, 1.0, 1.0), (200, 1.0, 0.5), (200, -0.995, 0.2)])
    rows = summarize(tmp_path, "learning", [ENV, "qsm", "0"])
    assert float(rows["0"]["saturated_last"]) == pytest.approx(0.5)


def test_bandit_shares_per_peak_and_spread_by_hand(tmp_path):
    # step 10: samples at (0, 0) and (0.2, 0.4): std per dim 0.1 and 0.2, spread 0.15;
    # step 20: both on the 0.8 peak at (-0.5, 0.5), spread 0; no sample near the others
    actions = [(10, 0.0, 0.0), (10, 0.2, 0.4), (20, -0.5, 0.5), (20, -0.45, 0.5)]
    write_run(tmp_path, "MultiPeakBandit-v0", "qvpo", 0, [0.8], None, actions)
    row = summarize(tmp_path, "bandit", ["MultiPeakBandit-v0", "qvpo", "0"])["0"]
    assert float(row["spread_10"]) == pytest.approx(0.15)
    assert float(row["spread_20"]) == pytest.approx(0.0125)      # std of (-0.5, -0.45) = 0.025, of (0.5, 0.5) = 0
    assert float(row["final_share_peak1_h0.8"]) == 1.0
    assert float(row["final_share_peak0_h1.0"]) == 0.0 and float(row["final_share_peak2_h0.6"]) == 0.0


def test_a_bandit_run_without_recorded_actions_is_one_clear_error(tmp_path, capsys):
    write_run(tmp_path, "MultiPeakBandit-v0", "qvpo", 0, [0.8], None)
    assert main(["summarize", "bandit", "--runs", str(tmp_path), "--block", "MultiPeakBandit-v0", "qvpo", "0",
                 "--out", str(tmp_path / "s.csv")]) == 2
    assert "recorded no actions" in capsys.readouterr().err
