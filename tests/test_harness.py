"""The run harness, for every registered algorithm: files, exactness, kill-and-resume, bad input."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY, kill_after_checkpoint, logged, meta, read_csv, run_cli, tiny_args
from qvpo import runlog
from qvpo.cli import main

def test_run_directory_files(algo, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(algo, run, steps=400)) == 0
    for name in ("config.yaml", "eval.csv", "train.csv", "meta.json", "checkpoint/state.pt"):
        assert (run / name).exists(), name
    m = meta(run)
    assert m["status"] == "complete" and m["step"] == 400 and m["resumed_from_step"] == []
    for key in ("code_hash", "versions", "device", "threads", "seed", "identity"):
        assert key in m
    evals = read_csv(run / "eval.csv")
    assert [int(r["step"]) for r in evals] == [200, 400]
    assert {"step", "return_mean", "return_std", "episodes"} <= set(evals[0])
    assert len(read_csv(run / "train.csv")) > 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["algo"] == algo and config["settings"]["eval_every"] == 200
    # the same command on a complete run is a no-op that exits 0
    before = (run / "eval.csv").read_bytes()
    assert main(tiny_args(algo, run, steps=400)) == 0
    assert (run / "eval.csv").read_bytes() == before


def test_same_command_twice_is_identical(algo, tmp_path):
    assert main(tiny_args(algo, tmp_path / "a")) == 0
    assert main(tiny_args(algo, tmp_path / "b")) == 0
    assert logged(tmp_path / "a") == logged(tmp_path / "b")


@pytest.mark.long(120)
def test_sigkill_after_several_checkpoints_then_resume_is_exact(algo, tmp_path):
    steps = 1200
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(tiny_args(algo, ref, steps)) == 0
    first = kill_after_checkpoint(tiny_args(algo, run, steps), run, 200)
    assert first is not None and first < steps, "the run finished before it could be killed"
    second = kill_after_checkpoint(tiny_args(algo, run, steps), run, first + 400)
    assert second is not None and first < second < steps

    result = run_cli(tiny_args(algo, run, steps))
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} from step {second}" in result.stderr
    m = meta(run)
    assert m["resumed_from_step"] == [first, second] and m["status"] == "complete"
    assert logged(run) == logged(ref)


def test_larger_steps_extends_a_complete_run(tmp_path):
    algo = "sac"
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(tiny_args(algo, ref, 800)) == 0
    assert main(tiny_args(algo, run, 400)) == 0
    assert main(tiny_args(algo, run, 800)) == 0
    assert meta(run)["resumed_from_step"] == [400]
    assert logged(run) == logged(ref)


def test_other_identity_is_refused_then_restart(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args("sac", run, 200)) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(tiny_args("sac", run, 200, seed=1)) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(tiny_args("sac", run, 200, seed=1) + ["--restart"]) == 0
    assert meta(run)["seed"] == 1


def test_evaluate_writes_json(tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args("td3", run, 200)) == 0
    out = tmp_path / "final.json"
    assert main(["evaluate", str(run), "--episodes", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and len(result["returns"]) == 3 and result["step"] == 200
    assert result["return_mean"] == pytest.approx(sum(result["returns"]) / 3)


BAD_INPUT = [
    (["train", "--algo", "nope", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}"], "unknown algorithm"),
    (["train", "--algo", "sac", "--env", "NoSuchEnv-v5", "--steps", "10", "--out", "{d}"], "unknown environment"),
    (["train", "--algo", "sac", "--env", "CartPole-v1", "--steps", "10", "--out", "{d}"], "Discrete action space"),
    (["train", "--algo", "sac", "--env", "../../etc-v1", "--steps", "10", "--out", "{d}"], "invalid environment id"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "0", "--out", "{d}"], "--steps must be positive"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "-5", "--out", "{d}"], "--steps must be positive"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--set", "nope=1"],
     "unknown setting 'nope'"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--set", "tau=fast"],
     "setting 'tau' must be of type float"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--set", "batch_size=2.5"],
     "setting 'batch_size' must be of type int"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--set", "noequals"],
     "--set expects key=value"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--config", "{d}/none.yaml"],
     "cannot read config file"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "ten", "--out", "{d}"], "invalid int value"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--device", "tpu"],
     "device"),
    (["evaluate", "{d}/missing"], "not a qvpo run directory"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--stop-before-limit", "-1"],
     "--stop-before-limit must be >= 0"),
    (["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", "{d}", "--set", "hidden=[]"],
     "setting 'hidden' must be a non-empty list of positive layer widths"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main([a.replace("{d}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_input_through_the_real_command(tmp_path):
    result = run_cli(["train", "--algo", "sac", "--env", "Hopper-v5", "--steps", "10", "--out", str(tmp_path),
                      "--set", "gamma=[1]"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "qvpo: error: setting 'gamma' must be of type float, got [1]"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_is_reported_not_loaded(damage, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args("sac", run, 200)) == 0
    state = run / "checkpoint" / "state.pt"
    data = state.read_bytes()
    if damage == "truncate":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        state.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        state.unlink()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert {"truncate": "truncated", "flip": "corrupt", "delete": "missing"}[damage] in err
    # training on top of a damaged checkpoint refuses too, leaving it for the user to inspect
    meta_path = run / "meta.json"
    m = json.loads(meta_path.read_text())
    m["status"] = "running"
    meta_path.write_text(json.dumps(m))
    if damage != "delete":
        assert main(tiny_args("sac", run, 400)) == 2
        assert state.exists()


def test_tiny_table_covers_every_registered_algorithm():
    from qvpo.algos import BUILT_IN

    assert set(TINY) == set(BUILT_IN)


def test_changed_code_is_refused_unless_accepted_and_then_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args("sac", run, 200)) == 0
    m = meta(run)  # pretend the run was made by other code
    m["code_hash"] = "0" * 16
    m["identity"] = runlog.identity("sac", m["env"], 0, yaml.safe_load((run / "config.yaml").read_text())["settings"],
                                    m["code_hash"])
    (run / "meta.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert main(tiny_args("sac", run, 400)) == 2
    assert "--accept-code-change" in capsys.readouterr().err
    assert main(tiny_args("sac", run, 400) + ["--accept-code-change"]) == 0
    m = meta(run)
    assert m["code_history"] == [{"code_hash": "0" * 16, "git_commit": m["code_history"][0]["git_commit"],
                                  "until_step": 200}]
    assert m["resumed_from_step"] == [200] and m["code_hash"] == runlog.code_hash("sac")
    # other settings are never accepted
    assert main(tiny_args("sac", run, 400) + ["--set", "tau=0.01", "--accept-code-change"]) == 2
