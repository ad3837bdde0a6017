"""psMNIST (`contime run psmnist --quick`): the run, its files, the permutation, the models' sizes, resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from contime.cli import app
from contime.data import FASHION_MNIST_DIR, make_permutation
from contime.experiments import psmnist
from contime.ops.lmu_cell import triton_available
from contime.training import count_parameters

MODELS = ["lmu", "plmu", "lstm", "lstm-plmu"]
FULL_PARAMS = {"lmu": 101_983, "plmu": 166_091, "lstm": 102_060, "lstm-plmu": 164_410}
# --threads 1: on a shared 2-core machine, two torch threads per process oversubscribe it (measured 2-4x slower).
QUICK = ["run", "psmnist", "--quick", "--threads", "1", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = invoke(*QUICK, "--out-dir", str(out))
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((out / "psmnist").iterdir())
    return out, run_dir, result.output


# ------------------------------------------------------------------------------------------ the quick run
def test_quick_run_files_and_metrics_schema(quick_run):
    _, run_dir, output = quick_run
    for name in ("config.json", "metrics.json", "permutation.json", "val_accuracy.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "val_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"experiment", "config", "results"}
    assert metrics["experiment"] == "psmnist" and metrics["config"] == config
    assert config["dataset"] == "mnist5k" and config["quick"] is True and config["models"] == MODELS
    assert "threads" not in json.dumps(config) and "device" not in config  # volatile settings stay out
    assert [r["model"] for r in metrics["results"]] == MODELS
    for r in metrics["results"]:
        assert r["params"] == FULL_PARAMS[r["model"]]  # the quick run trains the real models
        assert r["metric"] == "accuracy" and 0.0 <= r["value"] <= 1.0
        assert r["dataset"] == "mnist5k" and r["reference"] == psmnist.REFERENCES[r["model"]]
        assert r["reference_dataset"] == "psMNIST"
        assert r["epochs"] == 1 and r["epochs_planned"] == 1 and r["stopped_by_time_budget"] is False
        assert r["best_epoch"] == 1 and r["seconds_per_epoch"] > 0
        assert (r["n_train"], r["n_val"], r["n_test"]) == (psmnist.QUICK_TRAIN, psmnist.QUICK_VAL, psmnist.QUICK_TEST)
        assert r["device"] == "cpu" and r["device_name"]
        (epoch,) = r["history"]
        assert epoch["steps"] == psmnist.QUICK_STEPS >= 3  # every model takes a few optimizer steps
        assert epoch["samples"] == psmnist.QUICK_STEPS * psmnist.QUICK_BATCH
        assert math.isfinite(epoch["train_loss"]) and 0.0 <= epoch["val_value"] <= 1.0
        assert (run_dir / r["model"] / "result.json").is_file()
    for name in ("lmu", "plmu", "lstm", "lstm-plmu", "101,983", "166,091", "test accuracy"):
        assert name in output  # parameter counts printed, and the table


def test_permutation_saved_is_make_permutation_of_seed(quick_run):
    _, run_dir, _ = quick_run
    stored = json.loads((run_dir / "permutation.json").read_text())
    assert stored["seed"] == 0
    permutation = torch.tensor(stored["permutation"])
    assert permutation.shape == (784,)
    assert torch.equal(torch.sort(permutation).values, torch.arange(784))
    assert torch.equal(permutation, make_permutation(0))
    assert not torch.equal(permutation, torch.arange(784))


def test_quick_sequences_are_permuted_pixels():
    permutation = make_permutation(3)
    data = psmnist.load_psmnist("mnist5k", permutation, seed=3, quick=True)
    x, y = data.train
    assert x.shape == (psmnist.QUICK_TRAIN, 784, 1) and x.dtype == torch.float32
    assert y.shape == (psmnist.QUICK_TRAIN,) and set(y.tolist()) <= set(range(10))
    assert 0.0 <= x.min() and x.max() <= 1.0
    unpermuted = torch.empty_like(x)
    unpermuted[:, permutation] = x  # step t holds pixel permutation[t]
    # Real digits: the border pixels (row 0) are blank, the centre is not.
    assert unpermuted[:, :28].abs().max() == 0 and unpermuted[:, 14 * 28 + 10:14 * 28 + 18].mean() > 0.1


# ------------------------------------------------------------------------------------------ resume
def test_resume_of_finished_run_returns_same_metrics(quick_run):
    out, run_dir, _ = quick_run
    before = (run_dir / "metrics.json").read_text()
    checkpoints = sorted(p.name for p in (run_dir / "lmu" / "checkpoints").iterdir())
    result = invoke(*QUICK, "--out-dir", str(out), "--resume")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.count("already finished") == len(MODELS)  # nothing trained again
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(before)
    assert sorted(p.name for p in (run_dir / "lmu" / "checkpoints").iterdir()) == checkpoints
    assert len(list((out / "psmnist").iterdir())) == 1  # no new run folder


def test_resume_continues_an_interrupted_model(quick_run, tmp_path):
    # A run killed after its last checkpoint but before the result: the model resumes from "last" and scores
    # the same best weights on the same test set.
    _, run_dir, _ = quick_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "plmu" / "result.json").unlink()
    (copy / "metrics.json").unlink()
    result = invoke(*QUICK, "--models", "lmu,plmu,lstm,lstm-plmu", "--run-dir", str(copy))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "plmu: resumed from" in result.output
    old = {r["model"]: r for r in json.loads((run_dir / "metrics.json").read_text())["results"]}
    new = {r["model"]: r for r in json.loads((copy / "metrics.json").read_text())["results"]}
    assert new["plmu"]["value"] == old["plmu"]["value"] and new["plmu"]["history"] == old["plmu"]["history"]


def test_resume_with_other_settings_is_refused(quick_run):
    out, run_dir, _ = quick_run
    result = invoke(*QUICK, "--out-dir", str(out), "--resume", "--seed", "1")
    assert result.exit_code == 2
    assert "differs" in result.output and "seed" in result.output


def test_resume_without_a_run_is_refused(tmp_path):
    result = invoke(*QUICK, "--out-dir", str(tmp_path), "--resume")
    assert result.exit_code == 2 and "no run" in result.output


def test_unreadable_data_is_a_one_line_error(tmp_path):
    """A CSV of other contents (or a truncated file) ended in a traceback: only missing files were caught."""
    import gzip
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"garbage\n"))
    result = invoke("run", "psmnist", "--quick", "--dataset", "mnist5k", "--data-dir", str(bad),
                    "--out-dir", str(tmp_path / "runs"))
    assert result.exit_code == 2 and "could not load --dataset mnist5k" in result.output, result.output


# ------------------------------------------------------------------------------------------ time budget
def test_time_budget_stops_after_the_epoch_and_records_it(tmp_path):
    result = invoke(*QUICK, "--models", "plmu", "--epochs", "3", "--time-budget", "0", "--out-dir", str(tmp_path))
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = list((tmp_path / "psmnist").iterdir())
    (record,) = json.loads((run_dir / "metrics.json").read_text())["results"]
    assert record["epochs"] == 1 and record["epochs_planned"] == 3 and record["stopped_by_time_budget"] is True
    assert len(record["history"]) == 1 and record["best_epoch"] == 1
    assert "time budget" in result.output
    again = invoke(*QUICK, "--models", "plmu", "--epochs", "3", "--time-budget", "0", "--out-dir", str(tmp_path),
                   "--resume")
    assert again.exit_code == 0 and "already finished" in again.output


# ------------------------------------------------------------------------------------------ the full models
@pytest.mark.parametrize("name, target", [("lmu", 102_000), ("plmu", 165_000), ("lstm", 102_000),
                                          ("lstm-plmu", 165_000)])
def test_full_model_parameter_counts(name, target):
    # The papers: LMU 102k, parallel LMU 165k; the LSTMs are sized to match them.
    params = count_parameters(psmnist.build_model(name))
    assert params == FULL_PARAMS[name]
    assert abs(params - target) / target < 0.02


def test_lmu_models_follow_the_papers():
    lmu = psmnist.build_model("lmu").lmu
    assert (lmu.memory_d, lmu.order, float(lmu.theta)) == (1, 256, 784.0)
    assert isinstance(lmu.hidden_cell, torch.nn.RNNCell) and lmu.hidden_cell.hidden_size == 212
    assert lmu.hidden_cell.input_size == 257 and lmu.input_to_hidden
    assert not lmu.hidden_to_memory and not lmu.memory_to_memory and lmu.hidden_kernel is None
    assert torch.equal(lmu.input_kernel, torch.ones(1, 1))  # e_x = 1
    w = lmu.hidden_cell.weight_hh.detach()
    assert torch.allclose(w @ w.T, torch.eye(212), atol=1e-5)  # orthogonal recurrent weights
    # The faster on each, as measured (contime bench, LMU.resolve_mode): the fused kernel on CUDA, fft on the CPU.
    assert lmu.resolve_mode("cuda") == ("fused" if triton_available() else "fft")
    assert lmu.resolve_mode("cpu") == "fft"

    plmu = psmnist.build_model("plmu").lmu
    assert (plmu.order, float(plmu.theta), plmu.output_size) == (468, 784.0, 346)
    assert plmu.hidden_kind == "feedforward" and not plmu.return_sequences
    assert plmu.resolve_mode() == "final"  # the parallel path: one product, no loop over time
    assert torch.equal(plmu.input_kernel, torch.ones(1, 1))


# ------------------------------------------------------------------------------------------ data and options
def test_missing_mnist_says_what_to_do(tmp_path):
    result = invoke(*QUICK, "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--data-dir" in result.output and "--download" in result.output


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    def offline(folder, *args, **kwargs):
        raise OSError("download of https://example/train-images-idx3-ubyte.gz failed: <urlopen error>")

    monkeypatch.setattr(psmnist, "download_mnist", offline)
    result = invoke(*QUICK, "--dataset", "mnist", "--download", "--data-dir", str(tmp_path / "mnist"),
                    "--out-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "could not download MNIST" in result.output and "--data-dir" in result.output


def test_download_is_for_mnist_only(tmp_path):
    result = invoke(*QUICK, "--dataset", "fashion", "--download", "--out-dir", str(tmp_path))
    assert result.exit_code == 2 and "MNIST only" in result.output


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_fashion_from_a_data_dir(tmp_path):
    for path in FASHION_MNIST_DIR.glob("*-ubyte.gz"):
        (tmp_path / path.name).symlink_to(path)
    data = psmnist.load_psmnist("fashion", make_permutation(0), data_dir=str(tmp_path), quick=True)
    assert data.train[0].shape == (psmnist.QUICK_TRAIN, 784, 1)
    assert str(tmp_path) in data.source


def test_bad_models_are_rejected(tmp_path):
    result = invoke(*QUICK, "--models", "lmu,gru", "--out-dir", str(tmp_path))
    assert result.exit_code != 0
    assert not (tmp_path / "psmnist").exists()
