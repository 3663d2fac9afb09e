"""Keeping committed runs across changes of identity: `qvpo verify` and `qvpo adopt-legacy`.

A run belongs to the identity of the code that made it (qvpo.identity). When a change renames or
restructures code, the runs it touches are kept only when shown equivalent:
  - `qvpo verify RUN_DIR` re-runs the run's beginning past its warm-up (at least VERIFY_UPDATES
    environment steps of updates, to an evaluation) from scratch on the current code, and compares
    eval.csv, train.csv and actions.csv with the run's, every column but the wall times, value by
    value as written. Equal: the run is adopted under the current identity. Those values are bit-exact
    only on the machine kind that trained the run; on any other kind, `--reference COMMIT` re-runs the
    same beginning here on the code at COMMIT too (which must give the run its recorded identity: it
    made the run) and compares the two re-runs: equal values show that the change computes what the
    code that made the run computes. A run that records no machine kind is compared with its own logs
    first, and with the reference only if they differ; a run of this kind, with its own logs only.
    `--reference-cache DIR` keeps each reference re-run under DIR, to be reused by a later verify of
    the same run against the same reference on this machine kind (an interrupted adoption resumes).
  - `qvpo adopt-legacy --parent COMMIT RUNS...` adopts the runs made before identities followed what
    code computes: those whose recorded code hash is the byte hash of their algorithm's sources at
    COMMIT (the parent of the change that brought identities), with no code history.
Adopting rewrites meta.json (identity, code hash and definitions, and the adoption), renames the
pipeline's markers done-<key>.json and final-<key>.json to the current keys, and appends a row to
the adoptions file (results/adoptions.csv).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from qvpo import algos, runlog
from qvpo.errors import UserError
from qvpo.identity import current as current_code
from qvpo.rundir import RunDir
from qvpo.settings import as_dict, resolve

VERIFY_UPDATES = 3000
"""Environment steps past the warm-up that `verify` re-runs at least (one update each off-policy)."""
NOT_COMPARED = {"wall_time_s"}
"""Columns that differ between any two runs of the same computation."""
COMPARED_LOGS = ("eval.csv", "train.csv", "actions.csv")
ADOPTION_COLUMNS = ["run", "old_identity", "new_identity", "old_code", "new_code", "commit", "how"]


def current_settings(config: dict) -> dict:
    """The run's recorded settings as the current settings class reads them (renamed keys through the alias table)."""
    return as_dict(resolve(algos.get(config["algo"]).Settings, config["settings"]))


def verify_stop(config: dict, steps: int, updates: int = VERIFY_UPDATES) -> int:
    """The first evaluation step at least `updates` steps past the run's warm-up, or the run's end (config:
    its config.yaml; renamed settings keys read through the alias table)."""
    cls = algos.get(config["algo"])
    settings = resolve(cls.Settings, config["settings"])
    every = settings.eval_every
    return min(steps, -(-(cls.warmup(settings) + updates) // every) * every)


def _rows(path: Path, until: int) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [r for r in reader if r and r[0].isdigit() and int(r[0]) <= until]
    return header, rows


def first_difference(committed: Path, fresh: Path, until: int) -> tuple[int, str] | None:
    """None when the two logs hold the same values up to step `until` (NOT_COMPARED columns aside);
    else the step where they first differ and what differs."""
    header, old = _rows(committed, until)
    new_header, new = _rows(fresh, until)
    if header != new_header:
        return 0, f"{committed.name}: columns differ ({','.join(header)} against {','.join(new_header)} now)"
    kept = [i for i, c in enumerate(header) if c not in NOT_COMPARED]
    for n, (a, b) in enumerate(zip(old, new), start=2):  # line 1 is the header
        for i in kept:
            if a[i] != b[i]:
                return int(a[0]), (f"{committed.name} line {n} (step {a[0]}) differs first: {header[i]} is {a[i]} "
                                   f"in the run, {b[i]} now")
    if len(old) != len(new):
        return until, f"{committed.name}: {len(old)} rows up to step {until} in the run, {len(new)} now"
    return None


def describe(machine: dict) -> str:
    cpu = machine.get("cpu", {})
    text = f"{cpu.get('model', '?')} ({cpu.get('arch', '?')}; {' '.join(cpu.get('isa', [])) or 'no listed ISA'})"
    return text + (f", GPU {machine['gpu']}" if "gpu" in machine else "")


def rerun(run_dir: Path, out: Path, until: int | None, updates: int = VERIFY_UPDATES,
          expect_identity: str | None = None):
    """Re-run the run's beginning (to `until`, else to its verify_stop) on this code into `out`; the Trainer.
    With `expect_identity`, refuse before training unless this code gives the run that identity."""
    from qvpo.loop import Trainer, TrainRequest

    meta, config = RunDir(run_dir).read()
    settings = current_settings(config)
    stop = until if until is not None else verify_stop(config, meta["steps"], updates)
    if not 0 < stop <= meta["steps"]:
        raise UserError(f"--until must lie in 1..{meta['steps']} (the run's steps), got {stop}")
    trainer = Trainer(TrainRequest(config["algo"], config["env"], config["seed"], meta["steps"], out, settings,
                                   meta.get("device", "cpu"), meta.get("threads"), restart=True, progress=False,
                                   stop_at=stop))
    if expect_identity is not None and trainer.identity != expect_identity:
        raise UserError(f"this code gives {run_dir} the identity {trainer.identity}, not {expect_identity}: "
                        "it did not make the run")
    if trainer.run() != 0:
        raise UserError(f"the re-run of {run_dir} was interrupted before step {stop}")
    return trainer


def cmd_rerun(args) -> int:
    """`qvpo rerun RUN_DIR OUT --until STEP`: what `verify --reference` runs on the reference code."""
    trainer = rerun(args.run_dir.resolve(), args.out.resolve(), args.until, expect_identity=args.expect_identity)
    print(json.dumps({"identity": trainer.identity, "package": str(runlog.PACKAGE_DIR)}))
    return 0


def logs_differences(expected: Path, fresh: Path, until: int) -> list[tuple[int, str]]:
    """Each compared log's first difference between two run directories up to step `until`."""
    differences = []
    for name in COMPARED_LOGS:
        ours, theirs = expected / name, fresh / name
        if ours.exists() != theirs.exists():
            differences.append((0, f"{name} exists on one side only"))
        elif ours.exists():
            differences.append(first_difference(ours, theirs, until))
    return [d for d in differences if d is not None]


def resolve_reference(reference: str) -> str:
    """REFERENCE as it is recorded: a checkout's absolute folder, or the full hash of a commit of this
    package's repository (so that `HEAD~2` means the same thing later, and no option reaches git)."""
    if (Path(reference) / "qvpo" / "__main__.py").is_file():
        return str(Path(reference).resolve())
    repo = runlog.PACKAGE_DIR.parent
    out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{reference}^{{commit}}"],
                         cwd=repo, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"--reference {reference} is neither a checkout (a folder holding qvpo/) nor a commit of "
                        f"{repo}'s git repository")
    return out.stdout.strip()


def unpack_package(commit: str, tmp: Path, what: str) -> None:
    """The `qvpo` package as it is at `commit` of this package's repository, unpacked into `tmp`."""
    repo = runlog.PACKAGE_DIR.parent
    archive = subprocess.run(["git", "archive", "--end-of-options", commit, "qvpo"], cwd=repo, capture_output=True)
    if archive.returncode != 0:
        raise UserError(f"{what} {commit} of {repo}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)


def rerun_on_reference(reference: str, run_dir: Path, out: Path, until: int, identity: str) -> None:
    """Re-run the run's beginning on the reference code (a resolved checkout or commit), in its own
    interpreter, refusing it unless that code gives the run `identity`."""
    with tempfile.TemporaryDirectory(prefix="qvpo-reference-") as tmp:
        tree = Path(reference)
        if not (tree.is_absolute() and (tree / "qvpo" / "__main__.py").is_file()):  # a commit's hash
            tree = Path(tmp)
            unpack_package(reference, tree, "cannot read commit")
        # from the tree's folder: `python -m` puts the working directory first on the path
        done = subprocess.run([sys.executable, "-m", "qvpo", "rerun", str(run_dir.resolve()), str(out.resolve()),
                               "--until", str(until), "--expect-identity", identity], cwd=tree, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(tree)})
        if "invalid choice: 'rerun'" in done.stderr:
            raise UserError(f"the code at {reference} has no `qvpo rerun` (it came with `verify --reference`): "
                            "name a later commit whose code gives the run its identity")
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("qvpo: error: ")
            raise UserError(f"the reference code ({reference}) cannot re-run {run_dir}: {last}")
        try:
            package = json.loads(done.stdout.strip().splitlines()[-1])["package"]
        except (IndexError, ValueError, KeyError, TypeError):
            raise UserError(f"the reference code ({reference}) printed no result for {run_dir}") from None
        if Path(package).resolve() != (tree / "qvpo").resolve():
            raise UserError(f"the reference re-run imported {package}, not {tree / 'qvpo'}")


OUTCOMES = {0: "verified", 1: "failed (logs differ)", 2: "refused", 3: "stopped"}


def cmd_verify(args) -> int:
    """Each run in turn; the exit code is the worst outcome (OUTCOMES, by number)."""
    if args.reference is not None:
        args.reference = resolve_reference(args.reference)
    elif args.reference_cache is not None:
        raise UserError("--reference-cache keeps re-runs of the reference code: it needs --reference")
    if len(args.run_dirs) == 1:
        return verify(args.run_dirs[0], args)
    from qvpo.cli import one_line
    from qvpo.errors import RunStopped

    threads = torch.get_num_threads()
    codes = []
    try:
        for run_dir in args.run_dirs:
            torch.set_num_threads(threads)  # a run that records no thread count gets torch's choice, as it did
            try:
                codes.append(verify(run_dir, args))
            except UserError as e:
                print(f"qvpo: error: {one_line(str(e))}", file=sys.stderr)
                codes.append(2)
            except RunStopped as e:
                print(f"qvpo: {one_line(str(e))}", file=sys.stderr)
                codes.append(3)
    finally:
        print(f"qvpo: verify: {len(codes)} of {len(args.run_dirs)} runs done: "
              + ", ".join(f"{codes.count(c)} {what}" for c, what in OUTCOMES.items()), file=sys.stderr)
    return max(codes)


def verify(run_dir: Path, args) -> int:
    meta, config = RunDir(run_dir).read()
    here = runlog.machine(meta.get("device", "cpu") if meta.get("device", "cpu").startswith("cuda") else "cpu")
    recorded = meta.get("machine")
    same_kind = recorded is not None and recorded == here
    if args.reference is None and recorded is not None and not same_kind:
        raise UserError(f"{run_dir} was trained on {describe(recorded)}; this machine is {describe(here)}: "
                        "its numbers are bit-exact only on the machine kind that trained it, so verify it there, "
                        "or here against the code that made it (--reference COMMIT)")
    stop = verify_stop(config, meta["steps"], args.updates)
    needs_reference = args.reference is not None and not same_kind
    cached = cache_place(args.reference_cache, run_dir) if needs_reference and args.reference_cache else None
    current = runlog.identity(config["algo"], config["env"], config["seed"], current_settings(config),
                              current_code(config["algo"]).hash)
    if needs_reference and current == meta["identity"]:  # adopted already (e.g. by an interrupted batch)
        print(f"qvpo: {run_dir} already has this code's identity {current}: nothing to adopt")
        return 0
    if meta.get("step", 0) < stop:
        raise UserError(f"{run_dir} has reached step {meta.get('step', 0)}; verify needs it at step {stop} or beyond")
    print(f"qvpo: verify {run_dir}: re-running steps 0 to {stop} of {meta['steps']} on the current code "
          f"({meta.get('threads')} threads, device {meta.get('device', 'cpu')})", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="qvpo-verify-") as tmp:
        fresh = Path(tmp) / "run"
        trainer = rerun(run_dir, fresh, stop)
        # the run's own logs decide on its machine kind; on another kind (or an unknown one whose logs
        # differ) a re-run of the reference code here does
        differences = logs_differences(run_dir, fresh, stop) if recorded is None or same_kind else None
        how = f"qvpo verify: logs equal up to step {stop}"
        if needs_reference and differences != []:
            reference = reference_rerun(args.reference, cached, run_dir, meta, stop, here, Path(tmp) / "reference")
            differences = logs_differences(reference, fresh, stop)
            how = (f"qvpo verify --reference {args.reference}: its code and this code log equal values up to "
                   f"step {stop} on {describe(here)}")
        if differences:
            unknown = "" if recorded is not None or args.reference is not None else (
                "; the run records no machine kind, so the CPU kind that trained it may differ from this one "
                f"({describe(here)}): verify it against the code that made it (--reference COMMIT)")
            print(f"qvpo: verify failed: {min(differences)[1]}{unknown}", file=sys.stderr)
            return 1
    if trainer.identity == meta.get("identity"):
        print(f"qvpo: verified {run_dir} up to step {stop}: its identity {trainer.identity} is already current")
        return 0
    old_identity = meta["identity"]  # adopt() rewrites meta
    adopt(run_dir, meta, trainer.settings_dict, trainer.identity, trainer.code, trainer.code_definitions, how,
          args.record)
    print(f"qvpo: verified {run_dir} up to step {stop}; adopted: identity {old_identity} -> {trainer.identity} "
          f"(recorded in {args.record})")
    return 0


def cache_place(cache: Path, run_dir: Path) -> Path:
    """Where the reference cache keeps a run's reference re-run: under the run directory's absolute path."""
    resolved = run_dir.resolve()
    cached = cache.resolve() / resolved.relative_to(resolved.anchor)
    if cached == resolved or resolved in cached.parents or cached in resolved.parents:
        raise UserError(f"--reference-cache {cache} would keep a re-run at {cached}, over the run itself")
    return cached


def reference_rerun(reference: str, cached: Path | None, run_dir: Path, meta: dict, stop: int, here: dict,
                    out: Path) -> Path:
    """The run's beginning re-run on the reference code: into `out`, or kept at `cached` (the reference
    cache's place for it) and reused from there. A kept re-run counts only for the same run (identity,
    steps, threads, device), stop, reference and machine kind (its info.json, written once the re-run
    has finished); anything else there is re-run."""
    identity = meta["identity"]
    if cached is None:
        rerun_on_reference(reference, run_dir, out, stop, identity)
        return out
    info = {"identity": identity, "steps": meta["steps"], "threads": meta.get("threads"),
            "device": meta.get("device", "cpu"), "stop": stop, "reference": reference, "machine": here}
    try:
        if json.loads((cached / "info.json").read_text()) == info:
            return cached
    except (OSError, ValueError):
        pass
    if cached.exists():
        shutil.rmtree(cached)
    rerun_on_reference(reference, run_dir, cached, stop, identity)
    shutil.rmtree(cached / "checkpoint", ignore_errors=True)
    (cached / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    return cached


def adopt(run_dir: Path, meta: dict, settings: dict, identity: str, code: str, definitions: dict, how: str,
          record: Path) -> None:
    """Move a run to a new identity: meta.json, config.yaml, the pipeline's markers and the adoptions file."""
    commit = runlog.git_commit()
    old_identity, old_code = meta["identity"], meta.get("code_hash")
    adoptions = list(meta.get("adoptions", []))
    adoptions.append({"from_identity": old_identity, "from_code_hash": old_code, "commit": commit, "how": how})
    meta.update(identity=identity, code_hash=code, code_definitions=definitions, adoptions=adoptions)
    runlog.write_config(run_dir, meta["algo"], meta["env"], meta["seed"], settings)
    runlog.write_meta(run_dir, meta)
    rename_markers(run_dir, meta)
    new_file = not record.exists()
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record, "a", newline="") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(ADOPTION_COLUMNS)
        writer.writerow([str(run_dir), old_identity, identity, old_code, code, commit, how])


def rename_markers(run_dir: Path, meta: dict) -> None:
    """done-<key>.json and final-<key>.json (made by the pipeline) renamed to the run's current keys; the
    marker holds a copy of meta.json, as the train rule writes it."""
    key = runlog.marker_key(run_dir.parent.name, meta["env"], meta["seed"], meta["steps"], meta["identity"])
    for done in run_dir.glob("done-*.json"):
        done.unlink()
        (run_dir / f"done-{key}.json").write_text((run_dir / "meta.json").read_text())
    evaluate_code = current_code(meta["algo"], evaluation=True).hash
    for final in run_dir.glob("final-*.json"):
        episodes = json.loads(final.read_text())["episodes"]
        final.rename(run_dir / f"final-{runlog.final_key(key, episodes, evaluate_code)}.json")


# ------------------------------------------------------------------------- before identities
LEGACY_HASH = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import qvpo.runlog as runlog
assert Path(runlog.__file__).is_relative_to(sys.argv[1]), runlog.__file__
print(json.dumps({a: runlog.code_hash(a) for a in sys.argv[2:]}))
"""
"""Runs the byte hash of the commit's own runlog.code_hash on its sources (its tree in argv[1])."""


def legacy_hashes(commit: str, names: list[str]) -> dict[str, str]:
    """Each algorithm's byte hash of its sources at `commit` (the code hash before identities)."""
    with tempfile.TemporaryDirectory(prefix="qvpo-legacy-") as tmp:
        unpack_package(commit, Path(tmp), "cannot read commit")
        out = subprocess.run([sys.executable, "-c", LEGACY_HASH, tmp, *names], capture_output=True, text=True)
        if out.returncode != 0:
            raise UserError(f"cannot compute the byte hashes at {commit}: {out.stderr.strip().splitlines()[-1]}")
        return json.loads(out.stdout)


def cmd_adopt_legacy(args) -> int:
    metas = sorted(p for root in args.runs for p in Path(root).rglob("meta.json"))
    if not metas:
        raise UserError(f"no run directories under {', '.join(map(str, args.runs))}")
    names = sorted(algos.ALGORITHMS)
    byte_hashes = legacy_hashes(args.parent, names)
    adopted = skipped = 0
    for path in metas:
        run_dir = path.parent
        meta, config = RunDir(run_dir).read()
        algo = meta["algo"]
        reason = None
        if meta.get("code_definitions") is not None:
            reason = "already has a code identity"
        elif meta.get("code_history"):
            reason = "has a code history (continued across code changes)"
        elif meta.get("code_hash") != byte_hashes.get(algo):
            reason = f"code hash {meta.get('code_hash')} is not {algo}'s byte hash at {args.parent}"
        if reason:
            print(f"qvpo: kept as it is: {run_dir}: {reason}", file=sys.stderr)
            skipped += 1
            continue
        settings = current_settings(config)
        code = current_code(algo)
        identity = runlog.identity(algo, meta["env"], meta["seed"], settings, code.hash)
        adopt(run_dir, meta, settings, identity, code.hash, code.definitions,
              f"byte hash of {args.parent} ({meta['code_hash']})", args.record)
        adopted += 1
    print(f"qvpo: adopted {adopted} runs, kept {skipped} as they were (recorded in {args.record})")
    return 0
