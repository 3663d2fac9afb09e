#!/usr/bin/env bash
# Learning check of the on-policy issue: PPO and SPO, 3 seeds each, on InvertedPendulum-v5
# for 200,000 steps, evaluating every 10,000 steps with 10 episodes; every other setting is
# the algorithm's default (CleanRL's PPO, SPO's 2024 script). Target: the mean of the last
# three evaluations >= 900 for both. Summary: results/learning/onpolicy_summary.csv.
# Resumable: rerunning skips complete runs and resumes interrupted ones (qvpo train does that).
# Runs one after another on THREADS (default 1) torch threads.
# Usage: nohup bash scripts/learn_onpolicy.sh > /tmp/learn_onpolicy.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=results/learning
ENV=InvertedPendulum-v5
THREADS=${THREADS:-1}

for seed in 0 1 2; do
  for algo in ppo spo; do
    qvpo train --algo "$algo" --env "$ENV" --seed "$seed" --steps 200000 --out "$ROOT/$ENV/$algo/seed$seed" \
      --set eval_every=10000 --set eval_episodes=10 --threads "$THREADS" --progress log
  done
done
python scripts/summarize_learning.py "$ROOT/$ENV/ppo" "$ROOT/$ENV/spo" --out "$ROOT/onpolicy_summary.csv"
