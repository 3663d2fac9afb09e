"""Reporting commands: `qvpo aggregate` (runs -> table), `qvpo plot` (runs -> figures) and
`qvpo summarize` (runs -> the learning checks' summaries).

Both read a grid (--runs ROOT --block ENVS ALGOS SEEDS ...) of run directories
ROOT/<env>/<algo>/seed<S>/ and use only complete runs; a missing or unfinished one
stops them with its name unless --allow-missing.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
COMMAND_MODULES = {"aggregate": "table", "plot": "plots", "summarize": "summaries"}


def sources(command: str) -> list[Path]:
    """The code `qvpo COMMAND` runs: this module, the command's module, the qvpo.report modules they
    import (transitively) and the package data files they name."""
    files, todo = set(), ["__init__", COMMAND_MODULES[command]]
    while todo:
        path = PACKAGE_DIR / f"{todo.pop()}.py"
        if path in files:
            continue
        files.add(path)
        text = path.read_text()
        todo += re.findall(r"qvpo\.report\.(\w+)", text)
        files |= {PACKAGE_DIR / name for name in re.findall(r"\"([\w.-]+\.csv)\"", text)
                  if (PACKAGE_DIR / name).exists()}
    return sorted(files)


def code_hash(command: str) -> str:
    """sha256 (16 hex) of `sources(command)`, names and contents.

    The workflow names its provenance files with it, so editing the plotting code reruns
    the plots and nothing else.
    """
    h = hashlib.sha256()
    for path in sources(command):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def add_grid_arguments(p) -> None:
    p.add_argument("--runs", type=Path, required=True, help="runs root: RUNS/<env>/<algo>/seed<S>/")
    p.add_argument("--block", nargs=3, action="append", required=True, metavar=("ENVS", "ALGOS", "SEEDS"),
                   help="runs ENVS x ALGOS x SEEDS, each comma-separated (repeatable: the grid is the union); "
                        "algorithms or variants in the order to show them")
    p.add_argument("--references", type=Path, help="reference runs' root (another library's runs, `qvpo sb3`): "
                                                   "REFERENCES/<env>/<name>/seed<S>/")
    p.add_argument("--reference-block", nargs=3, action="append", default=[], metavar=("ENVS", "NAMES", "SEEDS"),
                   help="reference runs to show beside the grid's (repeatable; needs --references)")
    p.add_argument("--title", default="QVPO reproduction")
    p.add_argument("--allow-missing", action="store_true", help="report the complete runs, leave out the others")


def add_report_commands(sub) -> None:
    """Register the report subcommands (aggregate, plot) on the `qvpo` parser."""
    a = sub.add_parser("aggregate", help="write table.csv and table.md from a grid's final evaluations")
    add_grid_arguments(a)
    a.add_argument("--out-dir", type=Path, required=True, help="where table.csv and table.md go")
    a.add_argument("--note", action="append", default=[], help="a line for table.md's header (repeatable)")
    a.set_defaults(handler=cmd_aggregate)

    p = sub.add_parser("plot", help="draw one figure (STEM.png and STEM.pdf) from a grid's runs")
    p.add_argument("kind", choices=["eval-curves", "train-curves", "bandit-actions"])
    add_grid_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="STEM of the files STEM.png and STEM.pdf")
    p.add_argument("--window", type=int, default=5000, help="train-curves: smoothing window in steps "
                                                            "(the paper: 5000)")
    p.add_argument("--snapshots", type=int, default=4, help="bandit-actions: recorded steps to show")
    p.set_defaults(handler=cmd_plot)

    s = sub.add_parser("summarize", help="write a learning-check summary (CSV) of a grid's runs")
    s.add_argument("kind", choices=["learning", "bandit"],
                   help="learning: the mean of the last three evaluations per run and over seeds; "
                        "bandit: where figure 2's samples lie")
    add_grid_arguments(s)
    s.add_argument("--out", type=Path, required=True, help="the CSV to write")
    s.set_defaults(handler=cmd_summarize)


def grid_and_runs(args, need_final: bool = False):
    """The grid (references last) and its complete runs: the grid's, then the references'."""
    from qvpo.errors import UserError
    from qvpo.report.runs import complete_runs, grid_runs

    if args.reference_block and args.references is None:
        raise UserError("--reference-block needs --references (the reference runs' root)")
    grid, references = grid_runs(args.block), grid_runs(args.reference_block)
    runs = complete_runs(args.runs, grid, args.allow_missing, need_final=need_final)
    if references:
        runs += complete_runs(args.references, references, args.allow_missing, reference=True)
    return grid + references, runs


def cmd_aggregate(args) -> int:
    from qvpo.report import table

    grid, runs = grid_and_runs(args, need_final=True)
    summary = table.summarize(runs)
    envs, algos = ordered(grid)
    md = table.markdown(summary, runs, envs, algos, args.title, args.note, len(grid) - len(runs))
    table.write(summary, md, args.out_dir)
    print(f"qvpo: wrote {args.out_dir / 'table.csv'} and table.md from {len(runs)} runs")
    return 0


def cmd_plot(args) -> int:
    from qvpo.errors import UserError
    from qvpo.report import plots

    if args.snapshots <= 0:
        raise UserError(f"--snapshots must be positive, got {args.snapshots}")
    if args.reference_block and args.kind != "eval-curves":
        raise UserError(f"reference runs log evaluations only: --reference-block is for eval-curves, not {args.kind}")
    grid, runs = grid_and_runs(args)
    _, algos = ordered(grid)
    if args.kind == "eval-curves":
        fig = plots.curves_figure(plots.eval_curves(runs), algos, "evaluation return", args.title)
    elif args.kind == "train-curves":
        fig = plots.curves_figure(plots.train_curves(runs, args.window), algos,
                                  f"episode return ({args.window:,}-step window)", args.title)
    else:
        fig = plots.bandit_figure(runs, algos, args.snapshots, args.title)
    paths = plots.save(fig, args.out)
    print(f"qvpo: wrote {' and '.join(map(str, paths))}")
    return 0


def cmd_summarize(args) -> int:
    from qvpo.report import summaries

    _, runs = grid_and_runs(args)
    rows = summaries.KINDS[args.kind](runs)
    summaries.write(rows, args.out)
    print(f"qvpo: wrote {args.out} from {len(runs)} runs")
    return 0


def ordered(grid: list[tuple[str, str, int]]) -> tuple[list[str], list[str]]:
    """The grid's envs and algorithms in the order they first appear."""
    return list(dict.fromkeys(env for env, _, _ in grid)), list(dict.fromkeys(algo for _, algo, _ in grid))
