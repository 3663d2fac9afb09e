rule aggregate:
    """table.csv and table.md: each (env, algo)'s final returns over seeds, beside the paper's."""
    input:
        finals=table_inputs,
        sources=report_sources("table"),
    output:
        csv=report(f"{ROOT}/table.csv", caption="../report/table.rst", category="Table"),
        md=f"{ROOT}/table.md",
        provenance=provenance_file("table"),  # hash-named: its absence reruns this job for any target
    log:
        f"{ROOT}/logs/aggregate.log",
    params:
        command=shlex.join(report_command("table")),
        record=json.dumps(provenance("table"), indent=2),
    conda:
        "../envs/qvpo.yaml"
    shell:
        """
        qvpo {params.command} > {log:q} 2>&1
        rm -f "$(dirname {output.provenance:q})"/table-*.json
        echo {params.record:q} > {output.provenance:q}
        """
