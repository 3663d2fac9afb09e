"""The Snakemake workflow: planning the paper's grid, a tiny grid end to end, reruns on a fresh clone."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from pipeline_helpers import (PROJECT, TINY_CONFIG, check_table, job_counts, planned_jobs, snakemake, write_config,
                              write_run)


def test_paper_table_plans_175_training_jobs_quickly(tmp_path):
    """Acceptance 1: 5 envs x 7 algorithms x 5 seeds, planned in under 10 s."""
    config = str(PROJECT / "config" / "config.yaml")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = snakemake(tmp_path, "results/table.csv", "-n", "--quiet", "rules", "--configfile", config)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 175 and counts["evaluate"] == 175 and counts["aggregate"] == 1
    # CPU time, not wall time: on a machine shared with other work the wall clock measures the others
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert cpu < 10, f"planning took {cpu:.1f} s of CPU"


def test_every_figure_adds_the_ablation_runs(tmp_path):
    """The default target adds figures 2, 4 and 5: no-entropy (2 envs x 5 seeds), four Kb/Kt variants
    (2 envs x 5 seeds each) and the bandit (2 variants x 1 seed); QVPO's own runs are shared."""
    result = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", str(PROJECT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["train"] == 175 + 10 + 40 + 2
    assert counts["plot"] == 6


@pytest.mark.parametrize("preset", [["quick.yaml"], ["cpu.yaml"], ["cpu.yaml", "cpu-bf16.yaml"], ["mid.yaml"],
                                    ["cpu.yaml", "cpu-ablations.yaml"]])
def test_presets_plan(tmp_path, preset):
    # run elsewhere, the workflow's own config/config.yaml is not found: name it first, as a clone's root would read it
    files = ["config.yaml", *preset]
    result = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", *(str(PROJECT / "config" / f) for f in files))
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] > 0


@pytest.mark.parametrize("edit, message", [
    ({"threads": 0}, "threads"),
    ({"defaults": {**TINY_CONFIG["defaults"], "set": {"warmup_stepz": 5}}}, "warmup_stepz"),
    ({"figures": [{"name": "x", "kind": "eval-curves", "grid": "nope", "title": "x"}]}, "nope"),
])
def test_bad_config_stops_naming_the_key(tmp_path, edit, message):
    config = write_config(tmp_path, {**TINY_CONFIG, **edit})
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_lint_is_clean(tmp_path):
    config = write_config(tmp_path, TINY_CONFIG)
    result = snakemake(tmp_path, "--lint", "--configfile", str(config))
    assert result.returncode == 0 and "Lints for" not in result.stdout + result.stderr, result.stdout


@pytest.mark.long(210)
def test_tiny_grid_end_to_end(tmp_path):
    """Acceptance 2: 2 algorithms x 1 env x 2 seeds through snakemake; the table against the runs' files."""
    config = write_config(tmp_path, TINY_CONFIG)
    result = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / TINY_CONFIG["results"]
    check_table(results, TINY_CONFIG)
    assert "**" in (results / "table.md").read_text()
    for name in ("eval", "train"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000
        assert (results / "figures" / f"{name}.pdf").stat().st_size > 1000
    # everything is up to date now, and stays so when the runs' files are newer than the table
    later = time.time() + 3600
    for path in (results / "runs").rglob("*.json"):
        os.utime(path, (later, later))
    again = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # fewer steps asked of a complete run: it is retrained to them, not taken as done at its 300
    shorter = write_config(tmp_path, {**TINY_CONFIG, "defaults": {**TINY_CONFIG["defaults"], "steps": 200},
                                      "grids": {"table": [{"envs": ["InvertedPendulum-v5"], "algos": ["sac"],
                                                           "seeds": [0]}]}}, "shorter.yaml")
    result = snakemake(tmp_path, "--cores", "1", "table", "--configfile", str(shorter))
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((results / "runs/InvertedPendulum-v5/sac/seed0/meta.json").read_text())
    assert meta["step"] == 200 and meta["status"] == "complete" and meta["resumed_from_step"] == []


# ---------------------------------------------------------------- reruns after a clone
MINI_CONFIG = {**TINY_CONFIG, "preset": "mini", "results": "results/mini",
               "defaults": {**TINY_CONFIG["defaults"], "steps": 200},
               "grids": {"table": [{"envs": ["InvertedPendulum-v5"], "algos": ["sac", "td3"], "seeds": [0]}]},
               "figures": [{"name": "eval", "kind": "eval-curves", "grid": "table", "title": "mini"}]}


def git(cwd: Path, *args: str) -> str:
    """git in a temporary clone (never in the project's own tree)."""
    out = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
                         cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout


def plan(clone: Path, config: Path, *targets: str) -> list[tuple[str, str]]:
    """The jobs a dry run plans in `clone` (of `targets`, or the default one), with the clone's own qvpo
    package and Snakefile."""
    result = snakemake(clone, "-n", *targets, "--configfile", str(config), snakefile=clone / "Snakefile",
                       env={"PYTHONPATH": str(clone)})
    assert result.returncode == 0, result.stderr
    return planned_jobs(result.stdout)


@pytest.mark.long(280)
def test_fresh_clone_reruns_exactly_what_changed(tmp_path):
    """Acceptance 4, on what is committed: results made and committed in one clone plan nothing in a
    fresh clone; a comment trains nothing; a change of what an algorithm computes plans only its runs
    and what depends on them (and they train anew); a plotting edit plans only the figures. The project's committed files are cloned
    (QVPO_CLONE_SOURCE names another repository to clone instead)."""
    source = os.environ.get("QVPO_CLONE_SOURCE", str(PROJECT))
    first = tmp_path / "first"
    git(tmp_path, "clone", "-q", source, str(first))
    if not (first / "Snakefile").exists():
        pytest.skip("the workflow is not committed yet: this test runs on committed files")
    write_config(first / "config", MINI_CONFIG, "mini.yaml")
    made = snakemake(first, "--cores", "2", "--configfile", str(first / "config/mini.yaml"),
                     snakefile=first / "Snakefile",
                     env={"PYTHONPATH": str(first)})
    assert made.returncode == 0, made.stderr[-3000:]
    git(first, "add", "-A", "config", "results/mini")
    git(first, "commit", "-q", "-m", "mini results")

    clone = tmp_path / "clone"  # no .snakemake, every file's time the checkout's
    git(tmp_path, "clone", "-q", str(first), str(clone))
    config = clone / "config/mini.yaml"
    assert plan(clone, config) == []

    run = clone / "results/mini/runs/InvertedPendulum-v5/sac/seed0"
    old_meta = json.loads((run / "meta.json").read_text())
    sac = clone / "qvpo/algos/sac.py"
    with open(sac, "a") as f:  # a comment: the file is newer, no identity changes
        f.write("\n# an edit that changes no identity\n")
    assert not {rule for rule, _ in plan(clone, config)} & {"train", "evaluate"}
    sac.write_text(sac.read_text().replace("(log_pi + target_entropy)).mean()",
                                           "(log_pi + target_entropy)).mean() * 0.5"))  # SAC computes otherwise
    jobs = plan(clone, config)
    assert sorted(rule for rule, _ in jobs) == ["aggregate", "evaluate", "plot", "train"]
    assert all("/sac/" in output for rule, output in jobs if rule in ("train", "evaluate"))
    table_jobs = plan(clone, config, "results/mini/table.csv")  # the brief's file target reruns too
    assert sorted({rule for rule, _ in table_jobs}) == ["aggregate", "evaluate", "train"]
    assert [output for rule, output in table_jobs if rule == "train"] == [
        output for rule, output in jobs if rule == "train"]

    made = snakemake(clone, "--cores", "2", "--configfile", str(config), snakefile=clone / "Snakefile",
                     env={"PYTHONPATH": str(clone)})
    assert made.returncode == 0, made.stderr[-3000:]
    new_meta = json.loads((run / "meta.json").read_text())
    assert new_meta["code_hash"] != old_meta["code_hash"] and new_meta["identity"] != old_meta["identity"]
    assert new_meta["status"] == "complete" and new_meta["resumed_from_step"] == []  # trained anew
    logs = "".join(p.read_text() for p in (clone / "results/mini/logs/train").rglob("*.log"))
    assert "already complete" not in logs and "resuming" not in logs
    assert plan(clone, config) == []

    with open(clone / "qvpo/report/plots.py", "a") as f:
        f.write("\n# an edit to the plotting code\n")
    assert sorted(rule for rule, _ in plan(clone, config)) == ["plot", "provenance"]
    shutil.rmtree(tmp_path / "first")


def test_progress_reports_the_complete_runs_and_trains_nothing(tmp_path):
    """`snakemake progress` on a grid with one run unfinished: the table and figures of the other three under
    progress/, the left-out run named in the log, and no job of any other rule."""
    runs = tmp_path / "results" / "tiny" / "runs"
    scores = {("sac", 0): 10.0, ("sac", 1): 30.0, ("td3", 0): 20.0}
    for (algo, seed), score in scores.items():
        write_run(runs, "InvertedPendulum-v5", algo, seed, score)
    write_run(runs, "InvertedPendulum-v5", "td3", 1, 99.0, status="running")
    config = write_config(tmp_path, TINY_CONFIG)
    result = snakemake(tmp_path, "--cores", "1", "progress", "--configfile", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule progress" in result.stdout + result.stderr
    assert not any(f"rule {r}:" in result.stdout + result.stderr for r in ("train", "evaluate", "aggregate", "plot"))
    progress = tmp_path / "results" / "tiny" / "progress"
    table = pd.read_csv(progress / "table.csv").set_index("algo")
    assert table.loc["sac", "mean"] == 20.0 and table.loc["sac", "n_seeds"] == 2
    assert table.loc["td3", "mean"] == 20.0 and table.loc["td3", "n_seeds"] == 1
    assert "1 run(s) of the grid were missing or unfinished" in (progress / "table.md").read_text()
    log = (tmp_path / "results" / "tiny" / "logs" / "progress.log").read_text()
    assert "(InvertedPendulum-v5, td3, 1)" in log
    for name in ("eval", "train"):
        assert (progress / "figures" / f"{name}.png").stat().st_size > 0
    assert not (tmp_path / "results" / "tiny" / "logs" / "train").exists()


def test_an_algorithm_the_registry_does_not_know_stops_the_workflow(tmp_path):
    config = write_config(tmp_path, {**TINY_CONFIG, "grids": {"table": [
        {"envs": ["InvertedPendulum-v5"], "algos": ["sac", "nosuchalgo"], "seeds": [0]}]}})
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert result.returncode != 0 and "unknown algorithm(s) nosuchalgo" in result.stdout + result.stderr


REFERENCE = {"name": "sac_sb3", "library": "sb3", "algo": "sac", "envs": ["InvertedPendulum-v5"], "seeds": [0],
             "steps": 300, "warmup_steps": 100, "eval_every": 100, "eval_episodes": 2}


def test_a_reference_is_planned_as_qvpo_sb3_beside_the_table(tmp_path):
    config = write_config(tmp_path, {**TINY_CONFIG, "references": [REFERENCE]})
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(config))
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    assert counts["reference"] == 1 and counts["train"] == 4
    assert ("qvpo sb3 sac InvertedPendulum-v5 --steps 300 --warmup 100 --eval-every 100 --eval-episodes 2 "
            "--seed 0 --threads 1") in result.stdout
    # the table and the eval figure show it; the train-curves figure (no train.csv in a reference run) does not
    assert result.stdout.count("--reference-block InvertedPendulum-v5 sac_sb3 0") == 2


@pytest.mark.parametrize("edit, message", [
    ({"name": "sac"}, "reference 'sac' has the name of an algorithm"),
    ({"warmup_steps": 300}, "warmup_steps must be below steps"),
    ({"algo": "qvpo"}, "qvpo"),
])
def test_bad_reference_stops_the_workflow(tmp_path, edit, message):
    config = write_config(tmp_path, {**TINY_CONFIG, "references": [{**REFERENCE, **edit}]})
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert result.returncode != 0 and message in result.stdout + result.stderr
