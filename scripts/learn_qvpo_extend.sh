#!/usr/bin/env bash
# Second phase of the QVPO InvertedPendulum-v5 learning check (scripts/learn_qvpo.sh ran the first
# 15,000 steps): the same command with --steps 22500 extends each complete run by three more
# evaluations, still within the issue's 30,000-step budget. Extending re-bases QVPO's entropy-weight
# decay on the new total from step 15,000 on (0.002 -> 0.0067, then decaying again). The package's code
# changed between the phases (faster Mish, chunked sampling, refactors that keep the math within float
# rounding): --accept-code-change continues the runs and records the first phase's code hash and commit in
# each meta.json's code_history.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=results/learning
THREADS=${THREADS:-1}
for seed in 0 1 2; do
  qvpo train --algo qvpo --env InvertedPendulum-v5 --seed "$seed" --steps 22500 \
    --out "$ROOT/InvertedPendulum-v5/qvpo/seed$seed" --set nd=8 --set diffusion_steps=5 \
    --set batch_size=128 --set warmup_steps=2500 --set eval_every=2500 --set eval_episodes=10 --threads "$THREADS" --progress log \
    --accept-code-change &
done
wait
