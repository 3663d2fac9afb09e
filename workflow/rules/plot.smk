rule plot:
    """One figure of config `figures`, as PNG and PDF, from its grid's complete runs."""
    input:
        runs=product_inputs,
        sources=lambda wildcards: report_sources(wildcards.product),
        provenance=lambda wildcards: ancient(provenance_file(wildcards.product)),
    output:
        png=report(f"{ROOT}/figures/{{product}}.png", caption="../report/figure.rst", category="Figures"),
        pdf=f"{ROOT}/figures/{{product}}.pdf",
    log:
        f"{ROOT}/logs/plot/{{product}}.log",
    wildcard_constraints:
        product="|".join(FIGURES),
    params:
        command=lambda wildcards: shlex.join(report_command(wildcards.product)),
    conda:
        "../envs/qvpo.yaml"
    shell:
        "qvpo {params.command} > {log:q} 2>&1"
