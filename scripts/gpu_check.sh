#!/usr/bin/env bash
# The CUDA path's checks, for a machine with a GPU (no GPU was lent to the sittings that wrote this):
#   1. the tests whose math runs on the default device (they pick CUDA when present);
#   2. a short `qvpo train --device cuda` of every algorithm, each then resumed from its checkpoint, and
#      QVPO with compile=true (the one factored network on CUDA);
#   3. `qvpo bench --quick` on that machine.
# Output under ${OUT:-results/bench/gpu}: one log per step, nvidia-smi's description of the card.
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-results/bench/gpu}
mkdir -p "$OUT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs one')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.csv" || true

pytest -q -p no:cacheprovider tests/test_diffusion.py tests/test_qvpo.py tests/test_dipo_qsm.py tests/test_sac_td3.py \
    tests/test_onpolicy.py tests/test_native.py tests/test_dacer.py tests/test_sdac_dpmd.py 2>&1 | tee "$OUT/tests.log"

: > "$OUT/train.log"
for algo in sac td3 ppo spo qvpo dipo qsm dacer sdac dpmd; do
    run=$(mktemp -d)/run
    for steps in 400 800; do  # the second call resumes the first one's checkpoint and extends it
        qvpo train --algo "$algo" --env Hopper-v5 --steps "$steps" --out "$run" --device cuda --progress log \
            --set eval_every=400 --set eval_episodes=2 --set checkpoint_every=400 \
            $( [ "$algo" = ppo ] || [ "$algo" = spo ] || echo --set warmup_steps=200 ) >> "$OUT/train.log" 2>&1
    done
    python -c "import json, sys; m = json.load(open(sys.argv[1])); assert m['status'] == 'complete' and \
        m['device'].startswith('cuda'), m; print(sys.argv[2], 'ok on', m['machine'].get('gpu'))" "$run/meta.json" "$algo" \
        | tee -a "$OUT/train.log"
done

run=$(mktemp -d)/run
qvpo train --algo qvpo --env Hopper-v5 --steps 400 --out "$run" --device cuda --progress log --set compile=true \
    --set eval_every=400 --set eval_episodes=2 --set warmup_steps=200 >> "$OUT/train.log" 2>&1
echo "qvpo compile=true ok" | tee -a "$OUT/train.log"

qvpo bench --quick --out "$OUT" 2>&1 | tee "$OUT/bench.log"
echo "gpu_check: all passed; logs in $OUT"
