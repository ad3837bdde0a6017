"""`contime run mackey-glass --quick`: files, schema, parameter counts and the training windows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from contime.cli import app
from contime.experiments import mackey_glass as mg
from contime.training import count_parameters


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["run", "mackey-glass", "--quick", "--quiet", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((out / "mackey-glass").iterdir())
    return run_dir, result.output


def test_quick_run_writes_files_and_schema(quick_run):
    run_dir, output = quick_run
    for name in ("config.json", "metrics.json", "mackey_glass.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "mackey_glass.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"experiment", "config", "results"} and metrics["experiment"] == "mackey-glass"
    assert {k: v for k, v in metrics["config"].items() if k != "target"} == config
    assert config["quick"] is True and config["horizon"] == 15 and config["tau"] == 17.0
    assert set(metrics["config"]["target"]) == {"lmu_below_lstm", "hybrid_at_most_lmu", "lmu_minus_lstm",
                                                "hybrid_minus_lmu"}
    assert [r["model"] for r in metrics["results"]] == list(mg.MODELS)
    for record in metrics["results"]:
        assert record["metric"] == "nrmse"
        assert isinstance(record["value"], float) and math.isfinite(record["value"]) and record["value"] > 0
        assert record["seconds_per_epoch"] > 0 and record["epochs"] == config["epochs"]
        assert record["reference"] == mg.REFERENCES[record["model"]]
        assert 1 <= record["best_epoch"] <= config["epochs"]
        assert len(record["history"]) == config["epochs"]
        assert record["n_val_series"] >= 1 and record["window_steps"] == config["window"] + config["burn_in"]
        assert (run_dir / record["model"] / "result.json").is_file()  # the trainer's folder, checkpoints inside
    assert "test NRMSE" in output  # the table


def test_quick_run_learns_something(quick_run):
    # Two epochs on three short series: not the paper's claim, only that training ran and did not diverge.
    # Measured (seeds 0-3): test NRMSE 0.64 .. 1.18 (predicting 0 gives about 1.0).
    metrics = json.loads((quick_run[0] / "metrics.json").read_text())
    for record in metrics["results"]:
        assert record["value"] < 1.5, record


def test_parameter_counts_are_the_papers():
    counts = {name: count_parameters(mg.build_model(name)) for name in mg.MODELS}
    # LMU: (1 + 49 + 4) + 49 * (1 + 4 + 49) = 2,700 for the first layer, 5,100 for each of the three others,
    # + a readout of 50: 18,050. LSTM: PyTorch's two biases per gate give 18,426 (Keras's one: 18,026).
    assert counts == {"LSTM": 18_426, "LMU": 18_050, "hybrid": 21_826}
    lmu = mg.build_model("LMU").layers[0]
    assert lmu.resolve_mode() == "fused" and lmu.hidden_to_memory and lmu.memory_to_memory
    assert lmu.input_to_hidden and float(lmu.theta) == 4.0 and lmu.order == 4


def test_models_map_a_sequence_to_a_sequence():
    x = torch.randn(2, 7, 1)
    for name in mg.MODELS:
        assert mg.build_model(name)(x).shape == (2, 7, 1)


def test_training_windows_cover_the_series_in_order():
    x = torch.arange(2 * 10, dtype=torch.float32).reshape(2, 10, 1)
    windows = mg.cut_windows(x, 4)  # 2 windows per series, the last 2 steps dropped
    assert windows.shape == (4, 4, 1)
    assert torch.equal(windows[1, :, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert torch.equal(windows[2, :, 0], torch.tensor([10.0, 11.0, 12.0, 13.0]))
    with pytest.raises(ValueError, match="window"):
        mg.cut_windows(x, 11)


def test_unknown_model_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["run", "mackey-glass", "--quick", "--models", "GRU", "--out-dir",
                                      str(tmp_path)])
    assert result.exit_code != 0
    assert not (tmp_path / "mackey-glass").exists()


def test_burn_in_windows_score_every_step_once():
    x = torch.arange(3 * 50, dtype=torch.float32).reshape(3, 50, 1)
    window, burn_in = 8, 3
    windows = mg.cut_windows(x, window, burn_in)  # (3 * K, 11, 1), K = (50 - 3) // 8 = 5
    count = windows.shape[0] // 3
    assert count == 5 and windows.shape == (15, window + burn_in, 1)
    weights = mg.window_weights(3, count, window, burn_in)
    for series in range(3):
        rows = slice(series * count, (series + 1) * count)
        scored = windows[rows][weights[rows] > 0]
        # Steps 0 .. K * window + burn_in - 1 of this series, each once, in order.
        assert torch.equal(scored, x[series, :count * window + burn_in, 0])
    assert weights[0].sum() == window + burn_in and weights[1].sum() == window


def test_weighted_mse_uses_the_weight_channel():
    pred = torch.tensor([[[1.0], [2.0], [5.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # the first step is not scored
    assert mg.weighted_mse(pred, target).item() == pytest.approx((4.0 + 16.0) / 2)
    assert mg.weighted_mse(pred, target[..., :1]).item() == pytest.approx((1.0 + 4.0 + 16.0) / 3)


def test_theta_options_reach_every_lmu_layer(tmp_path):
    model = mg.build_model("hybrid", theta=12.0, learn_theta=True)
    lmus = [layer for layer in model.layers if hasattr(layer, "theta")]
    assert len(lmus) == 2 and all(float(l.theta) == 12.0 and l.theta.requires_grad for l in lmus)
    assert count_parameters(model) == 21_826 + 2  # one trained theta per LMU layer
    with pytest.raises(ValueError, match="theta"):
        mg.build_model("LMU", theta=0.0)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "mackey-glass", "--quick", "--quiet", "--models", "LMU", "--theta", "6",
                                      "--learn-theta", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads(next(out.glob("mackey-glass/*/config.json")).read_text())
    assert config["lmu"]["theta"] == 6.0 and config["lmu"]["learn_theta"] is True
    result = CliRunner().invoke(app, ["run", "mackey-glass", "--quick", "--theta", "-1", "--out-dir", str(out)])
    assert result.exit_code != 0 and "--theta" in result.output


def test_hidden_encoders_option_sets_the_h_to_memory_init(tmp_path):
    torch.manual_seed(0)
    zeros = mg.build_model("LMU")
    torch.manual_seed(0)
    lecun = mg.build_model("LMU", hidden_encoders="lecun")
    assert count_parameters(lecun) == count_parameters(zeros) == 18_050
    bound = math.sqrt(3.0 / mg.LMU_UNITS)
    for z, l in zip(zeros.layers, lecun.layers):
        assert torch.count_nonzero(z.hidden_kernel) == 0
        assert 0.5 * bound < l.hidden_kernel.abs().max() <= bound and l.hidden_kernel.std() > 0.3 * bound
        assert torch.count_nonzero(l.memory_kernel) == 0  # only the hidden encoders change
    with pytest.raises(ValueError, match="hidden_encoders"):
        mg.build_model("LMU", hidden_encoders="glorot")
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "mackey-glass", "--quick", "--quiet", "--models", "LMU",
                                      "--hidden-encoders", "lecun", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads(next(out.glob("mackey-glass/*/config.json")).read_text())
    assert config["lmu"]["hidden_encoders"] == "lecun" and "hidden encoders" in config["lmu"]["init"]
    result = CliRunner().invoke(app, ["run", "mackey-glass", "--quick", "--hidden-encoders", "ones",
                                      "--out-dir", str(out)])
    assert result.exit_code != 0 and "--hidden-encoders" in result.output
