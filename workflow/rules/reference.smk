rule reference:
    """One reference run of another library (`qvpo sb3`), then its marker done-<key>.json.

    SB3 has no exact resume, so an unfinished or outdated run directory starts again.
    """
    output:
        done=f"{REFERENCE_ROOT}/{{env}}/{{algo}}/seed{{seed}}/done-{{key}}.json",
    log:
        f"{ROOT}/logs/reference/{{env}}/{{algo}}/seed{{seed}}-{{key}}.log",
    benchmark:
        f"{ROOT}/benchmarks/reference/{{env}}/{{algo}}/seed{{seed}}-{{key}}.tsv"
    params:
        request=reference_request,
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards: reference_resources(wildcards)["mem_mb"],
        runtime=lambda wildcards: reference_resources(wildcards)["runtime"],
        gpu=0,
    conda:
        "../envs/qvpo.yaml"
    shell:
        """
        run=$(dirname {output.done:q})
        rm -f "$run/done-"*.json "$run/meta.json" "$run/eval.csv"
        qvpo sb3 {params.request} --seed {wildcards.seed} --threads {threads} --out "$run" > {log:q} 2>&1
        cp "$run/meta.json" {output.done:q}
        """
