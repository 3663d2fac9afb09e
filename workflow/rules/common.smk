"""Grids, variants and per-run requests from the config; the content hashes that decide reruns.

Reruns are decided by file names, never by modification times or .snakemake metadata
(a fresh clone has neither): every input is ancient(), what a file was made from is a
hash in its path, and the target rules (all, table, figures) ask for those hash-named
files, so a changed hash means a missing file and the jobs that make it and follow it.
- A run's marker done-<key>.json: key = qvpo.runlog.marker_key of the run (algorithm or variant,
  env, seed, steps) and its identity (settings and the algorithm's code identity, qvpo.identity:
  what its training computes, not the bytes of its source). Change what SAC computes and only SAC
  runs get new keys; a comment or a moved helper changes no key.
- Its final evaluation final-<key>.json: key = qvpo.runlog.final_key of the marker's key, the
  episodes and the code identity of `qvpo evaluate` for the algorithm.
- Each figure depends on provenance/<figure>-<hash>.json: hash of the qvpo.report code the
  command runs and its arguments. Edit plots.py and only figures rerun.
- The table writes provenance/table-<hash>.json itself, its hash also covering the runs'
  final-<key>.json names: a changed run or report command leaves that output missing, so even
  the file target results/table.csv reruns aggregate and, before it, the runs it reads.
"""
import hashlib
import json
import shlex
from functools import cache
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

import qvpo
from qvpo import algos as registry
from qvpo import identity as code_identity
from qvpo import runlog
from qvpo.errors import UserError
from qvpo.report import code_hash as report_code_hash
from qvpo.report import sources as report_sources_of
from qvpo.settings import as_dict, resolve

# The hashes must be of the code this checkout runs, not of another installed copy.
if Path(qvpo.__file__).resolve().parents[1] != Path(workflow.basedir).resolve():
    raise WorkflowError(f"qvpo is imported from {Path(qvpo.__file__).parent}, not from this checkout "
                        f"{workflow.basedir}: run `pip install -e .` here (or set PYTHONPATH to it)")

ROOT = config["results"]
RUNS = f"{ROOT}/runs"
VARIANTS = config["variants"]
GRIDS = config["grids"]
FIGURES = {f["name"]: f for f in config["figures"]}
SUMMARIES = {s["name"]: s for s in config.get("summaries", [])}
PRODUCTS = {**FIGURES, **SUMMARIES}
"""What a report command makes from a grid's runs, besides the table: figures and summaries."""
REFERENCES = {r["name"]: r for r in config.get("references", [])}
"""Another library's runs (`qvpo sb3`) under <results>/references/, shown beside the grids' runs."""
REFERENCE_ROOT = f"{ROOT}/references"

wildcard_constraints:
    env=r"[A-Za-z][A-Za-z0-9_]*-v\d+",
    algo=r"[a-z][a-z0-9_]*",
    seed=r"\d+",
    key=r"[0-9a-f]{16}",
    product=r"[A-Za-z0-9_]+",


def short_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def base_algo(algo: str) -> str:
    return VARIANTS[algo]["algo"] if algo in VARIANTS else algo


def check_config() -> None:
    """What the schema cannot say: names that refer to other parts of the config."""
    for name, variant in VARIANTS.items():
        if variant["algo"] in VARIANTS:
            raise WorkflowError(f"config: variant {name!r} is based on variant {variant['algo']!r}, "
                                "not on an algorithm")
    for product in [*FIGURES.values(), *SUMMARIES.values()]:
        what = "figure" if product["name"] in FIGURES else "summary"
        if product["grid"] not in GRIDS:
            raise WorkflowError(f"config: {what} {product['name']!r} names grid {product['grid']!r}, "
                                f"not one of {', '.join(GRIDS)}")
    for name in REFERENCES:
        if name in registry.ALGORITHMS or name in VARIANTS:
            raise WorkflowError(f"config: reference {name!r} has the name of an algorithm or variant")
        if REFERENCES[name]["warmup_steps"] >= REFERENCES[name]["steps"]:
            raise WorkflowError(f"config: reference {name!r}: warmup_steps must be below steps")
    for name in set(FIGURES) & (set(SUMMARIES) | {"table"}):
        raise WorkflowError(f"config: {name!r} names both a figure and a summary or the table")
    unknown = sorted({base_algo(a) for g in GRIDS.values() for b in g for a in b["algos"]} - set(registry.ALGORITHMS))
    if unknown:  # the names the schema allows: the registry's (plugins included) and the config's variants
        raise WorkflowError(f"config: unknown algorithm(s) {', '.join(unknown)} in the grids; the registered ones "
                            f"are {', '.join(sorted(registry.ALGORITHMS))} (or define a variant)")


check_config()


@cache
def algo_code_hash(algo: str, evaluation: bool = False) -> str:
    return code_identity.current(algo, evaluation).hash


def authors_env_settings(algo: str, env: str) -> dict:
    """The algorithm's own per-env settings (its agent class's `env_settings(env_id)`)."""
    return registry.get(algo).env_settings(env) if algo in registry.ALGORITHMS else {}


@cache
def run_request(env: str, algo: str) -> dict:
    """What `qvpo train` is asked for: defaults, the algorithm's per-env table, matching overrides, the variant."""
    base = base_algo(algo)
    defaults = config["defaults"]
    steps, sets, resources = defaults["steps"], dict(defaults["set"]), dict(defaults["resources"])
    sets.update(authors_env_settings(base, env))
    for entry in config["overrides"]:
        if {algo, base} & set(entry.get("algos", [algo])) and env in entry.get("envs", [env]):
            steps = entry.get("steps", steps)
            sets.update(entry.get("set", {}))
            resources.update(entry.get("resources", {}))
    sets.update(VARIANTS.get(algo, {}).get("set", {}))
    settings = None
    if base in registry.ALGORITHMS:  # check every setting now, with qvpo train's own message
        try:
            settings = as_dict(resolve(registry.get(base).Settings, sets))
        except UserError as e:
            raise WorkflowError(f"config: {algo} on {env}: {e}") from None
    return {"algo": base, "steps": steps, "set": sets, "resources": resources, "settings": settings}


@cache
def run_identity(env: str, algo: str, seed: int) -> str:
    """qvpo train's identity of this run: the run directory resumes only if its meta.json has it."""
    r = run_request(env, algo)
    if r["settings"] is None:  # an unregistered algorithm: qvpo train will say so
        return "unknown"
    return runlog.identity(r["algo"], env, seed, r["settings"], algo_code_hash(r["algo"]))


def train_key(env: str, algo: str, seed) -> str:
    return runlog.marker_key(algo, env, int(seed), run_request(env, algo)["steps"], run_identity(env, algo, int(seed)))


def eval_key(env: str, algo: str, seed) -> str:
    base = base_algo(algo)
    evaluate_code = algo_code_hash(base, True) if base in registry.ALGORITHMS else "unknown"
    return runlog.final_key(train_key(env, algo, seed), config["final_eval_episodes"], evaluate_code)


def run_dir(env: str, algo: str, seed) -> str:
    return f"{RUNS}/{env}/{algo}/seed{seed}"


def done_file(env: str, algo: str, seed) -> str:
    return f"{run_dir(env, algo, seed)}/done-{train_key(env, algo, seed)}.json"


def final_file(env: str, algo: str, seed) -> str:
    return f"{run_dir(env, algo, seed)}/final-{eval_key(env, algo, seed)}.json"


def grid_runs(grid: str) -> list[tuple[str, str, int]]:
    """The union of the grid's blocks (envs x algos x seeds), each run once."""
    return list(dict.fromkeys((env, algo, seed) for block in GRIDS[grid]
                              for env in block["envs"] for algo in block["algos"] for seed in block["seeds"]))


# ---------------------------------------------------------------- rule parameters
def train_request(wildcards) -> dict:
    """The run's request; a marker of another key (an old target) would lie about what trained."""
    expected = train_key(wildcards.env, wildcards.algo, wildcards.seed)
    if wildcards.key != expected:
        raise WorkflowError(f"done-{wildcards.key}.json is not the current marker of {wildcards.env} "
                            f"{wildcards.algo} seed {wildcards.seed} (that is done-{expected}.json)")
    return run_request(wildcards.env, wildcards.algo)


def set_flags(wildcards) -> str:
    """--set KEY=VALUE for each setting, each value as YAML that reads back as the same value."""
    flags = []
    for key, value in sorted(train_request(wildcards)["set"].items()):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("...\n").strip()
        flags.append(shlex.quote(f"{key}={text}"))
    return " ".join(f"--set {flag}" for flag in flags)


def expected_identity(wildcards) -> str:
    train_request(wildcards)  # refuses an old marker's key
    return run_identity(wildcards.env, wildcards.algo, int(wildcards.seed))


def train_resource(name: str):
    return lambda wildcards: train_request(wildcards)["resources"][name]


def reference_runs(grid: str) -> list[tuple[str, str, int]]:
    """The reference runs shown beside a grid: those of the envs the grid holds."""
    envs = {env for env, _, _ in grid_runs(grid)}
    return [(env, name, seed) for name, r in REFERENCES.items() for env in r["envs"] if env in envs
            for seed in r["seeds"]]


def reference_key(env: str, name: str, seed) -> str:
    """What a reference run is asked for; the library's version is in its meta.json, not here, so that a
    clone without the library plans nothing for the committed runs."""
    r = REFERENCES[name]
    return short_hash({k: r[k] for k in ("library", "algo", "steps", "warmup_steps", "eval_every", "eval_episodes")}
                      | {"env": env, "seed": int(seed)})


def reference_done(env: str, name: str, seed) -> str:
    return f"{REFERENCE_ROOT}/{env}/{name}/seed{seed}/done-{reference_key(env, name, seed)}.json"


def grid_arguments(grid: str, references: bool = False) -> list[str]:
    """--runs and --block of a grid; with references, --references and --reference-block of those beside it."""
    args = ["--runs", RUNS]
    for block in GRIDS[grid]:
        args += ["--block", ",".join(block["envs"]), ",".join(block["algos"]), ",".join(map(str, block["seeds"]))]
    shown = reference_runs(grid) if references else []
    if shown:
        args += ["--references", REFERENCE_ROOT]
    for env, name in dict.fromkeys((env, name) for env, name, _ in shown):
        seeds = [str(s) for e, n, s in shown if (e, n) == (env, name)]
        args += ["--reference-block", env, name, ",".join(seeds)]
    return args


def report_command(product: str, out_root: str = ROOT) -> list[str]:
    """The `qvpo aggregate` (product "table"), `qvpo summarize` or `qvpo plot` command line that makes `product`
    under out_root."""
    if product == "table":
        return ["aggregate", *grid_arguments("table", references=True), "--out-dir", out_root,
                "--title", f"Results of the {config['preset']} preset", "--note", config["description"]]
    if product in SUMMARIES:
        summary = SUMMARIES[product]
        return ["summarize", summary["kind"], *grid_arguments(summary["grid"], summary["kind"] == "learning"),
                "--out", f"{out_root}/summaries/{product}.csv"]
    figure = FIGURES[product]
    args = ["plot", figure["kind"], *grid_arguments(figure["grid"], figure["kind"] == "eval-curves"),
            "--out", f"{out_root}/figures/{product}",
            "--title", figure["title"]]
    for option in ("window", "snapshots"):
        if option in figure:
            args += [f"--{option}", str(figure[option])]
    return args


def provenance(product: str) -> dict:
    command = report_command(product)
    record = {"product": product, "command": ["qvpo", *command], "code_hash": report_code_hash(command[0])}
    if product == "table":  # the table's record is its own output: a new run makes it missing (see aggregate)
        record["runs"] = [final_file(*run) for run in grid_runs("table")]
        record["runs"] += [reference_done(*run) for run in reference_runs("table")]
    return record


def provenance_file(product: str) -> str:
    return f"{ROOT}/provenance/{product}-{short_hash(provenance(product))}.json"


def report_sources(product: str) -> list[str]:
    """Files whose edit can change `product`: its report code, the training code of its grid's algorithms
    and the config files. Plain (not ancient) inputs of its job, because a file target such as
    results/table.csv that exists is rerun only for an input newer than it: a newer source reruns it,
    and the runs it then misses are made first. A fresh clone checks out config/ and qvpo/ before
    results/, so it reruns nothing."""
    command = report_command(product)[0]
    grid = "table" if product == "table" else PRODUCTS[product]["grid"]
    algos = sorted({base_algo(algo) for _, algo, _ in grid_runs(grid)} & set(registry.ALGORITHMS))
    files = [*report_sources_of(command), *(f for algo in algos for f in runlog.training_sources(algo))]
    return sorted({str(f) for f in files} | {str(Path(f).resolve()) for f in workflow.configfiles})


def table_inputs(wildcards) -> list:
    return [ancient(f) for f in table_runs()]


def table_runs() -> list[str]:
    """The final evaluations of the table's runs and the markers of the references beside them."""
    return [*(final_file(*run) for run in grid_runs("table")), *(reference_done(*run) for run in reference_runs("table"))]


def product_runs(product: str) -> list[str]:
    """The markers of a figure's or summary's runs (and of the references it shows)."""
    args = report_command(product)
    shown = reference_runs(PRODUCTS[product]["grid"]) if "--references" in args else []
    return [*(done_file(*run) for run in grid_runs(PRODUCTS[product]["grid"])), *(reference_done(*run) for run in shown)]


def product_inputs(wildcards) -> list:
    return [ancient(f) for f in product_runs(wildcards.product)]


# ---------------------------------------------------------------- what the target rules ask for
# Snakemake reruns a job whose output exists only for a newer input (mtime) or changed metadata,
# neither of which a fresh clone has; a missing input does not rerun its consumer. So the target
# rules (all, table, figures) ask for the hash-named files themselves: when one is missing the
# target needs it, its producer runs, and everything downstream of that producer runs after it.
def table_targets() -> list[str]:
    return [f"{ROOT}/table.csv", f"{ROOT}/table.md", provenance_file("table"), *table_runs()]


def figure_targets() -> list[str]:
    targets = []
    for name, figure in FIGURES.items():
        targets += [f"{ROOT}/figures/{name}.png", f"{ROOT}/figures/{name}.pdf", provenance_file(name)]
        targets += product_runs(name)
    return list(dict.fromkeys(targets))


def summary_targets() -> list[str]:
    targets = []
    for name, summary in SUMMARIES.items():
        targets += [f"{ROOT}/summaries/{name}.csv", provenance_file(name)]
        targets += product_runs(name)
    return list(dict.fromkeys(targets))


def reference_request(wildcards) -> str:
    """qvpo sb3's arguments for a reference run; a marker of another key would lie about what ran."""
    if wildcards.algo not in REFERENCES:
        raise WorkflowError(f"{wildcards.algo!r} is not a reference of this config ({', '.join(REFERENCES) or 'none'})")
    expected = reference_key(wildcards.env, wildcards.algo, wildcards.seed)
    if wildcards.key != expected:
        raise WorkflowError(f"done-{wildcards.key}.json is not the current marker of reference {wildcards.algo} on "
                            f"{wildcards.env} seed {wildcards.seed} (that is done-{expected}.json)")
    r = REFERENCES[wildcards.algo]
    return shlex.join([r["algo"], wildcards.env, "--steps", str(r["steps"]), "--warmup", str(r["warmup_steps"]),
                       "--eval-every", str(r["eval_every"]), "--eval-episodes", str(r["eval_episodes"])])


def reference_resources(wildcards) -> dict:
    return config["defaults"]["resources"] | REFERENCES[wildcards.algo].get("resources", {})
