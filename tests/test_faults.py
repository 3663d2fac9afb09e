"""Faults: preemption signals, divergence, failed writes, generated bad input."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest
import torch
from torch import nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import logged, meta, read_csv, run_cli, start, tiny_args, wait_for_checkpoint
from qvpo import algos, checkpoint
from qvpo.algos import BUILT_IN
from qvpo.cli import main
from qvpo.runtime import parse_slurm_duration, slurm_time_left


@pytest.mark.long(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_and_exits_then_resumes_exactly(sig, tmp_path):
    steps = 1200
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(tiny_args("sac", ref, steps)) == 0
    proc = start(tiny_args("sac", run, steps), stderr=subprocess.PIPE, text=True)
    assert wait_for_checkpoint(run, proc, 200)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=25)
    assert time.monotonic() - sent < 25
    assert proc.returncode == 128 + sig, err
    m = meta(run)
    assert m["status"] == "interrupted" and 200 <= m["step"] < steps
    assert "interrupted by signal" in err and "Traceback" not in err
    stopped_at = m["step"]
    result = run_cli(tiny_args("sac", run, steps))
    assert result.returncode == 0, result.stderr
    assert meta(run)["resumed_from_step"] == [stopped_at]
    assert logged(run) == logged(ref)


@pytest.mark.parametrize("text, seconds", [("2:59", 179), ("1:02:03", 3723), ("1-00:00:05", 86405), ("0:00", 0),
                                           ("UNLIMITED", None), ("NOT_SET", None), ("", None), ("1:2:3:4", None)])
def test_squeue_time_left_is_parsed(text, seconds):
    assert parse_slurm_duration(text) == seconds


def test_outside_slurm_there_is_no_time_limit(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm_time_left() is None


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(algo, tmp_path, monkeypatch, capsys, request):
    if algo in ("ppo", "spo"):  # strict: the day it is fixed (which retrains their runs) this fails until removed
        request.applymarker(pytest.mark.xfail(raises=RuntimeError, strict=True, reason=(
            "known: a NaN policy makes torch.normal raise inside act() before the loop's finiteness check")))
    agent_class = algos.get(algo)
    update = agent_class.update

    def poisoned(self, step):
        metrics = update(self, step)
        if step >= 390:  # after the checkpoint of step 200, just before that of step 400
            with torch.no_grad():
                for module in (v for v in vars(self).values() if isinstance(v, nn.Module)):
                    for parameter in module.parameters():
                        parameter.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(agent_class, "update", poisoned)
    run = tmp_path / "run"
    assert main(tiny_args(algo, run, 800)) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "diverged" in err and "step" in err and "last good checkpoint (step 200)" in err
    m = meta(run)
    assert m["status"] == "diverged" and m["step"] == 200 and "diverged" in m
    state = checkpoint.load(run / "checkpoint" / "state.pt")
    assert state["step"] == 200
    assert all(torch.isfinite(t).all() for v in state["agent"].values() if isinstance(v, dict)
               for t in v.values() if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_a_write_failing_part_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_write = checkpoint.atomic_write_bytes
    calls = {"state": 0}

    def failing(path, data):
        if path.name == "state.pt":
            calls["state"] += 1
            if calls["state"] == 2:  # the second checkpoint: write half, then the disk is full
                with open(path.with_name(".state.pt.tmp-x"), "wb") as f:
                    f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", failing)
    assert main(tiny_args("sac", run, 800)) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "previous checkpoint (step 200) is intact" in err[-1]
    assert checkpoint.load(run / "checkpoint" / "state.pt")["step"] == 200
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real_write)
    assert main(tiny_args("sac", run, 800)) == 0
    assert meta(run)["resumed_from_step"] == [200] and meta(run)["status"] == "complete"


def test_a_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(tiny_args("sac", ref, 400)) == 0
    assert main(tiny_args("sac", run, 200)) == 0
    with open(run / "train.csv", "a") as f:
        f.write("21")  # a kill in the middle of writing a row
    assert main(tiny_args("sac", run, 400)) == 0
    assert logged(run) == logged(ref)
    assert all(r["episode_length"] for r in read_csv(run / "train.csv"))


ALGOS = st.sampled_from([*sorted(BUILT_IN), "SAC", "", "../x", "sac;rm", "nope"])
ENVS = st.sampled_from(["Pendulum-v1", "MultiPeakBandit-v0", "CartPole-v1", "NoSuch-v5", "", "a/b-v1", "Hopper"])
KEYS = st.sampled_from(["eval_every", "eval_episodes", "tau", "gamma", "hidden", "warmup_steps", "nope", "",
                        "q_transform", "checkpoint_every"])
VALUES = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["0.5", "true", "[1]", "x", "", "[", "{a: 1}",
                                                                 "qcut", "1e400", "null"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(algo=ALGOS, env=ENVS, steps=st.integers(-2, 3), sets=st.lists(st.tuples(KEYS, VALUES), max_size=3),
       extra=st.lists(st.sampled_from(["--threads", "0", "--device", "cuda:7", "--bogus", "--seed", "x"]),
                      max_size=2))
def test_generated_arguments_run_or_fail_in_one_line(algo, env, steps, sets, extra, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--algo", algo, "--env", env, "--steps", str(steps), "--out", str(out), "--threads", "1",
            "--set", "eval_episodes=1", "--set", "warmup_steps=1"]
    for key, value in sets:
        argv += ["--set", f"{key}={value}"]
    code = main(argv + extra)
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("qvpo: error: ")
