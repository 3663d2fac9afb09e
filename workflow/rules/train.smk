rule train:
    """One training run: `qvpo train` into the run directory, then its marker done-<key>.json.

    The output is the marker file, not the run directory: Snakemake deletes a failed job's
    outputs, and the directory holds the checkpoint a retry resumes from.
    """
    output:
        done=f"{RUNS}/{{env}}/{{algo}}/seed{{seed}}/done-{{key}}.json",
    log:
        f"{ROOT}/logs/train/{{env}}/{{algo}}/seed{{seed}}-{{key}}.log",
    benchmark:
        f"{ROOT}/benchmarks/train/{{env}}/{{algo}}/seed{{seed}}-{{key}}.tsv"
    params:
        algo=lambda wildcards: train_request(wildcards)["algo"],
        steps=lambda wildcards: train_request(wildcards)["steps"],
        sets=set_flags,
        identity=expected_identity,
        device=config["device"],
    threads: config["threads"]
    resources:
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
        gpu=train_resource("gpu"),
    conda:
        "../envs/qvpo.yaml"
    shell:
        """
        run=$(dirname {output.done:q})
        # markers of an earlier request of this run no longer describe it
        rm -f "$run/done-"*.json "$run/final-"*.json
        # a run directory of this identity and no further than the steps asked for resumes (a retry
        # after a preemption or time limit); anything else (older code or settings, or a longer run
        # that qvpo train would take as complete) is replaced by a fresh run
        restart=--restart
        if [ "$(qvpo status "$run" --identity {params.identity} --steps {params.steps})" = resume ]; then
            restart=
        fi
        qvpo train --algo {params.algo} --env {wildcards.env} --seed {wildcards.seed} \
            --steps {params.steps} --out "$run" {params.sets} --device {params.device} \
            --threads {threads} --progress log $restart > {log:q} 2>&1
        cp "$run/meta.json" {output.done:q}
        """
