#!/usr/bin/env bash
# Every GPU check and figure of issues 4, 11 and 20 in one call on the GPU machine: at most 9.5
# minutes (each step has its own limit; they add up to 550 s, plus about 10 s to unpack).
#
#   here, once:  bash benchmarks/fetch_wheels.sh   (.whl/site-py312.tar.xz: PyAV, gradio, plotly,
#                                                   umap-learn, pydicom for the GPU machine's Python)
#   then:        the device tool's run with command "bash benchmarks/gpu_check.sh",
#                carry [".whl"], timeout_s 580 (with the start, about 12 of the 15 device minutes)
#
# It prints the end of each step's log and writes to $OUT (the device tool's folder that comes
# back, at most 8 files; /tmp/hico-out elsewhere): gpu.txt (card, driver, torch), gpu-tests.log
# (tests/test_gpu.py: captured against eager steps, no host wait in a step, ...), bench.json (the
# four settings with the step captured as a CUDA graph, as `hico train` runs it), summary.json
# and metrics.jsonl (the real training loop through the CLI, logging and checkpoints included,
# GPU utilisation per line), compare224.md and compare224.csv (label-free HiCo against its
# baselines at 224 px), app.json (the app on the GPU through its API: benchmarks/gpu_app.py).
# Whole logs stay in /tmp/hico-logs. Each step has its own time limit, so a slow one cannot take
# the others down with it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HICO_HOME=/tmp/hico-home
OUT=${OUT:-/tmp/hico-out}
LOGS=/tmp/hico-logs
mkdir -p "$OUT" "$LOGS"
if [ -f .whl/site-py312.tar.xz ]; then  # benchmarks/fetch_wheels.sh: what the GPU machine lacks
    python3 -c "import tarfile; tarfile.open('.whl/site-py312.tar.xz').extractall('/tmp/site', filter='data')" || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
fi
{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, av, gradio; print('torch', torch.__version__, '| PyAV', av.__version__, '| gradio', gradio.__version__, '| CPUs', __import__('os').cpu_count())"
} 2>&1 | tee "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its log, say how it ended
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tr '\r' '\n' < "$LOGS/$name.log" | grep -v -e "%|" -e "warn" | tail -n 25
    echo "== $name: exit $rc after $((SECONDS - start)) s"
}

# 0. What only a GPU runs, checked before it is timed (tests/test_gpu.py; skipped on CPUs).
step gpu-tests 100 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
cp "$LOGS/gpu-tests.log" "$OUT/"
# 1. The issue's four settings (pooled and flatten heads, batch 32 and 128, 224 px), the step
#    captured as a CUDA graph (train.cuda_graph, the default).
step bench 100 python3 -m hico bench --out "$OUT/bench.json"
# (The eager step and the profile of issues 4 and 11 are recorded in RESULTS.md; to measure them
#  again: `hico bench --eager` and `hico bench --settings pooled:32,pooled:128 --profile`.)
# 4. The whole training loop as a user runs it, on the benchmark's clips: 300 steps at the paper's
#    setting with pooled heads, a metrics line every 10 steps, one checkpoint at the end
#    (stopped cleanly, with its figures, if it runs out of time).
step train 60 python3 -m hico train --config configs/paper.yaml --run-dir "$HICO_HOME/runs/gpu-check" \
    data.root="$HICO_HOME/datasets/bench-480x640-160" model.heads=pooled train.max_steps=300 train.log_every=10 \
    train.val_every=0 train.checkpoint_every=100000 data.val_fraction=0
cp "$HICO_HOME/runs/gpu-check/summary.json" "$OUT/summary.json" 2>/dev/null
cp "$HICO_HOME/runs/gpu-check/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
# 5. Issue 20: label-free HiCo against simclr, peer and the untrained network at 224 px (the
#    README's comparison is 64 and 96 px on two CPU cores): the demo's settings at 224 px, 450
#    steps, no labels, one seed, evaluated by linear probe and kNN on 200 unseen clips (5 folds
#    by video). summary.md and summary.csv come back as compare224.md and compare224.csv.
step synth 30 bash -c "python3 -m hico synth $HICO_HOME/datasets/synth && python3 -m hico synth $HICO_HOME/datasets/synth_test --seed 1"
step compare224 ${COMPARE_S:-170} python3 -m hico compare --config configs/demo.yaml --name c224 \
    --modes untrained,hico,simclr,peer --seeds 1 --eval-data "$HICO_HOME/datasets/synth_test" \
    data.root="$HICO_HOME/datasets/synth" data.size=224 data.label_fraction=0 train.val_points=10
cp "$HICO_HOME/compare/c224/summary.md" "$OUT/compare224.md" 2>/dev/null
cp "$HICO_HOME/compare/c224/summary.csv" "$OUT/compare224.csv" 2>/dev/null
# 6. Issue 20: the app itself on the GPU, through its API (benchmarks/gpu_app.py): a run started
#    with /start_training at 224 px, the GPU's name, memory and utilisation in /training_status and
#    the Train tab's progress line, then Explore (PCA and UMAP) and Diagnose on that run.
step app ${APP_S:-90} python3 -m benchmarks.gpu_app --out "$OUT/app.json" --size 224 --epochs 2 --train-timeout 50
exit 0
