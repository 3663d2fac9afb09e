"""On a one-node SLURM cluster: the tiny grid through the slurm-local profile (issue 5, acceptance 3),
and a training job preempted by `scontrol requeue` that resumes to the same result (issue 7, item 6).

Run on its own, as root (it installs slurm-wlm and munge when missing):
    pytest -m slurm tests/test_slurm.py
Other runs skip it. The cluster is started with scripts/slurm/start-local-slurm.sh and
stopped afterwards with scripts/slurm/stop-local-slurm.sh.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest
from conftest import logged, meta, tiny_args
from pipeline_helpers import PROJECT, TINY_CONFIG, check_table, snakemake, write_config
from qvpo.cli import main

pytestmark = pytest.mark.slurm
SCRIPTS = PROJECT / "scripts" / "slurm"


@pytest.fixture(scope="module")
def cluster(request):
    if "slurm" not in (request.config.option.markexpr or ""):
        pytest.skip("needs a local SLURM cluster: run with -m slurm")
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root")
    started = subprocess.run(["bash", str(SCRIPTS / "start-local-slurm.sh")], check=False, capture_output=True,
                             text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    subprocess.run(["bash", str(SCRIPTS / "stop-local-slurm.sh")], check=False, capture_output=True, text=True,
                   timeout=120)


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def test_tiny_grid_on_slurm(cluster, tmp_path):
    config = write_config(tmp_path, TINY_CONFIG)
    # a Snakemake stuck on status queries ignores SIGTERM; subprocess's timeout kills it outright
    result = snakemake(tmp_path, "--profile", str(PROJECT / "workflow" / "profiles" / "slurm-local"),
                       "--configfile", str(config), timeout=1200)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log)
    rules = sorted(rule for _, rule in submitted)
    assert rules == ["aggregate"] + ["evaluate"] * 4 + ["plot"] * 2 + ["train"] * 4  # provenance runs locally
    for slurm_id, _ in submitted:  # finished jobs stay known to slurmctld for MinJobAge (600 s)
        job = scontrol_job(slurm_id)
        assert job["JobState"] == "COMPLETED" and job["WorkDir"] == str(tmp_path), job
    check_table(tmp_path / TINY_CONFIG["results"], TINY_CONFIG)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpointed_step(run) -> int:
    try:
        return meta(run).get("step", 0)
    except (OSError, ValueError):
        return 0


STEPS = 3000


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, outside SLURM, of the tiny SAC the preempted jobs run."""
    ref = tmp_path_factory.mktemp("reference") / "run"
    assert main(tiny_args("sac", ref, STEPS)) == 0
    return ref


def submit(tmp_path, run, *options: str, qvpo_options: tuple[str, ...] = ()) -> str:
    """sbatch a job running the reference's `qvpo train` command into `run`; its job id."""
    script = tmp_path / "train.sh"
    command = [sys.executable, "-m", "qvpo", *tiny_args("sac", run, STEPS), *qvpo_options]
    script.write_text(f"#!/bin/bash\nexport PYTHONHASHSEED=0\nexec {shlex.join(command)}\n")
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--open-mode=append", "--partition=debug", "--mem=1000", "--cpus-per-task=1",
         f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%j.out", *options, str(script)],
        capture_output=True, text=True, check=True)
    return submitted.stdout.strip().split(";")[0]


def test_requeued_training_job_checkpoints_and_resumes_to_the_same_result(cluster, reference, tmp_path):
    """`scontrol requeue` is a preemption: SLURM sends SIGTERM, the job is put back in the queue and
    started again with the same command, which must resume from the checkpoint the signal wrote."""
    run = tmp_path / "run"
    job_id = submit(tmp_path, run, "--requeue", "--time=20")

    first = wait_for(lambda: checkpointed_step(run) >= 200 and checkpointed_step(run), 300, "a first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    wait_for(lambda: scontrol_job(job_id)["JobState"] == "COMPLETED", 900, "the requeued job to complete")

    job, m = scontrol_job(job_id), meta(run)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["Restarts"] == "1", job
    assert "interrupted by signal 15" in output and "Traceback" not in output, output[-3000:]
    assert m["status"] == "complete" and len(m["resumed_from_step"]) == 1, m
    assert first <= m["resumed_from_step"][0] < STEPS
    assert logged(run) == logged(reference)


def test_a_job_near_its_time_limit_stops_itself_and_resumes_on_resubmission(cluster, reference, tmp_path):
    """A 2-minute job: qvpo reads the time left from squeue and, 112 s before the limit (a few seconds into
    training, however fast the machine), checkpoints and exits 75 (what a Snakemake retry, or a user's
    resubmission, resumes from)."""
    run = tmp_path / "run"
    job_id = submit(tmp_path, run, "--time=2", qvpo_options=("--stop-before-limit", "112"))
    wait_for(lambda: scontrol_job(job_id)["JobState"] not in ("PENDING", "RUNNING"), 300, "the first job to end")
    job, m = scontrol_job(job_id), meta(run)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "75:0", job
    assert "s before the SLURM job's time limit" in output and "Traceback" not in output, output[-3000:]
    assert m["status"] == "interrupted" and 0 < m["step"] < STEPS, m
    stopped_at = m["step"]

    second = submit(tmp_path, run, "--time=20")
    wait_for(lambda: scontrol_job(second)["JobState"] == "COMPLETED", 600, "the resubmitted job to complete")
    m = meta(run)
    assert m["status"] == "complete" and m["resumed_from_step"] == [stopped_at], m
    assert logged(run) == logged(reference)
