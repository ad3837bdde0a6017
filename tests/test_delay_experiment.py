"""The delay experiment (`contime run delay --quick`), its noise generator and the run-folder helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from contime.cli import app
from contime.data import band_limited_noise
from contime.experiments.rundir import create_run_dir, result_record, write_json_atomic, write_metrics

DELAYS = [0.0, 0.25, 0.5, 0.75, 1.0]


# ------------------------------------------------------------------------------------------ the quick run
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["run", "delay", "--quick", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((out / "delay").iterdir())
    return run_dir, result.output


def _mse(metrics) -> dict[tuple[int, float], float]:
    return {(r["T"], r["delay"]): r["value"] for r in metrics["results"]}


def test_quick_run_writes_files_and_schema(quick_run):
    run_dir, output = quick_run
    for name in ("config.json", "metrics.json", "mse_vs_delay.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "mse_vs_delay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"experiment", "config", "results"}
    assert metrics["experiment"] == "delay"
    assert metrics["config"] == config
    assert config["t_values"] == [100, 1000] and config["order"] == 100 and config["n_test"] >= 10
    assert len(metrics["results"]) == 2 * len(DELAYS)
    for record in metrics["results"]:
        assert record["model"] == "LMU-0" and record["params"] == 0 and record["metric"] == "mse"
        assert record["seconds_per_epoch"] is None and record["epochs"] == 0
        assert isinstance(record["value"], float) and math.isfinite(record["value"])
        assert record["T"] in (100, 1000) and record["delay"] in DELAYS
        assert record["delay_steps"] == round(record["delay"] * record["T"])
        assert record["seconds"] > 0
    assert sorted(_mse(metrics)) == sorted((T, d) for T in (100, 1000) for d in DELAYS)
    assert "T = 1,000" in output  # the table


def test_quick_run_error_is_small(quick_run):
    # Measured (seeds 0-3, 10 sequences): T = 100: 1.2e-3 at delay 0, 3.1e-2 .. 4.1e-2 elsewhere (the ZOH memory
    # lags its samples by half a step, and u moves ~0.36 RMS per step at T = 100); T = 1000: <= 1.25e-3.
    metrics = json.loads((quick_run[0] / "metrics.json").read_text())
    mse = _mse(metrics)
    for d in DELAYS:
        assert mse[(100, d)] < 0.1, (d, mse[(100, d)])
        assert mse[(1000, d)] < 3e-3, (d, mse[(1000, d)])


def test_quick_run_error_does_not_grow_with_T(quick_run):
    # The same continuous signals are sampled at both T; measured MSE(T=1000) / MSE(T=100) <= 0.04 per delay.
    mse = _mse(json.loads((quick_run[0] / "metrics.json").read_text()))
    for d in DELAYS:
        assert mse[(1000, d)] < 0.5 * mse[(100, d)], (d, mse[(100, d)], mse[(1000, d)])


def test_cli_rejects_bad_t_values(tmp_path):
    result = CliRunner().invoke(app, ["run", "delay", "--t-values", "100,abc", "--out-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert not (tmp_path / "delay").exists()


def test_cli_rejects_windows_too_short_for_the_noise(tmp_path):
    """T = 20 samples 10 Hz noise at its Nyquist rate: it failed deep inside the noise generator, after the run
    folder was made."""
    result = CliRunner().invoke(app, ["run", "delay", "--t-values", "100,20", "--out-dir", str(tmp_path)])
    text = " ".join(result.output.replace("│", " ").split())  # rich's error box wraps lines
    assert result.exit_code != 0 and "t_values must exceed 2 * max_freq * theta_seconds = 20" in text
    assert not (tmp_path / "delay").exists()


@pytest.mark.parametrize("experiment", ["psmnist", "mackey-glass", "theta", "sinusoid"])
@pytest.mark.parametrize("lr", ["0", "-1"])
def test_cli_refuses_a_learning_rate_that_is_not_positive(tmp_path, experiment, lr):
    """Before: theta ran with lr 0 (theta never moved) and sinusoid ended in a traceback after starting."""
    result = CliRunner().invoke(app, ["run", experiment, "--quick", "--lr", lr, "--out-dir", str(tmp_path)])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "must be > 0" in text, text[-300:]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["rt-scaling", "--lengths", "1"], "lengths must be >= 2, got [1]"),  # was a traceback
    (["mackey-glass", "--theta", "inf"], "must be finite, got inf"),  # was a JSON error, after making a folder
], ids=["rt-scaling-length-1", "mackey-glass-theta-inf"])
def test_cli_refuses_other_bad_values_up_front(tmp_path, args, message):
    result = CliRunner().invoke(app, ["run", *args, "--quick", "--out-dir", str(tmp_path)])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and message in text, text[-300:]
    assert not any(tmp_path.iterdir())


def test_resume_finds_the_run_with_the_same_settings(tmp_path):
    """A start that failed after making its folder (say, on missing data) is newer than the killed run: --resume
    picked it and refused, since its settings differed."""
    from contime.experiments.rundir import open_run_dir
    killed, failed = tmp_path / "psmnist" / "20260101-000000", tmp_path / "psmnist" / "20260101-000100"
    for folder, dataset in ((killed, "mnist5k"), (failed, "mnist")):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"dataset": dataset, "epochs": 3}))
    assert open_run_dir("psmnist", {"dataset": "mnist5k", "epochs": 3}, tmp_path, resume=True) == killed
    with pytest.raises(ValueError, match=r"differs from the stored run .*000100 in \['epochs'\]"):
        open_run_dir("psmnist", {"dataset": "mnist", "epochs": 4}, tmp_path, resume=True)


def test_cli_version():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0 and "contime" in result.output


# --------------------------------------------------------------------------------------- the noise
@pytest.mark.parametrize("n_steps,dt,max_freq", [(250, 0.01, 10.0), (2500, 0.001, 10.0), (1001, 0.002, 37.3),
                                                 (64, 1.0, 0.2)], ids=["T100", "T1000", "odd-length", "coarse"])
def test_band_limited_noise_spectrum_and_rms(n_steps, dt, max_freq):
    u = band_limited_noise(7, n_steps, dt, max_freq, seed=3)
    assert u.shape == (7, n_steps) and u.dtype == torch.float64
    power = torch.fft.rfft(u, dim=1).abs().pow(2)  # (S, F)
    freqs = torch.fft.rfftfreq(n_steps, d=dt, dtype=torch.float64)
    above = power[:, freqs > max_freq].sum(dim=1)
    assert torch.all(above <= 1e-10 * power.sum(dim=1))
    assert torch.all(power[:, 0] <= 1e-10 * power.sum(dim=1))  # no mean
    assert torch.allclose(u.pow(2).mean(dim=1), torch.ones(7, dtype=torch.float64), atol=1e-12)


def test_band_limited_noise_seed_and_generator():
    a = band_limited_noise(2, 300, 0.01, 10.0, seed=5)
    assert torch.equal(a, band_limited_noise(2, 300, 0.01, 10.0, seed=5))
    assert torch.equal(a, band_limited_noise(2, 300, 0.01, 10.0, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(a, band_limited_noise(2, 300, 0.01, 10.0, seed=6))


def test_band_limited_noise_same_signal_at_every_sampling_rate():
    # The delay experiment relies on this: T = 100 and T = 1000 see the same continuous signals.
    coarse = band_limited_noise(3, 250, 0.01, 10.0, seed=0)
    fine = band_limited_noise(3, 2500, 0.001, 10.0, seed=0)
    assert torch.allclose(coarse, fine[:, ::10], atol=1e-12)


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_sequences=0), "n_sequences"), (dict(n_sequences=2.0), "n_sequences"), (dict(n_steps=1), "n_steps"),
    (dict(dt=0.0), "dt"), (dict(dt=float("nan")), "dt"), (dict(max_freq=-1.0), "max_freq"),
    (dict(max_freq=50.0), "max_freq"), (dict(max_freq=0.1), "max_freq"), (dict(seed=1.5), "seed"),
    (dict(seed=1, generator=torch.Generator()), "seed"), (dict(generator=3), "generator"),
], ids=["n0", "n-float", "steps1", "dt0", "dt-nan", "freq-neg", "freq-nyquist", "freq-too-low", "seed-float",
        "seed-and-generator", "generator-int"])
def test_band_limited_noise_bad_args(kwargs, name):
    args = dict(n_sequences=2, n_steps=100, dt=0.01, max_freq=10.0) | kwargs
    with pytest.raises(ValueError, match=name):
        band_limited_noise(**args)


# ------------------------------------------------------------------------------------- run folders
def test_run_dirs_are_fresh_and_json_is_atomic(tmp_path):
    first = create_run_dir("delay", tmp_path, timestamp="20250101-000000")
    second = create_run_dir("delay", tmp_path, timestamp="20250101-000000")
    assert first != second and first.is_dir() and second.is_dir()
    with pytest.raises(ValueError, match="experiment"):
        create_run_dir("../x", tmp_path)
    write_json_atomic(first / "a.json", {"x": 1})
    with pytest.raises(ValueError):
        write_json_atomic(first / "a.json", {"x": float("nan")})
    assert json.loads((first / "a.json").read_text()) == {"x": 1}  # the old file survives a failed write
    assert sorted(p.name for p in first.iterdir()) == ["a.json"]  # no temporary file left behind


def test_write_metrics_checks_records(tmp_path):
    good = result_record("LMU-0", 0, "mse", 0.5, T=100)
    path = write_metrics(tmp_path, "delay", {"a": 1}, [good])
    assert json.loads(path.read_text()) == {"experiment": "delay", "config": {"a": 1}, "results": [good]}
    with pytest.raises(ValueError, match="value"):
        write_metrics(tmp_path, "delay", {}, [{"model": "m", "params": 0, "metric": "mse"}])
