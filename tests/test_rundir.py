"""`qvpo status`: what the train rule asks before it resumes or replaces a run directory."""
from __future__ import annotations

import json

import pytest

from qvpo.cli import main
from qvpo.rundir import RunDir


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "meta.json").write_text(json.dumps({"identity": "abc", "status": "running", "step": 400, "steps": 600}))
    return path


@pytest.mark.parametrize("identity, steps, expected", [
    ("abc", 600, True),    # the same run, asked for as many steps: resume
    ("abc", 400, True),    # no further than asked: resume (qvpo train then finds it complete)
    ("abc", 300, False),   # further than asked: qvpo train would take it as complete, so replace it
    ("xyz", 600, False),   # another identity (code or settings): replace
])
def test_resumable(run, identity, steps, expected):
    assert RunDir(run).resumable(identity, steps) is expected


def test_no_or_unreadable_meta_is_not_resumable(tmp_path):
    assert not RunDir(tmp_path / "absent").resumable("abc", 600)
    (tmp_path / "meta.json").write_text("{not json")
    assert not RunDir(tmp_path).resumable("abc", 600)


def test_status_command(run, capsys):
    assert main(["status", str(run), "--identity", "abc", "--steps", "600"]) == 0
    assert capsys.readouterr().out == "resume\n"
    assert main(["status", str(run), "--identity", "xyz", "--steps", "600"]) == 0
    assert capsys.readouterr().out == "restart\n"
    assert main(["status", str(run)]) == 0
    assert json.loads(capsys.readouterr().out) == {"identity": "abc", "path": str(run), "status": "running",
                                                  "step": 400, "steps": 600}
    assert main(["status", str(run), "--identity", "abc"]) == 2
    assert "--identity needs --steps" in capsys.readouterr().err
