rule progress:
    """The table, every figure and summary from the runs complete so far, under <results>/progress/: a look at a long
    grid while it runs (`snakemake progress`). Each report command runs with --allow-missing, so its table
    names the runs left out (a run counts once its final evaluation exists); one that has no run to show
    fails without stopping the others. Trains and evaluates nothing; having no output, it runs whenever
    asked for."""
    log:
        f"{ROOT}/logs/progress.log",
    params:
        commands="; ".join(
            f"qvpo {shlex.join([*report_command(product, f'{ROOT}/progress'), '--allow-missing'])} || failed=1"
            for product in ["table", *PRODUCTS]
        ),
    conda:
        "../envs/qvpo.yaml"
    shell:
        "(failed=0; {params.commands}; exit $failed) > {log:q} 2>&1"
