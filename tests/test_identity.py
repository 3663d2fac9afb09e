"""A run's code identity follows what its training computes (qvpo.identity), on copies of the package:
comments, docstrings, formatting, order and moves change nothing; each change of computation changes
exactly the algorithms whose training executes it."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qvpo.identity import Package, changed_definitions, code_identity

ALGOS = ("sac", "td3", "ppo", "spo", "qvpo", "dipo", "qsm")
OFF_POLICY = {"sac", "td3", "qvpo", "dipo", "qsm"}
PACKAGE = Path(__file__).resolve().parents[1] / "qvpo"


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the package (tmp/qvpo), importable with PYTHONPATH=tmp."""
    shutil.copytree(PACKAGE, tmp_path / "qvpo", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "qvpo"


def identities(package_dir: Path) -> dict[str, str]:
    package = Package(package_dir)
    return {algo: code_identity(algo, package).hash for algo in ALGOS}


@pytest.fixture(scope="module")
def original() -> dict[str, str]:
    return identities(PACKAGE)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


# ---------------------------------------------------------------- what must not change it
def add_comments_and_docstrings(root: Path) -> None:
    """A comment before every top-level statement and a docstring first in every function and class
    body (an existing docstring becomes the second string, dropped all the same)."""
    for path in root.rglob("*.py"):
        lines = path.read_text().splitlines(keepends=True)
        tree = ast.parse("".join(lines))
        inserts: list[tuple[int, str]] = [(n.lineno - 1 - len(getattr(n, "decorator_list", [])), "# a comment\n")
                                          for n in tree.body if not isinstance(n, ast.Expr)]
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = node.body[0]
                line = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
                if line > node.lineno:  # not a one-line body
                    inserts.append((line - 1, " " * first.col_offset + '"""An added docstring."""  # and a note\n'))
        for index, text in sorted(inserts, reverse=True):
            lines.insert(max(index, 0), text)
        path.write_text("".join(lines))


def reformat(root: Path) -> None:
    files = [root / "loop.py", root / "diffusion.py", root / "algos" / "qvpo.py", root / "algos" / "ppo.py"]
    subprocess.run([sys.executable, "-m", "black", "-q", "--line-length", "79", *map(str, files)], check=True)


def reorder(root: Path) -> None:
    """The top-level functions of nets.py and loop.py in reverse order (classes stay: bases come first)."""
    for path in (root / "nets.py", root / "loop.py"):
        lines = path.read_text().splitlines(keepends=True)
        spans = [(min([n.lineno] + [d.lineno for d in n.decorator_list]) - 1, n.end_lineno)
                 for n in ast.parse("".join(lines)).body if isinstance(n, ast.FunctionDef)]
        texts = ["".join(lines[a:b]) for a, b in spans]
        out, at = [], 0
        for (a, b), text in zip(spans, reversed(texts)):
            out += lines[at:a] + [text if text.endswith("\n") else text + "\n"]
            at = b
        path.write_text("".join(out + lines[at:]))


def move_helper(root: Path) -> None:
    """nets.soft_update moved to a new module qvpo/targets.py; its importers import it from there."""
    nets = root / "nets.py"
    source = nets.read_text()
    node = next(n for n in ast.parse(source).body if getattr(n, "name", "") == "soft_update")
    lines = source.splitlines(keepends=True)
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    text = "".join(lines[start:node.end_lineno])
    nets.write_text("".join(lines[:start] + lines[node.end_lineno:]))
    (root / "targets.py").write_text(f'"""Target networks."""\nimport torch\nfrom torch import nn\n\n\n{text}\n')
    for path in root.rglob("*.py"):
        body = path.read_text()
        line = re.search(r"^from qvpo\.nets import (.*)$", body, re.M)
        if line and "soft_update" in line.group(1).split(", "):
            names = [n for n in line.group(1).split(", ") if n != "soft_update"]
            body = body.replace(line.group(0), f"from qvpo.nets import {', '.join(names)}\n"
                                               "from qvpo.targets import soft_update")
            path.write_text(body)


def add_unused_function(root: Path) -> None:
    for path in (root / "nets.py", root / "algos" / "sac.py", root / "loop.py"):
        path.write_text(path.read_text() + "\n\ndef unused_helper(x):\n    return x * 2 + 1\n")


CHANGES_OF_FORM = {"comments": add_comments_and_docstrings, "reformat": reformat, "reorder": reorder,
                   "move": move_helper, "unused": add_unused_function}


@pytest.mark.parametrize("change", CHANGES_OF_FORM)
def test_a_change_of_form_keeps_every_identity(copy, original, change):
    before = (copy / "nets.py").read_text() + (copy / "loop.py").read_text()
    CHANGES_OF_FORM[change](copy)
    assert (copy / "nets.py").read_text() + (copy / "loop.py").read_text() != before or change == "comments"
    assert identities(copy) == original


def test_all_changes_of_form_together_keep_qvpo_code_hash(copy, original):
    """`qvpo code-hash` of the changed copy (which still imports and runs) prints the same identities."""
    for change in CHANGES_OF_FORM.values():
        change(copy)
    script = ("import sys, qvpo.cli as c; assert c.__file__.startswith(sys.argv[1]), c.__file__\n"
              "for a in sys.argv[2:]: c.main(['code-hash', '--algo', a])")
    env = {**os.environ, "PYTHONPATH": str(copy.parent)}
    out = subprocess.run([sys.executable, "-c", script, str(copy), *ALGOS], env=env, cwd=copy.parent,
                         capture_output=True, text=True, check=True)
    assert dict(zip(ALGOS, out.stdout.split())) == original


# ---------------------------------------------------------------- what must change it
CHANGES_OF_COMPUTATION = {
    "SAC's temperature loss": ("algos/sac.py", "(log_pi + target_entropy)).mean()",
                               "(log_pi + target_entropy)).mean() * 0.5", {"sac"}),
    "TD3's target-noise clip": ("algos/td3.py", ".clamp(-noise_clip, noise_clip)",
                                ".clamp(-noise_clip, 0.5 * noise_clip)", {"td3"}),
    # QSM samples with its own VP sampler (qvpo/algos/qsm.py), not DDPM's: its clamp is the next case
    "the DDPM sampler's x0 clamp": ("diffusion.py", ".add_(eps, alpha=-c_recipm1).clamp_(-clip, clip)",
                                    ".add_(eps, alpha=-c_recipm1).clamp_(-clip, 0.9 * clip)", {"dipo", "qvpo"}),
    "QSM's sampler clamp": ("algos/qsm.py", "return x.clamp(-1.0, 1.0) if clip else x",
                            "return x.clamp(-0.9, 1.0) if clip else x", {"qsm"}),
    "a byte of the native kernels' C source": ("native.py", "    return x * m / (m + 2.0f);",
                                               "    return x * m / (m + 2.1f);", {"dipo", "qvpo"}),
    "PPO's GAE": ("algos/ppo.py", "delta = r[t] + gamma * next_values * nonterminal - v[t]",
                  "delta = r[t] + gamma * next_values * nonterminal - 0.5 * v[t]", {"ppo", "spo"}),
    "a default of QVPO's settings": ("algos/qvpo.py", "    nd: int = 64", "    nd: int = 32", {"qvpo"}),
    "the evaluation routine": ("evaluation.py", "returns += np.where(running, tr.reward, 0.0)",
                               "returns += np.where(running, 2 * tr.reward, 0.0)", set(ALGOS)),
    "the checkpoint-resume path": ("loop.py", 'self.last_eval = state["last_eval"]',
                                   'self.last_eval = state.get("last_eval")', set(ALGOS)),
    "the replay buffer's sampling": ("buffers.py", "return self.rng.integers(0, self.size, size=batch_size)",
                                     "return self.rng.integers(0, self.size - 1, size=batch_size)", OFF_POLICY),
}


@pytest.mark.parametrize("change", CHANGES_OF_COMPUTATION)
def test_a_change_of_computation_changes_exactly_the_algorithms_that_execute_it(copy, original, change):
    file, old, new, expected = CHANGES_OF_COMPUTATION[change]
    edit(copy / file, old, new)
    after = identities(copy)
    assert {algo for algo in ALGOS if after[algo] != original[algo]} == expected


def test_the_changed_definition_is_named(copy):
    before = code_identity("td3", Package(copy)).definitions
    edit(copy / "algos/td3.py", ".clamp(-noise_clip, noise_clip)", ".clamp(-noise_clip, 0.5 * noise_clip)")
    assert changed_definitions(before, code_identity("td3", Package(copy)).definitions) == ["smoothed_target_action"]


def test_a_pinned_library_version_is_part_of_the_identity(monkeypatch, original):
    from qvpo import identity

    versions = identity.pinned_versions()
    assert versions["torch"] == versions["torch"].split("+")[0]  # no build tag: a CUDA build is the same version
    monkeypatch.setattr(identity, "pinned_versions", lambda: {**versions, "mujoco": "9.9.9"})
    assert all(identities(PACKAGE)[a] != original[a] for a in ALGOS)


def test_registering_another_algorithm_changes_no_identity(copy, original):
    edit(copy / "algos/__init__.py", '"qsm": "qvpo.algos.qsm:QSM",',
         '"qsm": "qvpo.algos.qsm:QSM",\n    "toy": "qvpo.algos.toy:Toy",')
    assert identities(copy) == original


def test_code_hash_cli_lists_definitions(tmp_path):
    out = subprocess.run([sys.executable, "-m", "qvpo", "code-hash", "--algo", "sac", "--definitions"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    names = {line.split()[1] for line in out[1:]}
    assert re.fullmatch(r"[0-9a-f]{16}", out[0]) and {"temperature_loss", "evaluate", "ReplayBuffer"} <= names
    assert "gae" not in names and "weighted_eps_loss" not in names


def test_old_settings_names_load_through_the_alias_table(monkeypatch):
    from qvpo import settings
    from qvpo.algos.sac import SACSettings
    from qvpo.errors import UserError

    monkeypatch.setitem(settings.SETTING_ALIASES, "polyak", "tau")
    assert settings.resolve(SACSettings, {"polyak": 0.01}).tau == 0.01
    assert settings.resolve(SACSettings, {"tau": 0.02}).tau == 0.02
    with pytest.raises(UserError, match="old name of 'tau'"):
        settings.resolve(SACSettings, {"polyak": 0.01, "tau": 0.02})
    assert json.dumps(settings.rename_aliases(SACSettings, {"polyak": 1, "gamma": 0.9})) == '{"tau": 1, "gamma": 0.9}'


def test_a_library_pinned_where_imported_counts_for_its_importers_only(monkeypatch):
    """scikit-learn's version is part of DACER's identity (its mixture fit), not of SAC's."""
    from qvpo import identity

    before = {algo: identity.code_identity(algo).hash for algo in ("dacer", "sac")}
    real = identity.metadata.version
    monkeypatch.setattr(identity.metadata, "version", lambda name: "0.0" if name == "scikit-learn" else real(name))
    after = {algo: identity.code_identity(algo).hash for algo in ("dacer", "sac")}
    assert after["dacer"] != before["dacer"] and after["sac"] == before["sac"]
