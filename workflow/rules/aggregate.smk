rule aggregate:
    """table.csv and table.md: each (env, algo)'s final returns over seeds, beside the paper's.

    Its provenance file is an output too: its name hashes the command, the report code and the runs'
    final evaluations, so a change to any of them leaves it missing and even the file target
    results/<preset>/table.csv reruns, in a fresh clone too.
    """
    input:
        finals=table_inputs,
    output:
        csv=report(f"{ROOT}/table.csv", caption="../report/table.rst", category="Table"),
        md=f"{ROOT}/table.md",
        provenance=provenance_file("table"),
    log:
        f"{ROOT}/logs/aggregate.log",
    params:
        command=shlex.join(report_command("table")),
        record=json.dumps(provenance("table"), indent=2),
        stale=f"{ROOT}/provenance/table-*.json",
    conda:
        "../envs/qvpo.yaml"
    shell:
        """
        rm -f {params.stale}
        qvpo {params.command} > {log:q} 2>&1
        echo {params.record:q} > {output.provenance:q}
        """
