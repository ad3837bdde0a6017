#!/usr/bin/env bash
# psFashion-MNIST on one GPU: the LMU (102k) and the LSTM of its size, each trained for a fixed time budget.
#
# Made for a remote GPU call with a hard limit of about 8 minutes in all. Before the call, put the four
# Fashion-MNIST IDX files in ./data/fashion-mnist/ (cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/),
# then, from the repository root:
#
#     bash benchmarks/gpu_psmnist.sh
#
# Each model trains until the epoch in which its training + validation time passes BUDGET seconds ends (at most
# EPOCHS epochs), then its best-validation weights are tested. The whole command is cut at HARD_LIMIT seconds;
# metrics.json is rewritten after every model, so a cut run still keeps the finished models' figures.
# Results go to $OUT/psmnist/<timestamp>/ when $OUT is set (the remote tool brings that folder back), else runs/.
#
# Settings (environment variables): PYTHON (.venv/bin/python if there, else python3), MODELS (lmu,lstm), BUDGET (150 s per model), EPOCHS (50), HARD_LIMIT (420 s),
# DATA_DIR (data/fashion-mnist, else the Debian package folder), DEVICE (cuda), EXTRA_ARGS (passed on, e.g.
# "--quick --threads 1" for a CPU smoke test with DEVICE=cpu).
set -uo pipefail

MODELS=${MODELS:-lmu,lstm}
BUDGET=${BUDGET:-150}
EPOCHS=${EPOCHS:-50}
HARD_LIMIT=${HARD_LIMIT:-420}
DEVICE=${DEVICE:-cuda}
DATA_DIR=${DATA_DIR:-data/fashion-mnist}
OUT_BASE=${OUT:-runs}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"  # works with or without `pip install -e .`

if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ] && [ ! -f "$DATA_DIR/train-images-idx3-ubyte" ]; then
    echo "note: no Fashion-MNIST in $DATA_DIR; trying /usr/share/datasets/fashion-mnist" >&2
    DATA_DIR=/usr/share/datasets/fashion-mnist
fi

echo "== $(date -u +%FT%TZ) psFashion-MNIST: models $MODELS, budget ${BUDGET}s each, <= $EPOCHS epochs, device $DEVICE"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'EOF'
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
      f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF

start=$(date +%s)
# SIGINT first (Python unwinds, rich restores the terminal); SIGKILL 15 s later if it hangs.
timeout --signal=INT --kill-after=15 "$HARD_LIMIT" \
    "$PYTHON" -m contime.cli run psmnist --dataset fashion --data-dir "$DATA_DIR" --models "$MODELS" \
    --epochs "$EPOCHS" --time-budget "$BUDGET" --device "$DEVICE" --quiet --out-dir "$OUT_BASE" ${EXTRA_ARGS:-}
status=$?
echo "== contime exited with $status after $(( $(date +%s) - start )) s (124: cut at HARD_LIMIT=${HARD_LIMIT}s)"

# The figures, also when the run was cut: the newest run folder's metrics.json.
run_dir=$(ls -1d "$OUT_BASE"/psmnist/*/ 2>/dev/null | sort | tail -n 1)
if [ -n "$run_dir" ] && [ -f "$run_dir/metrics.json" ]; then
    "$PYTHON" - "$run_dir/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for r in m["results"]:
    steps = r["steps_per_epoch"] * r["epochs"]
    print(f"{r['model']:>10}: params {r['params']:,}, test accuracy {100 * r['value']:.2f}% (best epoch "
          f"{r['best_epoch']}, val {100 * r['val_value']:.2f}%), epochs {r['epochs']}/{r['epochs_planned']}, "
          f"{r['seconds_per_epoch']:.2f} s/epoch train ({1000 * r['seconds_per_epoch'] / r['steps_per_epoch']:.1f} "
          f"ms/step), eval {r['eval_seconds_per_epoch']:.2f} s/epoch, {r['device_name']}")
EOF
    # Under $OUT the checkpoints would only weigh down the transfer back; keep the JSON and the plots.
    [ -n "${OUT:-}" ] && rm -rf "$run_dir"/*/checkpoints
    echo "== results in $run_dir"
else
    echo "== no metrics.json written (no model finished)"
fi
exit "$status"
