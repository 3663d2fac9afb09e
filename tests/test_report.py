"""qvpo aggregate and qvpo plot: statistics by hand, table numbers, missing runs, reproducible figures."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from pipeline_helpers import write_run

from qvpo import report
from qvpo.cli import main
from qvpo.report import plots
from qvpo.report.plots import smoothed
from qvpo.report.runs import complete_runs
from qvpo.report.stats import iqm, stratified_bootstrap_ci

ENV = "Hopper-v5"
SCORES = {"sac": [100.0, 300.0, 200.0], "td3": [50.0, 400.0, 210.0]}
"""Final return of seeds 0, 1, 2."""


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "runs"
    for algo, scores in SCORES.items():
        for seed, score in enumerate(scores):
            write_run(root, ENV, algo, seed, score)
    return root


def grid_args(root, algos=("sac", "td3")):
    return ["--runs", str(root), "--block", ENV, ",".join(algos), "0,1,2"]


# ---------------------------------------------------------------- statistics
def test_iqm_by_hand():
    # 8 values: scipy cuts int(0.25 * 8) = 2 from each end of [1 2 3 4 5 6 7 100] -> mean(3, 4, 5, 6)
    assert iqm([7, 1, 100, 3, 5, 2, 6, 4]) == pytest.approx(4.5)
    # 5 values: cut 1 from each end of [0 1 2 3 1000] -> mean(1, 2, 3)
    assert iqm([3, 1000, 0, 2, 1]) == pytest.approx(2.0)
    # 2 values: nothing cut -> the mean
    assert iqm([10, 20]) == pytest.approx(15.0)


def test_bootstrap_interval_by_hand():
    # resampling [0, 10] twice gives a mean of 0, 5 or 10 with probability 1/4, 1/2, 1/4:
    # the 2.5th percentile is 0 and the 97.5th is 10
    assert stratified_bootstrap_ci([np.array([0.0, 10.0])]) == (0.0, 10.0)
    assert stratified_bootstrap_ci([np.array([7.0, 7.0, 7.0])]) == (7.0, 7.0)
    # strata resample separately: each draw is [0, 0, 10, 10] whose IQM is 5 (pooled resampling would vary)
    assert stratified_bootstrap_ci([np.array([0.0, 0.0]), np.array([10.0, 10.0])]) == (5.0, 5.0)


def test_bootstrap_is_seeded():
    x = np.array([1.0, 5.0, 2.0, 8.0, 3.0])
    assert stratified_bootstrap_ci([x]) == stratified_bootstrap_ci([x])
    low, high = stratified_bootstrap_ci([x])
    assert low <= iqm(x) <= high


def test_smoothing_window_by_hand():
    values = smoothed(np.array([10, 20, 30]), np.array([1.0, 2.0, 3.0]), np.array([0, 20, 30]), window=15)
    # step 0: no episode in (-15, 0]; step 20: episodes at 10 and 20; step 30: episodes at 20 and 30
    assert np.isnan(values[0]) and values[1] == pytest.approx(1.5) and values[2] == pytest.approx(2.5)


# ---------------------------------------------------------------- the table
def test_table_numbers(grid, tmp_path):
    out = tmp_path / "out"
    assert main(["aggregate", *grid_args(grid), "--out-dir", str(out), "--note", "made-up runs"]) == 0
    table = pd.read_csv(out / "table.csv").set_index("algo")
    sac = table.loc["sac"]
    assert sac["env"] == ENV and sac["n_seeds"] == 3
    assert sac["mean"] == pytest.approx(200.0)
    assert sac["std"] == pytest.approx(np.sqrt((100**2 + 100**2 + 0) / 3), abs=1e-4)  # ddof=0
    assert sac["iqm"] == pytest.approx(200.0)  # 3 values: nothing cut
    assert sac["wall_time_mean_s"] == pytest.approx(20.0)
    assert table.loc["td3", "mean"] == pytest.approx(220.0)
    assert table.loc["td3", "iqm_ci_low"] <= table.loc["td3", "iqm"] <= table.loc["td3", "iqm_ci_high"]
    # the paper's Table 1 beside ours (Hopper: SAC 2996.6 (111.9), TD3 3267.5 (8.5)), and CleanRL's v4
    assert (sac["paper_mean"], sac["paper_std"]) == (2996.6, 111.9)
    assert table.loc["td3", "paper_mean"] == 3267.5
    assert sac["cleanrl_v4_mean"] == pytest.approx(2310.46)

    md = (out / "table.md").read_text()
    assert "made-up runs" in md and "v3" in md and "600 environment steps" in md
    assert "| Hopper-v5 | 200.0 (81.6) | **220.0 (143.1)** |" in md  # the best mean in bold
    assert "**3267.5 (8.5)**" in md  # the paper's best on Hopper among these two


def test_table_last_three_evaluations_and_one_sample(grid, tmp_path):
    # write_run logs evaluations at steps 200, 400, 600 of score * step / 600: the last three average 2/3 score
    for seed, score in enumerate([30.0, 90.0]):
        run = write_run(grid, ENV, "qvpo", seed, score)
        evals = pd.read_csv(run / "eval.csv")
        evals["return_mean_single"] = [1.0, 2.0, 6.0 * (seed + 1)]  # one sample: 6 and 12 last; 3 and 5 over three
        evals.to_csv(run / "eval.csv", index=False)
    out = tmp_path / "out"
    assert main(["aggregate", "--runs", str(grid), "--block", ENV, "sac,td3", "0,1,2", "--block", ENV, "qvpo", "0,1",
                 "--out-dir", str(out)]) == 0
    table = pd.read_csv(out / "table.csv").set_index("algo")
    assert table.loc["sac", "last3_mean"] == pytest.approx((100 + 300 + 200) * 2 / 3 / 3, abs=1e-4)
    assert np.isnan(table.loc["sac", "single_last_mean"])  # SAC logs no one-sample evaluation
    assert table.loc["qvpo", "last3_mean"] == pytest.approx(40.0)  # 2/3 of 30 and of 90
    assert table.loc["qvpo", "single_last_mean"] == pytest.approx(9.0)
    assert table.loc["qvpo", "single_last_std"] == pytest.approx(3.0)
    assert table.loc["qvpo", "single_last3_mean"] == pytest.approx(4.0)
    md = (out / "table.md").read_text()
    assert "| Hopper-v5 | qvpo | 60.0 (30.0) | 9.0 (3.0) | 40.0 (20.0) | 4.0 (1.0) |" in md
    assert "## Mean of each run's last three evaluations" in md


def write_reference(root, seed, last_return, steps=600):
    """A run directory as `qvpo sb3` leaves it: meta.json and eval.csv, no checkpoint or final evaluation."""
    run = root / ENV / "sac_sb3" / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({
        "algo": "sac_sb3", "env": ENV, "seed": seed, "steps": steps, "step": steps, "status": "complete",
        "eval_episodes": 10, "wall_time_s": 5.0, "versions": {"stable_baselines3": "2.9.2"},
        "command": f"qvpo sb3 sac {ENV} --seed {seed} --steps {steps}"}))
    pd.DataFrame({"step": [200, 400, 600], "return_mean": [1.0, 2.0, last_return], "return_std": 0.0,
                  "episodes": 10, "wall_time_s": 1.0}).to_csv(run / "eval.csv", index=False)
    return run


def test_reference_runs_are_scored_by_their_last_evaluation(grid, tmp_path):
    refs = tmp_path / "references"
    for seed, last in enumerate([150.0, 250.0]):
        write_reference(refs, seed, last)
    out = tmp_path / "out"
    args = [*grid_args(grid), "--references", str(refs), "--reference-block", ENV, "sac_sb3", "0,1"]
    assert main(["aggregate", *args, "--out-dir", str(out)]) == 0
    table = pd.read_csv(out / "table.csv").set_index("algo")
    assert table.loc["sac_sb3", "mean"] == pytest.approx(200.0) and table.loc["sac_sb3", "n_seeds"] == 2
    assert table.loc["sac_sb3", "last3_mean"] == pytest.approx((1 + 2 + 150 + 1 + 2 + 250) / 6)
    md = (out / "table.md").read_text()
    assert "| Environment | sac | td3 | sac_sb3 |" in md
    assert "sac_sb3: a reference run of another library (`qvpo sb3 sac Hopper-v5`, stable_baselines3 2.9.2)" in md
    assert main(["plot", "eval-curves", *args, "--out", str(tmp_path / "eval"), "--title", "t"]) == 0


def test_reference_run_cut_short_is_refused(grid, tmp_path, capsys):
    refs = tmp_path / "references"
    write_reference(refs, 0, 100.0, steps=800)  # its last evaluation (600) is not at its last step (800)
    assert main(["aggregate", *grid_args(grid), "--references", str(refs), "--reference-block", ENV, "sac_sb3",
                    "0", "--out-dir", str(tmp_path / "out")]) == 2
    assert "last evaluation is at step 600, not at its last step 800" in capsys.readouterr().err


def test_reference_block_needs_its_root(grid, tmp_path, capsys):
    assert main(["aggregate", *grid_args(grid), "--reference-block", ENV, "sac_sb3", "0",
                    "--out-dir", str(tmp_path / "out")]) == 2
    assert "--reference-block needs --references" in capsys.readouterr().err


def test_table_marks_the_best_in_bold(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root, ENV, "sac", seed, 100.0)
        write_run(root, ENV, "td3", seed, 300.0)
    out = tmp_path / "out"
    assert main(["aggregate", "--runs", str(root), "--block", ENV, "sac,td3", "0,1", "--out-dir", str(out)]) == 0
    assert "| Hopper-v5 | 100.0 (0.0) | **300.0 (0.0)** |" in (out / "table.md").read_text()


def test_table_marks_every_tied_best_in_bold(tmp_path):
    root = tmp_path / "runs"
    for algo, score in (("sac", 300.0), ("td3", 100.0), ("ppo", 300.0)):
        write_run(root, ENV, algo, 0, score)
    out = tmp_path / "out"
    assert main(["aggregate", "--runs", str(root), "--block", ENV, "sac,td3,ppo", "0", "--out-dir", str(out)]) == 0
    assert "| Hopper-v5 | **300.0 (0.0)** | 100.0 (0.0) | **300.0 (0.0)** |" in (out / "table.md").read_text()


def test_missing_and_unfinished_runs_are_named(grid, tmp_path, capsys):
    shutil.rmtree(grid / ENV / "td3" / "seed2")
    meta_path = grid / ENV / "sac" / "seed1" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "status": "running"}))
    out = tmp_path / "out"
    assert main(["aggregate", *grid_args(grid), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"({ENV}, td3, 2): not run" in err and f"({ENV}, sac, 1): status running" in err
    assert err.count("\n") == 1 and not (out / "table.csv").exists()

    assert main(["aggregate", *grid_args(grid), "--out-dir", str(out), "--allow-missing"]) == 0
    table = pd.read_csv(out / "table.csv").set_index("algo")
    assert table.loc["sac", "n_seeds"] == 2 and table.loc["sac", "mean"] == pytest.approx(150.0)  # seeds 0, 2
    assert "2 run(s) of the grid were missing or unfinished" in (out / "table.md").read_text()


def test_missing_run_through_the_command_line(grid, tmp_path):
    shutil.rmtree(grid / ENV / "sac" / "seed0")
    result = run_cli(["aggregate", *grid_args(grid), "--out-dir", str(tmp_path / "out")])
    assert result.returncode != 0 and f"({ENV}, sac, 0)" in result.stderr


def test_stale_final_evaluation_is_refused(grid, tmp_path, capsys):
    final = grid / ENV / "sac" / "seed0" / "final-0123456789abcdef.json"
    final.write_text(json.dumps({**json.loads(final.read_text()), "step": 400}))
    assert main(["aggregate", *grid_args(grid), "--out-dir", str(tmp_path / "out")]) == 2
    assert "evaluated step 400" in capsys.readouterr().err


# ---------------------------------------------------------------- figures
FIGURES = [["eval-curves"], ["train-curves", "--window", "100"], ["bandit-actions", "--snapshots", "3"]]


@pytest.mark.parametrize("kind", FIGURES, ids=lambda k: k[0])
def test_figures_are_byte_identical_when_rebuilt(grid, tmp_path, kind):
    for name in ("a", "b"):
        assert main(["plot", *kind, *grid_args(grid), "--out", str(tmp_path / name / "fig")]) == 0
    for ext in ("png", "pdf"):
        first, second = (tmp_path / "a" / f"fig.{ext}").read_bytes(), (tmp_path / "b" / f"fig.{ext}").read_bytes()
        assert len(first) > 1000 and first == second


def test_eval_curves_read_every_evaluation_mode(grid, tmp_path):
    run = grid / ENV / "sac" / "seed0"
    df = pd.read_csv(run / "eval.csv")
    df["return_mean_single"] = df["return_mean"] / 2
    df.to_csv(run / "eval.csv", index=False)
    data = plots.eval_curves(complete_runs(grid, [(ENV, "sac", 0), (ENV, "td3", 0)], allow_missing=False))
    sac = data[data["algo"] == "sac"].set_index(["mode", "step"])["return"]
    assert sac.loc["single", 600] == 50.0 and sac.loc["evaluate", 600] == 100.0
    assert set(data[data["algo"] == "td3"]["mode"]) == {"evaluate"}
    assert main(["plot", "eval-curves", *grid_args(grid), "--out", str(tmp_path / "fig")]) == 0


def test_figure_rebuilt_in_a_new_process_is_identical(grid, tmp_path):
    assert main(["plot", "train-curves", *grid_args(grid), "--out", str(tmp_path / "here")]) == 0
    result = run_cli(["plot", "train-curves", *grid_args(grid), "--out", str(tmp_path / "there")])
    assert result.returncode == 0, result.stderr
    for ext in ("png", "pdf"):
        assert (tmp_path / f"here.{ext}").read_bytes() == (tmp_path / f"there.{ext}").read_bytes()


def test_plot_refuses_a_missing_run(grid, tmp_path, capsys):
    shutil.rmtree(grid / ENV / "td3" / "seed1")
    assert main(["plot", "eval-curves", *grid_args(grid), "--out", str(tmp_path / "fig")]) == 2
    assert f"({ENV}, td3, 1)" in capsys.readouterr().err


# ---------------------------------------------------------------- what reruns what
def test_code_hash_of_plots_leaves_the_table_alone(tmp_path, monkeypatch):
    copy = tmp_path / "report"
    shutil.copytree(report.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(report, "PACKAGE_DIR", copy)
    before = {command: report.code_hash(command) for command in ("aggregate", "plot")}
    with open(copy / "plots.py", "a") as f:
        f.write("\n# an edit\n")
    assert report.code_hash("plot") != before["plot"] and report.code_hash("aggregate") == before["aggregate"]
    with open(copy / "paper_table1.csv", "a") as f:
        f.write("Swimmer,QVPO,1.0,0.1\n")
    assert report.code_hash("aggregate") != before["aggregate"]


def test_missing_references_are_left_out_with_allow_missing(grid, tmp_path, capsys):
    args = [*grid_args(grid), "--references", str(tmp_path / "references"), "--reference-block", ENV, "sac_sb3", "0"]
    assert main(["aggregate", *args, "--out-dir", str(tmp_path / "out")]) == 2  # missing: named, refused
    assert f"({ENV}, sac_sb3, 0): not run" in capsys.readouterr().err
    assert main(["aggregate", *args, "--out-dir", str(tmp_path / "out"), "--allow-missing"]) == 0
    assert "sac_sb3" not in set(pd.read_csv(tmp_path / "out" / "table.csv")["algo"])
