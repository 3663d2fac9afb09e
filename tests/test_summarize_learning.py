"""scripts/summarize_learning.py: the learning checks' criterion (the mean of the last three evaluations), by hand."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "summarize_learning.py"


def load_script():
    spec = importlib.util.spec_from_file_location("summarize_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(root: Path, seed: int, returns: list[float], singles: list[float] | None) -> None:
    run = root / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"env": "InvertedPendulum-v5", "algo": "qvpo", "seed": seed,
                                               "status": "complete", "step": 1000 * len(returns)}))
    columns = ["step", "return_mean"] + (["return_mean_single"] if singles is not None else [])
    with open(run / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, r in enumerate(returns):
            writer.writerow([1000 * (i + 1), r] + ([singles[i]] if singles is not None else []))


def test_last_three_means_of_best_of_k_and_single_sample(tmp_path):
    write_run(tmp_path, 0, [0.0, 500.0, 1000.0, 1000.0], [0.0, 100.0, 200.0, 900.0])
    write_run(tmp_path, 1, [10.0, 20.0, 1000.0, 1000.0], [30.0, 60.0, 30.0, 600.0])
    out = tmp_path / "summary.csv"
    assert load_script().main([str(tmp_path), "--out", str(out)]) == 0
    rows = {r["seed"]: r for r in csv.DictReader(open(out))}
    assert float(rows["0"]["last3_return_mean"]) == pytest.approx(2500 / 3)   # 500, 1000, 1000
    assert float(rows["0"]["last3_single_mean"]) == pytest.approx(400.0)      # 100, 200, 900
    assert float(rows["1"]["last3_single_mean"]) == pytest.approx(230.0)      # 60, 30, 600
    mean = rows["mean"]
    assert float(mean["last3_single_mean"]) == pytest.approx(315.0)
    assert float(mean["last3_single_std"]) == pytest.approx(85.0)             # population std of 400, 230
    assert float(mean["last3_return_mean"]) == pytest.approx((2500 / 3 + 2020 / 3) / 2)


def test_runs_without_single_sample_evaluations_leave_it_empty(tmp_path):
    write_run(tmp_path, 0, [1.0, 2.0], None)   # fewer than three: the ones it has
    out = tmp_path / "summary.csv"
    assert load_script().main([str(tmp_path), "--out", str(out)]) == 0
    rows = {r["seed"]: r for r in csv.DictReader(open(out))}
    assert float(rows["0"]["last3_return_mean"]) == pytest.approx(1.5)
    assert rows["0"]["last3_single_mean"] == "" and rows["mean"]["last3_single_mean"] == ""
