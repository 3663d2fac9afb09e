# Reproduce QVPO (NeurIPS 2024) and its baselines: train -> evaluate -> aggregate -> plot.
#   snakemake --cores 8 results/table.csv                  the paper's table (config/config.yaml)
#   snakemake --cores 2 --configfile config/quick.yaml     the quick preset: table and figures
#   snakemake --cores 1 progress --configfile config/cpu.yaml   a long preset's table and figures so far
# Each rule runs one `qvpo` subcommand. Reruns follow content hashes in file names (see
# workflow/rules/common.smk), for the rules all (the default), table and figures as for a file
# target such as results/table.csv, whose job also lists its source files as inputs.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


rule all:
    """The table, every figure and summary of the config (and the hash-named files they come from)."""
    input:
        table_targets(),
        figure_targets(),
        summary_targets(),
    default_target: True


rule table:
    """The results table alone: `snakemake table` (or the file results/<preset>/table.csv)."""
    input:
        table_targets(),


rule figures:
    """Every figure of the config alone."""
    input:
        figure_targets(),


rule summaries:
    """Every learning-check summary of the config alone."""
    input:
        summary_targets(),


include: "workflow/rules/train.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/provenance.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/progress.smk"
