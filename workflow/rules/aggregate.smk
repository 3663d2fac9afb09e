rule aggregate:
    """table.csv and table.md: each (env, algo)'s final returns over seeds, beside the paper's."""
    input:
        finals=table_inputs,
        provenance=ancient(provenance_file("table")),
    output:
        csv=report(f"{ROOT}/table.csv", caption="../report/table.rst", category="Table"),
        md=f"{ROOT}/table.md",
    log:
        f"{ROOT}/logs/aggregate.log",
    params:
        command=shlex.join(report_command("table")),
    conda:
        "../envs/qvpo.yaml"
    shell:
        "qvpo {params.command} > {log:q} 2>&1"
