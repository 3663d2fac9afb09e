"""The tiny grid through a one-node SLURM cluster and the slurm-local profile (acceptance 3).

Run on its own, as root (it installs slurm-wlm and munge when missing):
    pytest -m slurm tests/test_slurm.py
Other runs skip it. The cluster is started with scripts/slurm/start-local-slurm.sh and
stopped afterwards with scripts/slurm/stop-local-slurm.sh.
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest
from pipeline_helpers import PROJECT, TINY_CONFIG, check_table, snakemake, write_config

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
