"""contime bench: the command's JSON lines, the timer, the floors, the registry and the precision table (CPU)."""

import json
import math
import time

import pytest
import torch
from typer.testing import CliRunner

from contime.bench import PASSES, PATHS, PathUnavailable, build_case, register_lmu_path, register_path, time_call
from contime.bench.bandwidth import floor_ms, nominal_bandwidth_gbps
from contime.bench.paths import QUICK_SHAPE, REFERENCE_PATH, BenchShape, memory_case, memory_system
from contime.bench.precision import precision_rows
from contime.bench.timing import peak_bytes
from contime.cli import app

TIMING_KEYS = {"record", "path", "kind", "pass", "cuda_graph", "ms", "min_ms", "times_ms", "repeat",
               "ratio_to_lstm", "lstm_ms", "floor_bytes", "floor_ms", "floor_fraction", "peak_bytes", "bandwidth_gbps",
               "bandwidth_source", "copy_gbps", "device", "device_name", "torch", "shape", "dtype", "git", "timestamp"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.jsonl"
    result = CliRunner().invoke(app, ["bench", "--quick", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result, [json.loads(line) for line in out.read_text().splitlines()]


def test_quick_run_writes_one_line_per_path_and_pass(quick_run):
    _, records = quick_run
    assert {(r["path"], r["pass"]) for r in records} == {(p, s) for p in PATHS for s in PASSES}
    assert len(records) == len(PATHS) * len(PASSES)
    for r in records:
        assert r["record"] == "timing" and r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["shape"] == QUICK_SHAPE.as_dict()
        assert {"thp_mem_alloc_enable", "transparent_hugepage"} <= set(r)  # CPU times depend on them
        assert "error" not in r, r
        if r.get("skipped"):  # only what needs CUDA: the Triton kernels and their precisions
            assert r["ms"] is None and ("CUDA" in r["skipped"] or "Triton" in r["skipped"]), r
            assert r["path"].startswith("memory-toeplitz") or r["path"].endswith(("-tf32", "-tf32x3", "-mixed", "-elman")), r
            continue
        assert TIMING_KEYS <= set(r), TIMING_KEYS - set(r)
        assert r["ms"] > 0 and r["min_ms"] <= r["ms"] and r["repeat"] == 2 and len(r["times_ms"]) == 2
        assert r["ratio_to_lstm"] == pytest.approx(r["ms"] / r["lstm_ms"])
        assert r["peak_bytes"] >= 0 and r["bandwidth_gbps"] > 0


def test_quick_run_has_the_lstm_baseline_and_floors(quick_run):
    result, records = quick_run
    by_key = {(r["path"], r["pass"]): r for r in records}
    for pass_name in PASSES:
        lstm = by_key[(REFERENCE_PATH, pass_name)]
        assert lstm["kind"] == "baseline" and lstm["ratio_to_lstm"] == 1.0
        assert lstm["layout"] in ("batch_first", "time_major")
        fft = by_key[("memory-fft", pass_name)]
        # the floor: u read and every state written (forward); twice that with the gradients (backward)
        forward_bytes = 4 * (4 * 32 * 1 + 4 * 32 * 1 * 16)
        assert fft["floor_bytes"] == forward_bytes * (1 if pass_name == "forward" else 2)
        assert 0 < fft["floor_fraction"] == pytest.approx(fft["floor_ms"] / fft["ms"])
        assert by_key[("lmu-fft", pass_name)]["floor_fraction"] is None  # no floor for a cell
    assert "x LSTM" in result.output and "memory-fft" in result.output


def test_the_lstm_baselines_set_cudnn_tf32_in_both_passes(quick_run):
    """"lstm" runs with cuDNN's TF32 allowed (PyTorch's default), "lstm-fp32" without, in the forward and in the
    backward (cuDNN's RNN backward reads the flag again); the flag is restored afterwards, and a conv flag that
    differs from the RNN one (which makes the legacy allow_tf32 raise) is left alone."""
    from contime.bench.paths import cudnn_rnn_tf32
    _, records = quick_run
    by_key = {(r["path"], r["pass"]): r for r in records}
    assert by_key[("lstm", "forward")]["cudnn_allow_tf32"] is True
    assert by_key[("lstm-fp32", "backward")]["cudnn_allow_tf32"] is False
    seen = []

    class Record(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(("forward", cudnn_rnn_tf32()))
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(("backward", cudnn_rnn_tf32()))
            return grad

    before = cudnn_rnn_tf32()
    case = build_case("lstm-fp32", QUICK_SHAPE, "cpu")
    run = case.run
    case.run = lambda inp: Record.apply(run(inp))
    case.pass_fn("backward", case.output_grad())()
    assert seen == [("forward", False), ("forward", False), ("backward", False)]
    assert cudnn_rnn_tf32() == before
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is not None:  # torch's per-op flags: set the conv one apart, as a user may
        conv_flags = torch.backends.cudnn.conv
        conv_flags.fp32_precision = "ieee"
        try:
            case.pass_fn("forward")()
            assert conv_flags.fp32_precision == "ieee" and cudnn_rnn_tf32() == before
        finally:
            conv_flags.fp32_precision = conv


def test_rows_name_the_tiles_the_autotuner_chose_for_their_path(monkeypatch):
    """On a GPU each path's rows carry the tiles its kernels' autotuners picked; faked here by a path that
    registers a tuned launch the way core_triton.launch_autotuned does."""
    from contime.bench.runner import run_timings, tuned_tiles
    from contime.ops.lmu_cell import core_triton

    class Tuned:
        best_config = "BLOCK_N: 16, num_warps: 8"
    monkeypatch.setattr(core_triton, "_TUNED", {})
    name = "test-tuned-path"
    monkeypatch.delitem(PATHS, name, raising=False)

    @register_path(name, kind="memory", description="registers a tuned kernel when built")
    def _build(shape, device, dtype):
        core_triton._TUNED["forward"] = Tuned()
        return memory_case(shape, device, dtype, lambda u: u * 2)
    try:
        rows = run_timings([name, "memory-fft"], QUICK_SHAPE, torch.device("cpu"), PASSES, repeat=1,
                           bandwidth_gbps=10.0, measure_memory=False)
    finally:
        del PATHS[name]
    assert tuned_tiles() == {"core_triton:forward": "BLOCK_N: 16, num_warps: 8"}
    assert [r.get("tiles") for r in rows] == [{"core_triton:forward": "BLOCK_N: 16, num_warps: 8"}] * 2 + [None] * 2


def test_bad_options_name_the_option():
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--quick", "--device", "cpu", "--paths", "memory-fft,nope"])
    assert result.exit_code == 2
    assert "--paths" in result.output and "nope" in result.output and "memory-loop" in result.output
    result = runner.invoke(app, ["bench", "--quick", "--device", "cpu", "--batch", "0"])
    assert result.exit_code == 2 and "--batch" in result.output
    result = runner.invoke(app, ["bench", "--quick", "--device", "cpu", "--passes", "sideways"])
    assert result.exit_code == 2 and "--passes" in result.output
    result = runner.invoke(app, ["bench", "--quick", "--device", "cpu", "--cuda-graph"])
    assert result.exit_code == 2 and "--cuda-graph" in result.output and "CUDA" in result.output


def test_an_unwritable_out_is_refused_before_any_timing(tmp_path):
    """It was found only when the results were written, after every timing had run."""
    result = CliRunner().invoke(app, ["bench", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "--out" in text and "is a folder" in text
    assert "floor bandwidth" not in text  # refused before the run's header


def test_cuda_graph_timing_refuses_a_cpu_device():
    from contime.bench.runner import run_timings
    from contime.bench.timing import graph_replay
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        graph_replay(lambda: None, "cpu")
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        run_timings(["memory-fft"], QUICK_SHAPE, torch.device("cpu"), ["forward"], bandwidth_gbps=1.0,
                    cuda_graph=True)


def test_time_call_and_peak_bytes():
    timing = time_call(lambda: time.sleep(0.005), "cpu", warmup=1, repeat=3)
    assert timing["repeat"] == 3 and len(timing["times_ms"]) == 3
    assert 4.5 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    # a budget below one call's time leaves a single timed call
    assert time_call(lambda: time.sleep(0.01), "cpu", repeat=5, budget_s=0.001)["repeat"] == 1
    assert peak_bytes(lambda: torch.ones(1 << 20) + 1, "cpu") == 2 * 4 << 20  # the ones and the sum
    with pytest.raises(ValueError, match="repeat"):
        time_call(lambda: None, "cpu", repeat=0)


def test_bandwidth_table_and_floor():
    assert nominal_bandwidth_gbps("NVIDIA H200") == 4800
    assert nominal_bandwidth_gbps("NVIDIA H100 80GB HBM3") == 3350
    assert nominal_bandwidth_gbps("NVIDIA H100 PCIe") == 2000
    assert nominal_bandwidth_gbps("Tesla T4") is None
    # the figure: 80 MB of fp32 states at 4.8 TB/s is about 17 microseconds
    states = 100 * 784 * 256 * 4
    assert floor_ms(states, 4800) == pytest.approx(0.0167, rel=0.01)


def test_register_path_and_lmu_mode_guard():
    @register_path("test-memory-double", kind="memory", description="twice the fft memory")
    def _build(shape, device, dtype):
        s = memory_system(shape, device, dtype)
        return memory_case(shape, device, dtype, lambda u: 2 * u[..., None].expand(-1, -1, -1, s.A_bar.shape[-1]))
    try:
        case = build_case("test-memory-double", QUICK_SHAPE, "cpu")
        assert case.pass_fn("forward")().shape == (4, 32, 1, 16)
        with pytest.raises(ValueError, match="already registered"):
            register_path("test-memory-double", kind="memory")(_build)
        register_lmu_path("test-lmu-final", mode="final", config="cell")  # final needs a feedforward memory
        with pytest.raises(PathUnavailable, match="valid_modes"):
            build_case("test-lmu-final", QUICK_SHAPE, "cpu")
    finally:
        PATHS.pop("test-memory-double", None)
        PATHS.pop("test-lmu-final", None)
    with pytest.raises(ValueError, match="kind"):
        register_path("x", kind="kernel")
    with pytest.raises(ValueError, match="theta"):
        BenchShape(theta=0.0)


def test_precision_table():
    names = ["memory-loop", "memory-fft", "memory-conv", "memory-final", "lmu-cell-loop", "lmu-fft", "lmu-loop",
             REFERENCE_PATH]
    rows = precision_rows(names, QUICK_SHAPE, "cpu")
    assert {r["path"] for r in rows} == set(names) - {REFERENCE_PATH}  # baselines are not checked
    err = {(r["path"], r["precision"]): r for r in rows}
    for name in set(names) - {REFERENCE_PATH}:
        assert err[(name, "float64")]["output_rel_err"] == 0 and err[(name, "float64")]["grad_rel_err"] == 0
        float32 = err[(name, "float32")]
        assert 0 < float32["output_rel_err"] < 1e-4 and 0 < float32["grad_rel_err"] < 1e-4, float32
        bf16 = err[(name, "autocast-bfloat16")]
        assert math.isfinite(bf16["output_rel_err"]) and math.isfinite(bf16["grad_rel_err"])
    # autocast runs the loop's products in bfloat16 (8-bit mantissa): far coarser than float32
    loop_bf16 = err[("memory-loop", "autocast-bfloat16")]["output_rel_err"]
    assert 1e-4 < loop_bf16 < 0.5
