#!/usr/bin/env bash
# Irregular series on one GPU: the Rough Transformer's scaling figure and the sinusoid task with every baseline.
#
# Made for one remote GPU call of about 8 minutes. The GPU image lacks pysiglib and torchcde; put their wheels
# (and torchsde's, trampoline's) in ./wheels/ first (git-ignored; carry it):
#
#     pip download --no-deps -d wheels pysiglib==4.0.0 torchcde==0.2.5 torchsde==0.2.6 trampoline==0.1.2
#     bash benchmarks/gpu_irregular.sh
#
# Steps: (1) `contime run rt-scaling --device cuda` (lengths 100 .. 10,000; a model stops after an epoch over
# SCALING_BUDGET s); (2) `contime run sinusoid --drop 0.5 --device cuda` with all six models and three seeds,
# each model and seed training for at most BUDGET s (the epochs done are recorded).
# Results go to $OUT/<experiment>/<timestamp>/ when $OUT is set, else runs/. CPU smoke test:
#     DEVICE=cpu SCALING_ARGS=--quick EXTRA_ARGS="--quick --models RT,LMU" OUT=/tmp/smoke bash benchmarks/gpu_irregular.sh
set -uo pipefail

BUDGET=${BUDGET:-12}
SCALING_BUDGET=${SCALING_BUDGET:-30}
HARD_LIMIT=${HARD_LIMIT:-440}
DEVICE=${DEVICE:-cuda}
OUT_BASE=${OUT:-runs}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

echo "== $(date -u +%FT%TZ) irregular series on the GPU"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PYTHON" -c "import pysiglib, torchcde" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps wheels/*.whl || exit 3
fi
"$PYTHON" -c "import torch, pysiglib; print(f'torch {torch.__version__}, GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else None}, pysiglib CUDA build: {pysiglib.BUILT_WITH_CUDA}')"

start=$(date +%s)
timeout --signal=INT --kill-after=15 "$HARD_LIMIT" bash -c "
  '$PYTHON' -m contime.cli run rt-scaling --device $DEVICE --budget $SCALING_BUDGET --quiet --out-dir '$OUT_BASE' ${SCALING_ARGS:-}
  '$PYTHON' -m contime.cli run sinusoid --drop 0.5 --device $DEVICE --time-budget $BUDGET --epochs 30 --quiet \
      --out-dir '$OUT_BASE' ${EXTRA_ARGS:-}
"
status=$?
echo "== exited with $status after $(( $(date +%s) - start )) s (124: cut at HARD_LIMIT=${HARD_LIMIT}s)"
# Keep the JSON and the plots (two folders down); the per-model folders would only weigh down the transfer.
[ -n "${OUT:-}" ] && find "$OUT_BASE" -mindepth 3 -maxdepth 3 -type d -exec rm -rf {} +
exit "$status"
