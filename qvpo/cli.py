"""The `qvpo` command: train | evaluate | code-hash | verify | rerun | adopt-legacy | status (and the report and bench
commands).

A mistake of the user's is one line on stderr and exit code 2, never a traceback;
a run stopped by divergence or a failed write is one line and exit code 3;
a run interrupted by SIGTERM/SIGUSR1 checkpoints and exits 128 + the signal number.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qvpo.errors import RunStopped, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump becomes our one line
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    from qvpo.adoption import VERIFY_UPDATES
    from qvpo.algos import ALGORITHMS
    from qvpo.bench import add_bench_command
    from qvpo.report import add_report_commands
    from qvpo.rundir import add_status_command

    p = _Parser(prog="qvpo", description="Diffusion-policy online RL: QVPO and its baselines.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one run (resumes a run directory of the same identity)")
    t.add_argument("--algo", required=True, help=f"one of {', '.join(sorted(ALGORITHMS))}")
    t.add_argument("--env", required=True, help="a gymnasium env id with a Box action space, e.g. Hopper-v5")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, required=True, help="environment steps in all")
    t.add_argument("--out", type=Path, required=True, help="the run directory")
    t.add_argument("--config", action="append", default=[], help="YAML file of settings (repeatable)")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting (repeatable; typed by the algorithm's settings)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA when present)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    t.add_argument("--restart", action="store_true", help="discard whatever RUN_DIR holds and start afresh")
    t.add_argument("--accept-code-change", action="store_true",
                   help="continue a run whose code changed since (recorded in meta.json code_history)")
    t.add_argument("--progress", choices=["auto", "bar", "log"], default="auto")
    t.add_argument("--stop-before-limit", type=float, default=300.0, metavar="SECONDS",
                   help="inside a SLURM job, checkpoint and exit (code 75) this long before its time limit")

    e = sub.add_parser("evaluate", help="evaluate a run directory's saved policy")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    e.add_argument("--device", default="auto")
    e.add_argument("--threads", type=int, default=None)

    h = sub.add_parser("code-hash", help="print the code identity of ALGO's training (what its runs compute)")
    h.add_argument("--algo", required=True)
    h.add_argument("--definitions", action="store_true", help="also list each definition it covers with its digest")

    v = sub.add_parser("verify", help="re-run a run's beginning on the current code; adopt it if its logs are equal")
    v.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    v.add_argument("--updates", type=int, default=VERIFY_UPDATES,
                   help=f"steps past the warm-up to re-run at least (default {VERIFY_UPDATES})")
    v.add_argument("--record", type=Path, default=Path("results/adoptions.csv"), help="the adoptions file")
    v.add_argument("--reference", metavar="COMMIT", default=None,
                   help="compare with a re-run on the code that made the run (a commit, or a checkout's folder) "
                        "instead of the run's logs: for a run of another machine kind")
    v.add_argument("--reference-cache", type=Path, default=None, metavar="DIR",
                   help="keep each reference re-run under DIR and reuse it in a later verify of the same run "
                        "against the same reference on this machine kind")

    r = sub.add_parser("rerun", help="re-run a run's beginning into OUT (what verify --reference runs)")
    r.add_argument("run_dir", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--until", type=int, required=True, help="the last step to re-run")
    r.add_argument("--expect-identity", default=None, help="refuse, before training, a run this code gives another identity")

    a = sub.add_parser("adopt-legacy", help="adopt runs made before code identities: their byte hash at COMMIT")
    a.add_argument("runs", type=Path, nargs="+", help="folders to search for run directories")
    a.add_argument("--parent", required=True, help="the commit before code identities")
    a.add_argument("--record", type=Path, default=Path("results/adoptions.csv"), help="the adoptions file")

    add_status_command(sub)
    add_report_commands(sub)
    add_bench_command(sub)
    return p


def cmd_train(args) -> int:
    from qvpo.loop import Trainer, TrainRequest
    from qvpo.settings import load_yaml_mapping, parse_assignment

    overrides: dict = {}
    for path in args.config:
        overrides.update(load_yaml_mapping(path))
    for text in args.sets:
        key, value = parse_assignment(text)
        overrides[key] = value
    progress = {"auto": None, "bar": True, "log": False}[args.progress]
    req = TrainRequest(args.algo, args.env, args.seed, args.steps, args.out, overrides, args.device, args.threads,
                       args.restart, args.accept_code_change, progress, args.stop_before_limit)
    return Trainer(req).run()


def cmd_evaluate(args) -> int:
    import torch

    from qvpo.checkpoint import atomic_write_text
    from qvpo.evaluation import evaluate_run

    if args.threads is not None:
        if args.threads <= 0:
            raise UserError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    result = evaluate_run(args.run_dir, args.episodes, args.device)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
    print(text, end="")
    return 0


def cmd_code_hash(args) -> int:
    from qvpo import algos, identity

    algos.get(args.algo)
    code = identity.current(args.algo)
    print(code.hash)
    if args.definitions:
        for name, digest in code.definitions.items():
            print(f"{digest}  {name}")
    return 0


def cmd_verify(args) -> int:
    from qvpo.adoption import cmd_verify as verify

    if args.updates <= 0:
        raise UserError(f"--updates must be positive, got {args.updates}")
    return verify(args)


def cmd_rerun(args) -> int:
    from qvpo.adoption import cmd_rerun as rerun

    return rerun(args)


def cmd_adopt_legacy(args) -> int:
    from qvpo.adoption import cmd_adopt_legacy

    return cmd_adopt_legacy(args)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "code-hash": cmd_code_hash, "verify": cmd_verify,
            "rerun": cmd_rerun, "adopt-legacy": cmd_adopt_legacy}


def one_line(message: str) -> str:
    """The message with line breaks and other control characters escaped: a user's key or value
    quoted in an error must not split it over lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler = COMMANDS.get(args.command) or args.handler
        return handler(args)
    except UserError as e:
        print(f"qvpo: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"qvpo: {one_line(str(e))}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("qvpo: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
