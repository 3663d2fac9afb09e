localrules:
    provenance,


rule provenance:
    """provenance/<product>-<hash>.json: the report command and code a figure or summary is made with.

    Its name changes with them, so a new one is missing and what depends on it reruns.
    """
    output:
        f"{ROOT}/provenance/{{product}}-{{key}}.json",
    log:
        f"{ROOT}/logs/provenance/{{product}}-{{key}}.log",
    wildcard_constraints:
        product="|".join(PRODUCTS) or "(?!)",  # not the table, whose aggregate job writes its own
    params:
        record=lambda wildcards: json.dumps(provenance(wildcards.product), indent=2),
    conda:
        "../envs/qvpo.yaml"
    shell:
        """
        dir=$(dirname {output:q})
        rm -f "$dir/{wildcards.product}-"*.json 2> {log:q}
        echo {params.record:q} > {output:q}
        """
