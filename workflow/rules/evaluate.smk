rule evaluate:
    """The table's score of a run: `qvpo evaluate` of its last checkpoint on unseen start states."""
    input:
        done=lambda wildcards: ancient(done_file(wildcards.env, wildcards.algo, wildcards.seed)),
    output:
        final=f"{RUNS}/{{env}}/{{algo}}/seed{{seed}}/final-{{key}}.json",
    log:
        f"{ROOT}/logs/evaluate/{{env}}/{{algo}}/seed{{seed}}-{{key}}.log",
    params:
        episodes=config["final_eval_episodes"],
        device=config["device"],
    threads: 1
    conda:
        "../envs/qvpo.yaml"
    shell:
        """
        run=$(dirname {output.final:q})
        rm -f "$run/final-"*.json
        qvpo evaluate "$run" --episodes {params.episodes} --out {output.final:q} \
            --device {params.device} --threads {threads} > {log:q} 2>&1
        """
