rule summarize:
    """One learning-check summary of config `summaries` (a CSV) from its grid's complete runs."""
    input:
        runs=product_inputs,
        sources=lambda wildcards: report_sources(wildcards.product),
        provenance=lambda wildcards: ancient(provenance_file(wildcards.product)),
    output:
        csv=report(f"{ROOT}/summaries/{{product}}.csv", caption="../report/summary.rst", category="Summaries"),
    log:
        f"{ROOT}/logs/summarize/{{product}}.log",
    wildcard_constraints:
        product="|".join(SUMMARIES) or "(?!)",
    params:
        command=lambda wildcards: shlex.join(report_command(wildcards.product)),
    conda:
        "../envs/qvpo.yaml"
    shell:
        "qvpo {params.command} > {log:q} 2>&1"
