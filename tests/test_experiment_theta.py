"""`contime run theta --quick`: theta learned by backprop moves to the task's delay from both sides."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from contime.cli import app
from contime.experiments import theta as theta_experiment


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["run", "theta", "--quick", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((out / "theta").iterdir())
    return run_dir, result.output


def test_quick_run_writes_files_and_schema(quick_run):
    run_dir, output = quick_run
    for name in ("config.json", "metrics.json", "theta.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "theta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"experiment", "config", "results"} and metrics["experiment"] == "theta"
    assert config["quick"] is True and config["delay"] == 25
    assert {k: v for k, v in metrics["config"].items() if k != "landscape"} == config
    landscape = metrics["config"]["landscape"]
    assert len(landscape["theta"]) == len(landscape["loss"]) == config["grid_points"]
    assert [r["start"] for r in metrics["results"]] == ["below", "above"]
    for record in metrics["results"]:
        for key in ("model", "params", "metric", "value", "seconds_per_epoch", "epochs", "theta_initial",
                    "theta_final", "theta_true", "theta_loss_min", "initial_loss", "final_loss"):
            assert key in record, key
        assert record["params"] == 1 and record["metric"] == "mse" and record["value"] == record["final_loss"]
        assert record["theta_true"] == 25.0
        assert len(record["theta_trajectory"]) == config["steps"] + 1
        assert record["theta_trajectory"][0] == record["theta_initial"]
        assert record["theta_trajectory"][-1] == record["theta_final"]
        assert all(math.isfinite(v) and v > 0 for v in record["theta_trajectory"])
    assert "from both sides: yes" in output


def test_theta_moves_to_the_delay_from_both_sides(quick_run):
    # Measured (quick, seeds 0-3): |log(theta / D)| goes from 2.303 to <= 0.03 from both sides (theta ends within
    # 25.4 .. 25.6, the loss minimum being 25.52); asserted: below 0.1, i.e. theta within 10% of D.
    metrics = json.loads((quick_run[0] / "metrics.json").read_text())
    by_start = {r["start"]: r for r in metrics["results"]}
    assert by_start["below"]["theta_initial"] == pytest.approx(2.5)
    assert by_start["above"]["theta_initial"] == pytest.approx(250.0)
    for record in by_start.values():
        assert record["log_error_initial"] == pytest.approx(math.log(10.0))
        assert record["log_error_final"] < 0.1, record["theta_final"]
        assert record["final_loss"] < 1e-2 * record["initial_loss"]


def test_loss_minimum_is_the_delay(quick_run):
    # The identifiable optimum: the fixed readout at the window's end makes the loss minimal where the memory's
    # delay equals D; the zero-order hold adds half a step (measured 25.518 for D = 25).
    metrics = json.loads((quick_run[0] / "metrics.json").read_text())
    assert metrics["config"]["landscape"]["theta_loss_min"] == pytest.approx(25.5, abs=0.1)


def test_model_output_is_the_input_delayed_by_theta():
    config = theta_experiment.make_config(True)
    x, y = theta_experiment.make_batch({**config, "delay": 40}, 2, seed=3)
    model = theta_experiment.DelayByTheta(config["order"], 40.5)
    with torch.no_grad():
        error = theta_experiment.loss_of(model, x, y, config["prefix"])
    assert error < 1e-4 * y.pow(2).mean()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1


def test_bad_delay_is_a_usage_error(tmp_path):
    # A delay so long that the noise's slowest frequency turns within 9 D: the loss would not be monotone.
    result = CliRunner().invoke(app, ["run", "theta", "--quick", "--delay", "100", "--out-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert not (tmp_path / "theta").exists()
