#!/usr/bin/env bash
# Learning check of the harness issue: SAC and TD3, 3 seeds each, on
#   InvertedPendulum-v5 for 30,000 steps and HalfCheetah-v5 for 100,000 steps,
# evaluating every 5,000 (InvertedPendulum) / 10,000 (HalfCheetah) steps with 10 episodes.
# Reductions from the authors' settings, said here as the issue asks:
#   - InvertedPendulum: warm-up 5,000 steps for both (TD3's default 25,000 would leave 5,000 learning steps);
#   - HalfCheetah: SAC keeps its 5,000; TD3 warms up 10,000 instead of 25,000.
# TD3 on InvertedPendulum is also run with a 1,000-step warm-up (run dirs td3_warmup1000): with 5,000 it
# learned only at 25-30k steps (session 2); the issue allows a shorter warm-up. Both are reported.
# Resumable: rerunning skips complete runs and resumes interrupted ones (qvpo train does that).
# Usage: nohup bash scripts/learn_sac_td3.sh > learn_sac_td3.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=results/learning
THREADS=${THREADS:-1}

train() {  # env algo seed steps eval_every warmup
  qvpo train --algo "$2" --env "$1" --seed "$3" --steps "$4" --out "$ROOT/$1/$2/seed$3" \
    --set eval_every="$5" --set eval_episodes=10 --set warmup_steps="$6" --threads "$THREADS" --progress log
}

for seed in 0 1 2; do
  for algo in sac td3; do train InvertedPendulum-v5 "$algo" "$seed" 30000 5000 5000; done
done
for seed in 0 1 2; do
  qvpo train --algo td3 --env InvertedPendulum-v5 --seed "$seed" --steps 30000 \
    --out "$ROOT/InvertedPendulum-v5/td3_warmup1000/seed$seed" --set eval_every=5000 --set eval_episodes=10 \
    --set warmup_steps=1000 --threads "$THREADS" --progress log
done
for seed in 0 1 2; do
  train HalfCheetah-v5 sac "$seed" 100000 10000 5000
  train HalfCheetah-v5 td3 "$seed" 100000 10000 10000
done
python scripts/summarize_learning.py "$ROOT"/InvertedPendulum-v5/td3_warmup1000 --out "$ROOT/td3_warmup1000_summary.csv"
python scripts/summarize_learning.py "$ROOT"/InvertedPendulum-v5/{sac,td3} "$ROOT"/HalfCheetah-v5/{sac,td3} \
  --out "$ROOT/sac_td3_summary.csv"
