#!/usr/bin/env bash
# The GPU kernels on one card (issue 6): correctness against float64, block-size sweep, `contime bench` at the
# psMNIST shape with the precision table, and long sequences. Made for one remote call of about 8 minutes.
#
#     bash benchmarks/gpu_kernels.sh            # from the repository root; results under $OUT (or runs/gpu)
#
# The GPU image has torch and triton but not pysiglib/torchcde/nengo; their wheels must be in ./wheels/
# (git-ignored; carry it): pip download --no-deps -d wheels pysiglib==4.0.0 torchcde==0.2.5 torchsde==0.2.6
# trampoline==0.1.2 nengo==4.1.0
# Settings: PYTHON (python3), STEPS (sweep,latency,check,tune,bench,long: which parts run; sweep: the chunk-scan
# memory's chunk length and precision, benchmarks/chunk_scan_sweep.py; latency: where a persistent kernel's step
# goes, benchmarks/step_latency.py), CHECKS (gpu_kernel_check.py's checks, default all), TUNE_ARGS
# (gpu_kernel_tune.py's parts: cell convolution toeplitz, default all), BENCH_ARGS (bench options; default
# --precision, the error table), CHECK_S / SWEEP_S / LATENCY_S / TUNE_S / BENCH_S (time limits).
#
# Next run (15 minutes of device time in all, start-up included; earlier runs were cut at their limits inside
# Triton's autotuning, which every new process repeats). First call, the measurements that need no autotuning
# first (the chunk-scan memory: item 1; the sweep times eager calls and CUDA graph replays; the step latency's
# ingredients), then the convolution cell's check and the fused cells against both LSTMs (item 2); about 580 s:
#   STEPS=sweep,latency,check,bench SWEEP_S=100 CHECKS="check_chunk_scan check_convolution_cell check_cell"
#   CHECK_PRECISIONS=ieee,tf32,mixed CHECK_S=200 BENCH_S=220 (mixed: check_cell's chunked kernels)
#   BENCH_ARGS="--paths lstm,lstm-fp32,lmu-cell-fused,lmu-cell-fused-conv,lmu-cell-fused-conv-tf32,
#   lmu-cell-fused-mixed,memory-chunkscan-tf32,memory-chunkscan,memory-chunkscan-tf32x3,memory-fft,
#   memory-toeplitz-tf32 --repeat 10 --warmup 2" bash benchmarks/gpu_kernels.sh
#   (the LSTMs first: a bench cut at its limit keeps the ratios; the sweep has timed the chunk scan already)
# Second call, if the budget allows (within the 30 s idle window, so the compiled kernels are reused): the same
# paths as CUDA graph replays (`contime bench --cuda-graph`: the GPU's own time, without the host's launch gaps),
# about 150 s:
#   STEPS=bench BENCH_S=150 BENCH_ARGS="--cuda-graph --paths memory-chunkscan-tf32,memory-chunkscan,
#   memory-chunkscan-tf32x3,memory-fft,memory-toeplitz-tf32,lmu-cell-fused-conv,lmu-cell-fused,lstm --repeat 10
#   --warmup 2" bash benchmarks/gpu_kernels.sh
# Later: STEPS=check,bench CHECKS="check_elman check_lmu_fused_mode" CHECK_S=150 BENCH_S=200 BENCH_ARGS="--paths
#   lmu-fused,lmu-fused-conv,lmu-fused-conv-tf32,lmu-cell-fused-mixed,lmu-fft-elman,lstm --repeat 10 --warmup 2"
# Also later (no Triton, seconds): `python benchmarks/torch_rnn_cells.py --device cuda --repeat 10`, whether GRU and
#   LSTM cells should run as one cuDNN call on CUDA too (contime.hidden.uses_torch_lstm: the CPU only for now).
set -uo pipefail
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-sweep,latency,check,tune,bench,long}
RESULTS=${OUT:-runs/gpu}
mkdir -p "$RESULTS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Compiled kernels in the working tree (git-ignored): a later call on the same warm machine finds them there.
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$PWD/.triton-cache}"
if ! "$PYTHON" -c "import pysiglib, torchcde, nengo" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-index wheels/*.whl || exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
step() { [[ ",$STEPS," == *",$1,"* ]]; }

# The chunk-scan sweep first: plain cuBLAS products, nothing to autotune, nothing that can hang.
step sweep && { echo "== sweep"; timeout "${SWEEP_S:-120}" "$PYTHON" benchmarks/chunk_scan_sweep.py --device cuda | tee "$RESULTS/sweep.jsonl"; }
step latency && { echo "== latency"; timeout "${LATENCY_S:-60}" "$PYTHON" benchmarks/step_latency.py | tee "$RESULTS/latency.jsonl"; }
if step check; then
    echo "== check"
    timeout "${CHECK_S:-180}" "$PYTHON" benchmarks/gpu_kernel_check.py ${CHECKS:-} | tee "$RESULTS/check.jsonl"
    # A kernel that hangs (a barrier never released) would hang every later step too.
    [ "${PIPESTATUS[0]}" = 124 ] && { echo "check timed out: stopping"; exit 4; }
fi
step tune && { echo "== tune"; timeout "${TUNE_S:-150}" "$PYTHON" benchmarks/gpu_kernel_tune.py ${TUNE_ARGS:-} | tee "$RESULTS/tune.jsonl"; }
step bench && { echo "== bench"; timeout "${BENCH_S:-220}" "$PYTHON" -c "from contime.cli import app; app()" bench --device cuda --out "$RESULTS/bench.jsonl" ${BENCH_ARGS---precision} \
    | tee "$RESULTS/bench.txt"; }
step long && { echo "== long"; timeout 100 "$PYTHON" benchmarks/long_sequences.py --device cuda --out "$RESULTS/long.jsonl"; }
echo "== done"
