#!/usr/bin/env bash
# Issue 7's GPU measurements in one device call (prepare with experiments/gpu_kit.sh first):
#   1. install the carried wheels, build the EAD kernel, build the four stores it needs with
#      the three set-1 label sets (all cores);
#   2. the time per pre-training epoch of the plan's last pre-training run (gpu_quick: the
#      paper's size, hidden 128, 8 layers, batch 8, bf16 autocast, eadset1 on mp20_subset),
#      3 epochs, one run alone on the GPU;
#   3. the paper-size experiment (experiments/gpu_quick.yaml) until the time budget runs out:
#      the sweep is seed-major, so whatever finishes is complete paired comparisons;
#   4. results (no checkpoints) packed into $OUT/gpu-runs.tgz, unpacked here with
#      tar xzf .../gpu-runs.tgz, then: fp-train report experiments/runs/gpu-quick
#      --out docs/results_gpu.md.
# Everything is logged to $OUT/session.log. Env: BUDGET (seconds for the whole script, default
# 540 for a 600 s call), PARALLEL (runs sharing the GPU, default 4), PY, KIT, PLAN, RUNS,
# FP_DATA, NO_WHEELS=1 (a machine that has the packages), EPOCH_TIMING_ARGS (CPU dry runs).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${BUDGET:-540}
PY=${PY:-python3}
KIT=${KIT:-.devkit}
PLAN=${PLAN:-experiments/gpu_quick.yaml}
RUNS=${RUNS:-experiments/runs/gpu-quick}
PARALLEL=${PARALLEL:-4}
OUT=${OUT:-$PWD/out/gpu-session}
export FP_DATA=${FP_DATA:-/tmp/fp-data}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/session.log"
log() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
pack() {
    # the sweep's runs still going (only ours: their --run-dir is under $RUNS)
    pkill -TERM -f -- "--run-dir $RUNS/" 2>/dev/null
    sleep 2
    if [ -d "$RUNS" ]; then
        tar czf "$OUT/gpu-runs.tgz" --exclude='*.pt' --exclude='tensorboard' --exclude='*.tmp' \
            "$RUNS" && log "packed $RUNS into gpu-runs.tgz"
    fi
}
trap pack EXIT

# 1. packages, kernel, stores
if [ -z "${NO_WHEELS:-}" ]; then
    [ -d "$KIT/whl" ] || { log "no $KIT/whl: run experiments/gpu_kit.sh here and carry $KIT"; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$KIT"/whl/*.whl >>"$LOG" 2>&1 || { log "wheel install failed"; exit 2; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; } >"$OUT/device.txt"
"$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else
'cpu')" | tee -a "$OUT/device.txt" | tee -a "$LOG"
log "building the EAD kernel"
"$PY" setup.py -q build_ext --inplace >>"$LOG" 2>&1 || log "EAD kernel not built: NumPy path"
log "building stores in $FP_DATA/stores"
"$PY" -m fingerprint_pretrain.builder.cli make-datasets --from-dir "$KIT/datasets" --offline --no-verify --quiet \
    --only mp_e_form --only jdft2d --only phonons --only c2db \
    -d wacsfset1 -d gmpset1 -d eadset1 --jobs -1 >>"$LOG" 2>&1 || { log "store build failed"; exit 3; }
log "stores built"

# 2. one pre-training run alone: seconds per epoch of the plan's model, pre-training settings,
#    store and (last) label set, all read from the plan
"$PY" -c "import sys, yaml; from fingerprint_pretrain.trainer.harness.sweep import load_plan, expand_plan
pre = [r for r in expand_plan(load_plan(sys.argv[1]), '/tmp/unused') if r.mode == 'pretrain']
yaml.safe_dump(pre[-1].config, open(sys.argv[2], 'w'))" \
    "$PLAN" /tmp/epoch-timing.yaml || { log "cannot read a pre-training run from $PLAN"; exit 4; }
# shellcheck disable=SC2086
"$PY" -m fingerprint_pretrain.trainer.cli pretrain --config /tmp/epoch-timing.yaml --run-dir /tmp/epoch-timing \
    --epochs 3 --no-resume --no-progress ${EPOCH_TIMING_ARGS:-} >>"$LOG" 2>&1 ||
    log "epoch timing run failed"
cp /tmp/epoch-timing/metrics.csv "$OUT/pretrain_epoch_timing.csv" 2>/dev/null &&
    log "epoch timing: $(cut -d, -f1,6,7 /tmp/epoch-timing/metrics.csv | tr '\n' ' ')"

# 3. the experiment, until the budget is spent (leave 20 s to pack)
t=$(($(left) - 20))
if [ "$t" -gt 30 ]; then
    log "sweep $PLAN for at most $t s, $PARALLEL runs at a time"
    timeout "$t" "$PY" -m fingerprint_pretrain.trainer.cli sweep "$PLAN" --runs-dir "$RUNS" --parallel "$PARALLEL" \
        >>"$LOG" 2>&1
    log "sweep ended (exit $?): $(find "$RUNS" -name result.json | wc -l) runs finished"
else
    log "no time left for the sweep"
fi
