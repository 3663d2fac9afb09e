"""`qvpo verify`: a run re-run from scratch on changed code is adopted when its logs are equal and refused,
naming the first differing row, when they are not; `qvpo train` says what differs."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import meta, tiny_args

PACKAGE = Path(__file__).resolve().parents[1] / "qvpo"


def qvpo(args: list[str], package: Path | None = None) -> subprocess.CompletedProcess:
    """`qvpo ARGS` in a fresh interpreter, importing the package at `package` (a changed copy) when given."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if package is not None:  # run from its folder: `python -m` puts the working directory first on the path
        env["PYTHONPATH"] = str(package.parent)
    return subprocess.run([sys.executable, "-m", "qvpo", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=package.parent if package is not None else None)


def changed_copy(tmp_path: Path, old: str, new: str, file: str = "algos/sac.py") -> Path:
    root = tmp_path / "changed" / "qvpo"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [root / file] if file else root.rglob("*.py"):
        text = path.read_text()
        assert old in text or not file
        path.write_text(text.replace(old, new))
    return root


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    """A tiny SAC run, with the pipeline's markers beside it."""
    run = tmp_path_factory.mktemp("committed") / "sac" / "seed0"
    out = qvpo(tiny_args("sac", run, steps=600))
    assert out.returncode == 0, out.stderr
    (run / "done-0123456789abcdef.json").write_text((run / "meta.json").read_text())
    (run / "final-fedcba9876543210.json").write_text(json.dumps({"episodes": 2, "return_mean": 1.0}))
    return run


def fresh(sac_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "sac" / "seed0"
    shutil.copytree(sac_run, run)
    return run


def test_meta_records_the_code_definitions_and_the_machine_kind(sac_run):
    m = meta(sac_run)
    assert "temperature_loss" in m["code_definitions"] and "gae" not in m["code_definitions"]
    assert m["machine"]["cpu"]["model"] and isinstance(m["machine"]["cpu"]["isa"], list)


def test_a_rename_is_verified_and_adopted(sac_run, tmp_path):
    run = fresh(sac_run, tmp_path)
    renamed = changed_copy(tmp_path, "temperature_loss", "temperature_objective", file="")
    old = meta(run)
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(tmp_path / "adoptions.csv")], renamed)
    assert out.returncode == 0, out.stderr
    new = meta(run)
    identity = qvpo(["code-hash", "--algo", "sac"], renamed).stdout.strip()
    assert new["code_hash"] == identity != old["code_hash"] and new["identity"] != old["identity"]
    assert "temperature_objective" in new["code_definitions"] and "temperature_loss" not in new["code_definitions"]
    rows = list(csv.DictReader(open(tmp_path / "adoptions.csv")))
    assert [(r["old_identity"], r["new_identity"], r["new_code"]) for r in rows] == [
        (old["identity"], new["identity"], identity)]
    assert rows[0]["how"].startswith("qvpo verify: logs equal up to step 400")
    assert f"adopted: identity {old['identity']} -> {new['identity']}" in out.stdout
    (done,) = run.glob("done-*.json")
    (final,) = run.glob("final-*.json")
    assert done.name != "done-0123456789abcdef.json" and json.loads(done.read_text())["identity"] == new["identity"]
    assert final.name != "final-fedcba9876543210.json"
    # the adopted run is the current code's: train finds it complete instead of refusing it
    out = qvpo(tiny_args("sac", run, steps=600), renamed)
    assert out.returncode == 0 and "already complete" in out.stderr, out.stderr


def test_a_one_constant_change_fails_verify_naming_the_first_differing_row(sac_run, tmp_path):
    run = fresh(sac_run, tmp_path)
    before = (run / "meta.json").read_text()
    changed = changed_copy(tmp_path, "(log_pi + target_entropy)).mean()", "(log_pi + target_entropy)).mean() * 0.5")
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(tmp_path / "adoptions.csv")], changed)
    assert out.returncode == 1
    assert "verify failed: eval.csv line" in out.stderr or "verify failed: train.csv line" in out.stderr
    assert "differs first" in out.stderr
    assert (run / "meta.json").read_text() == before and not (tmp_path / "adoptions.csv").exists()
    # qvpo train refuses the run and names the definition that changed
    out = qvpo(tiny_args("sac", run, steps=600), changed)
    assert out.returncode == 2 and "different code: temperature_loss" in out.stderr, out.stderr


def test_verify_refuses_a_run_of_another_machine_kind(sac_run, tmp_path):
    run = fresh(sac_run, tmp_path)
    m = meta(run)
    m["machine"]["cpu"]["model"] = "Another CPU"
    (run / "meta.json").write_text(json.dumps(m))
    out = qvpo(["verify", str(run), "--record", str(tmp_path / "adoptions.csv")])
    assert out.returncode == 2 and "bit-exact only on the machine kind that trained it" in out.stderr


def with_changed_log(run: Path) -> Path:
    """The run with its first evaluation's return changed: what another machine kind's rounding does."""
    lines = (run / "eval.csv").read_text().splitlines(keepends=True)
    row = lines[1].split(",")
    row[1] = "12345.0"
    (run / "eval.csv").write_text("".join([lines[0], ",".join(row), *lines[2:]]))
    return run


def from_another_kind(sac_run: Path, tmp_path: Path) -> Path:
    """A run recorded as made on another CPU kind, whose logs this machine cannot reproduce."""
    run = with_changed_log(fresh(sac_run, tmp_path))
    m = meta(run)
    m["machine"]["cpu"]["model"] = "Another CPU"
    (run / "meta.json").write_text(json.dumps(m))
    return run


def committed_copy(tmp_path: Path, old: str, new: str) -> Path:
    """A git repository whose one commit holds the package as it is, its working tree `old` replaced by `new`."""
    root = tmp_path / "repo" / "qvpo"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(root.parent), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "qvpo"], ["commit", "-q", "-m", "the code that made the run"]):
        subprocess.run(git + args, check=True)
    for path in root.rglob("*.py"):
        path.write_text(path.read_text().replace(old, new))
    return root


@pytest.mark.parametrize("reference", ["checkout", "commit"])
def test_a_run_of_another_kind_is_adopted_against_the_code_that_made_it(sac_run, tmp_path, reference):
    run = from_another_kind(sac_run, tmp_path)
    old = meta(run)
    if reference == "checkout":
        renamed, ref = changed_copy(tmp_path, "temperature_loss", "temperature_objective", file=""), PACKAGE.parent
    else:
        renamed, ref = committed_copy(tmp_path, "temperature_loss", "temperature_objective"), "HEAD"
    record = tmp_path / "adoptions.csv"
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(record)], renamed)
    assert out.returncode == 2 and "--reference" in out.stderr, out.stderr
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(record), "--reference", str(ref)], renamed)
    assert out.returncode == 0 and "adopted" in out.stdout, out.stderr
    new = meta(run)
    assert new["identity"] != old["identity"] and "temperature_objective" in new["code_definitions"]
    (row,) = csv.DictReader(open(record))
    recorded = str(PACKAGE.parent) if reference == "checkout" else subprocess.run(
        ["git", "-C", str(renamed.parent), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert row["how"].startswith(f"qvpo verify --reference {recorded}: its code and this code log equal values up "
                                 "to step 400")


def test_verify_against_a_reference_fails_after_a_change_of_computation(sac_run, tmp_path):
    run = from_another_kind(sac_run, tmp_path)
    before = (run / "meta.json").read_text()
    changed = changed_copy(tmp_path, "(log_pi + target_entropy)).mean()", "(log_pi + target_entropy)).mean() * 0.5")
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(tmp_path / "adoptions.csv"),
                "--reference", str(PACKAGE.parent)], changed)
    assert out.returncode == 1 and "differs first" in out.stderr, out.stderr
    assert (run / "meta.json").read_text() == before and not (tmp_path / "adoptions.csv").exists()
    # a run of this machine's kind is compared with its own logs as well
    same_kind = with_changed_log(fresh(sac_run, tmp_path / "same"))
    out = qvpo(["verify", str(same_kind), "--updates", "200", "--reference", str(PACKAGE.parent)])
    assert out.returncode == 1 and "eval.csv line 2 (step 200) differs first: return_mean is 12345.0" in out.stderr


def of_no_recorded_kind(run: Path) -> Path:
    """The run as runs made before meta.json recorded the machine kind."""
    m = meta(run)
    del m["machine"]
    (run / "meta.json").write_text(json.dumps(m))
    return run


def test_a_run_of_no_recorded_kind_is_compared_with_its_own_logs_first(sac_run, tmp_path):
    renamed = changed_copy(tmp_path, "temperature_loss", "temperature_objective", file="")
    wrong = changed_copy(tmp_path / "wrong", "temperature_loss", "temperature_function", file="")
    # its own logs are equal here: adopted without re-running the reference (a wrong one would be refused)
    run = of_no_recorded_kind(fresh(sac_run, tmp_path / "equal"))
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(tmp_path / "a.csv"),
                "--reference", str(wrong.parent)], renamed)
    assert out.returncode == 0 and "adopted" in out.stdout, out.stderr
    (row,) = csv.DictReader(open(tmp_path / "a.csv"))
    assert row["how"].startswith("qvpo verify: logs equal up to step 400")
    # its own logs differ (another kind made it): the reference decides, and only the code that made it passes
    run = of_no_recorded_kind(with_changed_log(fresh(sac_run, tmp_path / "differ")))
    out = qvpo(["verify", str(run), "--updates", "200", "--reference", str(wrong.parent)], renamed)
    assert out.returncode == 2 and "did not make" in out.stderr, out.stderr
    out = qvpo(["verify", str(run), "--updates", "200", "--record", str(tmp_path / "b.csv"),
                "--reference", str(PACKAGE.parent)], renamed)
    assert out.returncode == 0 and "adopted" in out.stdout, out.stderr
    (row,) = csv.DictReader(open(tmp_path / "b.csv"))
    assert row["how"].startswith(f"qvpo verify --reference {PACKAGE.parent}: its code and this code log equal")


def test_the_reference_cache_keeps_a_reference_rerun_for_a_later_verify(sac_run, tmp_path):
    renamed = changed_copy(tmp_path, "temperature_loss", "temperature_objective", file="")
    cache = tmp_path / "cache"
    args = ["--updates", "200", "--reference", str(PACKAGE.parent), "--reference-cache", str(cache)]
    run = from_another_kind(sac_run, tmp_path / "first")
    out = qvpo(["verify", str(run), "--record", str(tmp_path / "a.csv"), *args], renamed)
    assert out.returncode == 0, out.stderr
    (info,) = cache.rglob("info.json")
    kept = info.parent
    assert json.loads(info.read_text())["stop"] == 400 and not (kept / "checkpoint").exists()
    assert kept == cache / run.resolve().relative_to("/")
    # verified again (an adoption resumed after an interruption): already adopted, nothing to re-run
    out = qvpo(["verify", str(run), "--record", str(tmp_path / "a.csv"), *args], renamed)
    assert out.returncode == 0 and "nothing to adopt" in out.stdout, out.stderr
    # a cache over the run itself, or without a reference, is refused before anything runs
    out = qvpo(["verify", str(run), "--reference", str(PACKAGE.parent), "--reference-cache", "/"], renamed)
    assert out.returncode == 2 and "over the run itself" in out.stderr, out.stderr
    out = qvpo(["verify", str(run), "--reference-cache", str(cache)], renamed)
    assert out.returncode == 2 and "needs --reference" in out.stderr, out.stderr
    # the kept re-run is what a later verify of the same run compares with: altered, it fails
    with_changed_log(kept)
    shutil.rmtree(tmp_path / "first")
    again = from_another_kind(sac_run, tmp_path / "first")
    out = qvpo(["verify", str(again), "--record", str(tmp_path / "b.csv"), *args], renamed)
    assert out.returncode == 1 and "return_mean is 12345.0 in the run" in out.stderr, out.stderr
    # a kept re-run for another stop is re-run, not reused
    info.write_text(info.read_text().replace('"stop": 400', '"stop": 600'))
    out = qvpo(["verify", str(again), "--record", str(tmp_path / "b.csv"), *args], renamed)
    assert out.returncode == 0 and "adopted" in out.stdout, out.stderr


def test_verify_refuses_a_reference_that_did_not_make_the_run(sac_run, tmp_path):
    run = from_another_kind(sac_run, tmp_path)
    renamed = changed_copy(tmp_path / "renamed", "temperature_loss", "temperature_objective", file="")
    other = changed_copy(tmp_path, "temperature_loss", "temperature_function", file="")
    out = qvpo(["verify", str(run), "--updates", "200", "--reference", str(other.parent)], renamed)
    assert out.returncode == 2 and "did not make" in out.stderr, out.stderr
    out = qvpo(["verify", str(run), "--updates", "200", "--reference", "no-such-commit"])
    assert out.returncode == 2 and "neither a checkout" in out.stderr, out.stderr


def test_verify_rejects_bad_input(sac_run, tmp_path):
    out = qvpo(["verify", str(tmp_path)])
    assert out.returncode == 2 and "not a qvpo run directory" in out.stderr
    # several runs: each is verified, the bad one named, and the exit code is the worst
    out = qvpo(["verify", str(fresh(sac_run, tmp_path)), str(tmp_path / "nothing"), "--updates", "200"])
    assert out.returncode == 2 and "is already current" in out.stdout, out.stderr
    assert f"{tmp_path / 'nothing'} is not a qvpo run directory" in out.stderr
    assert "2 of 2 runs done: 1 verified, 0 failed (logs differ), 1 refused, 0 stopped" in out.stderr
    out = qvpo(["rerun", str(fresh(sac_run, tmp_path / "bounds")), str(tmp_path / "out"), "--until", "0"])
    assert out.returncode == 2 and "--until must lie in 1..600" in out.stderr, out.stderr
    out = qvpo(["verify", str(tmp_path), "--updates", "0"])
    assert out.returncode == 2 and "--updates must be positive" in out.stderr


ONE_CONSTANT = {  # a constant of each algorithm's own file
    "sac": ("algos/sac.py", "(log_pi + target_entropy)).mean()", "(log_pi + target_entropy)).mean() * 0.5"),
    "td3": ("algos/td3.py", ".clamp(-noise_clip, noise_clip)", ".clamp(-noise_clip, 0.5 * noise_clip)"),
    "ppo": ("algos/ppo.py", "return 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2).mean()",
            "return 0.6 * torch.max(unclipped, (v_clipped - returns) ** 2).mean()"),
    "spo": ("algos/spo.py", "(kl + eps) + sign - 1.0)", "(kl + eps) + sign - 0.9)"),
    "qvpo": ("algos/qvpo.py", "(best_q - scores.mean(dim=1)).clamp_min(0.0)",
             "(best_q - scores.mean(dim=1)).clamp_min(0.1)"),
    "dipo": ("algos/dipo.py", "a.clamp_(-1.0, 1.0)", "a.clamp_(-0.9, 1.0)"),
    "qsm": ("algos/qsm.py", "return x.clamp(-1.0, 1.0) if clip else x", "return x.clamp(-0.9, 1.0) if clip else x"),
}


@pytest.mark.long(40)
@pytest.mark.parametrize("algo", sorted(ONE_CONSTANT))
def test_each_algorithm_verifies_and_fails_after_a_one_constant_change(algo, tmp_path):
    run = tmp_path / algo / "seed0"
    assert qvpo(tiny_args(algo, run, steps=400)).returncode == 0
    out = qvpo(["verify", str(run), "--record", str(tmp_path / "adoptions.csv")])
    assert out.returncode == 0 and "is already current" in out.stdout, out.stderr
    file, old, new = ONE_CONSTANT[algo]
    out = qvpo(["verify", str(run), "--record", str(tmp_path / "adoptions.csv")], changed_copy(tmp_path, old, new, file))
    assert out.returncode == 1 and "differs first" in out.stderr, out.stderr


QUICK_RUNS = Path(__file__).resolve().parents[1] / "results" / "quick" / "runs" / "InvertedPendulum-v5"


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(ONE_CONSTANT))
def test_committed_quick_runs_verify_on_the_machine_kind_that_trained_them(algo, tmp_path):
    """`pytest -m slow`: re-runs the committed quick-preset run (seed 0) of each algorithm; skipped on
    another machine kind, where bit-exactness is not to be had."""
    from qvpo import runlog

    m = meta(QUICK_RUNS / algo / "seed0")
    if m.get("machine") != runlog.machine():
        pytest.skip(f"trained on {m.get('machine')}, not on this machine kind")
    run = tmp_path / algo / "seed0"
    shutil.copytree(QUICK_RUNS / algo / "seed0", run)
    out = qvpo(["verify", str(run), "--record", str(tmp_path / "adoptions.csv")])
    assert out.returncode == 0 and "is already current" in out.stdout, out.stderr
