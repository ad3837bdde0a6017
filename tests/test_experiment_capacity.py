"""The capacity experiment (`contime run capacity --quick`): files, schema, LMU-0 against T, the best-validation
evaluation of the trained models, resume, and the pieces (data splits, models, verdict)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from contime.cli import app
from contime.data import band_limited_noise
from contime.experiments import capacity
from contime.experiments.capacity import CapacityConfig, build_model, make_split, verdict
from contime.experiments.delay import DelayConfig, evaluate_t
from contime.experiments.rundir import result_record

DELAYS = [0.0, 0.25, 0.5, 0.75, 1.0]
LSTM_PARAMS = 4 * 100 * (1 + 100) + 2 * 4 * 100 + 100 * 5 + 5  # weights, two biases, readout
LMU_PARAMS = 100 * 5 + 5  # the readout only: the memory has no trainable parameter
EXPECTED = {"LMU-0": ((100, 1000), 0), "LSTM": ((25, 100), LSTM_PARAMS), "LMU": ((25, 100), LMU_PARAMS)}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["run", "capacity", "--quick", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((out / "capacity").iterdir())
    return out, run_dir, result.output


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _mse(metrics) -> dict[tuple[str, int, float], float]:
    return {(r["model"], r["T"], r["delay"]): r["value"] for r in metrics["results"]}


def test_quick_run_writes_files_and_schema(quick_run):
    _, run_dir, output = quick_run
    for name in ("config.json", "metrics.json", "mse_vs_delay.png", "LMU-0/T100.json", "LMU-0/T1000.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "mse_vs_delay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run_dir / "config.json").read_text())
    metrics = _metrics(run_dir)
    assert set(metrics) == {"experiment", "config", "results"}
    assert metrics["experiment"] == "capacity" and metrics["config"] == config
    assert config["quick"] is True and config["models"] == ["LMU-0", "LSTM", "LMU"]
    assert config["lmu0_t_values"] == [100, 1000] and config["t_values"] == [25, 100]
    assert "threads" not in config and "device" not in config  # execution options stay out (resume)
    results = metrics["results"]
    assert len(results) == 3 * 2 * len(DELAYS)
    keys = {(r["model"], r["T"], r["delay"]) for r in results}
    assert keys == {(m, T, d) for m, (ts, _) in EXPECTED.items() for T in ts for d in DELAYS}
    for r in results:
        assert {"model", "params", "metric", "value", "seconds_per_epoch", "epochs", "T", "delay"} <= set(r)
        assert r["metric"] == "mse" and r["params"] == EXPECTED[r["model"]][1], r
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["delay_steps"] == round(r["delay"] * r["T"])
        if r["model"] == "LMU-0":
            assert r["seconds_per_epoch"] is None and r["epochs"] == 0
        else:
            assert r["seconds_per_epoch"] > 0 and r["epochs"] == 2 and r["best_epoch"] in (1, 2)
    assert "Verdict:" in output and "LSTM" in output and "1,000" in output


def test_quick_lmu0_error_does_not_grow_with_T(quick_run):
    # Same continuous signals at both T; measured MSE(T=1000) / MSE(T=100) <= 0.03 per delay (see test_delay).
    mse = _mse(_metrics(quick_run[1]))
    for d in DELAYS:
        assert mse[("LMU-0", 1000, d)] <= mse[("LMU-0", 100, d)], d
        assert mse[("LMU-0", 1000, d)] < 3e-3, d


def test_quick_lmu0_is_the_delay_experiment(quick_run):
    # LMU-0 comes from contime.experiments.delay.evaluate_t with the same task and test set.
    mse = _mse(_metrics(quick_run[1]))
    reference = evaluate_t(DelayConfig(t_values=(100, 1000)), 100)
    assert [mse[("LMU-0", 100, d)] for d in DELAYS] == pytest.approx(reference.mse, rel=1e-9)


def test_trained_models_are_scored_from_their_best_validation_epoch(quick_run):
    run_dir = quick_run[1]
    records = _metrics(run_dir)["results"]
    for model in ("LSTM", "LMU"):
        for T in (25, 100):
            folder = run_dir / f"{model}-T{T}"
            stored = json.loads((folder / "result.json").read_text())
            assert (folder / "checkpoints").is_dir() and (folder / "history.png").is_file()
            mine = [r for r in records if r["model"] == model and r["T"] == T]
            assert {r["best_epoch"] for r in mine} == {stored["best_epoch"]}
            # The trainer's test MSE (all delays at once, best weights) is the mean of the per-delay ones.
            mean = sum(r["value"] for r in mine) / len(mine)
            assert mean == pytest.approx(stored["value"], rel=1e-5)
            assert mine[0]["test_mse_all"] == stored["value"]
            assert mine[0]["val_mse"] == stored["val_value"]


def test_resume_reuses_everything_and_refuses_other_settings(quick_run):
    out, run_dir, _ = quick_run
    before = _mse(_metrics(run_dir))
    result = CliRunner().invoke(app, ["run", "capacity", "--quick", "--resume", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "reused T1000.json" in result.output and "already finished" in result.output
    assert _mse(_metrics(run_dir)) == before
    assert list((out / "capacity").iterdir()) == [run_dir]

    other = CliRunner().invoke(app, ["run", "capacity", "--quick", "--seed", "1", "--resume", "--out-dir", str(out)])
    assert other.exit_code == 2 and "differs" in other.output
    assert _mse(_metrics(run_dir)) == before


@pytest.mark.parametrize("args", [["--models", "LMU,GRU"], ["--t-values", "25,abc"], ["--t-values", "20"],
                                  ["--lstm-lr", "0"], ["--device", "tpu"]],
                         ids=["unknown-model", "not-an-int", "above-nyquist", "zero-lr", "bad-device"])
def test_cli_rejects_bad_options(tmp_path, args):
    result = CliRunner().invoke(app, ["run", "capacity", "--quick", *args, "--out-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert not (tmp_path / "capacity").exists()


# ------------------------------------------------------------------------------------------------ pieces
def test_splits_are_delayed_inputs_and_the_test_set_is_lmu0s():
    config = CapacityConfig.preset(quick=True)
    T = 25
    x, y = make_split(config, T, "test")
    assert x.shape == (10, 62, 1) and y.shape == (10, 62 - T, 5) and x.dtype == y.dtype == torch.float32
    u = band_limited_noise(10, 62, 1.0 / T, 10.0, seed=0)  # what LMU-0 is scored on at this T
    assert torch.equal(x[..., 0], u.float())
    lags = [0, 6, 12, 19, 25]  # round(fraction * 25), ties to even
    for k, lag in enumerate(lags):
        assert torch.equal(y[:, :, k], u[:, T - lag:62 - lag].float())
    train, val = make_split(config, T, "train")[0], make_split(config, T, "val")[0]
    assert train.shape[0] == config.n_train and val.shape[0] == config.n_val
    assert not torch.equal(train[:10], x) and not torch.equal(val[:8], train[:8])


@pytest.mark.parametrize("name,params", [("LSTM", LSTM_PARAMS), ("LMU", LMU_PARAMS)])
def test_models_output_the_steps_after_the_window(name, params):
    config = CapacityConfig.preset(quick=True)
    model = build_model(name, config, 25)
    out = model(torch.randn(3, 62, 1))
    assert out.shape == (3, 62 - 25, 5)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params


def _records(model, per_t):
    return [result_record(model, 0, "mse", v, T=T, delay=d) for T, values in per_t.items()
            for d, v in zip(DELAYS, values)]


def test_verdict_from_numbers():
    flat = _records("LMU-0", {100: [1e-3] * 5, 1000: [1.2e-3] * 5, 100000: [0.9e-3] * 5})
    grows = _records("LSTM", {25: [0.1] * 5, 1600: [0.9] * 5})
    check = verdict(flat + grows)
    assert check["holds"] is True and check["lmu0_flat"] and check["lstm_grows"]
    assert check["lstm_growth"] == pytest.approx(9.0) and check["lmu0_worst_ratio"] == pytest.approx(1.2)
    assert check["line"].startswith("Verdict: the claim holds")

    worse = _records("LMU-0", {100: [1e-3] * 5, 1000: [1e-3, 1e-3, 1e-3, 1e-3, 1e-2]})
    assert verdict(worse + grows)["holds"] is False and verdict(worse + grows)["lmu0_flat"] is False
    flat_lstm = _records("LSTM", {25: [0.5] * 5, 1600: [0.6] * 5})
    assert verdict(flat + flat_lstm)["lstm_grows"] is False
    assert verdict(flat)["holds"] is None and "not decidable" in verdict(flat)["line"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="models"):
        CapacityConfig(models=("LMU", "GRU"))
    with pytest.raises(ValueError, match="Nyquist"):
        CapacityConfig(t_values=(20,))
    with pytest.raises(ValueError, match="n_train"):
        CapacityConfig(n_train=0)
    assert CapacityConfig(models=("LMU", "LMU-0")).models == ("LMU-0", "LMU")  # run in the canonical order
    assert capacity.EXPERIMENT == "capacity"
