"""The training engine: config checks, schedule, learning, best-validation testing, checkpoints (exact, no pickle,
atomic), resume after SIGKILL equal to an uninterrupted run, and DDP under torchrun equal to one process."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from contime.training import (METRICS, Metric, TrainConfig, Trainer, epoch_order, evaluate, find_checkpoint,
                              learning_rate, load_weights, predict, read_checkpoint, write_checkpoint)
from contime.training import checkpoint as ckpt
from contime.training.batches import epoch_batches
from contime.training.metrics import resolve_loss

# Keys of a history entry that are measured, not computed: they may differ between equal runs.
TIMING_KEYS = ("seconds", "eval_seconds", "samples_per_second")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: one intra-op thread is fastest and immune to a busy machine; subprocesses use one too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def classification(n: int, seed: int = 0, features: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=torch.Generator().manual_seed(1234))
    return x, (x @ w).argmax(-1)


def mlp(features: int = 8, classes: int = 3, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, classes))


def splits(n_train=240, n_val=60, n_test=60):
    x, y = classification(n_train + n_val + n_test)
    a, b = n_train, n_train + n_val
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def strip_timing(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in ("seconds_per_epoch", "eval_seconds_per_epoch", "history")}
    out["history"] = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in result["history"]]
    return out


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_params_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 1.5), ("batch_size", 0), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")),
    ("optimizer", "sgd"), ("weight_decay", -0.1), ("betas", (0.9, 1.0)), ("eps", 0.0), ("schedule", "linear"),
    ("warmup_steps", -1), ("min_lr_ratio", 1.5), ("clip_grad_norm", 0.0), ("seed", -1), ("checkpoint_every", -5),
    ("quiet", "yes"), ("device", "tpu"), ("max_steps_per_epoch", 0), ("eval_batch_size", 0), ("autocast", "fp8"),
    ("num_workers", -1), ("drop_last", 1), ("lr_multipliers", {"theta": 0.0}), ("lr_multipliers", {"": 2.0}),
    ("lr_multipliers", [("theta", 2.0)]),
], ids=lambda v: str(v))
def test_bad_config_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_json_round_trip():
    config = TrainConfig(epochs=3, optimizer="adamw", schedule="cosine", clip_grad_norm=1.0, autocast="bf16",
                         lr_multipliers={"theta": 30})
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**data, "momentum": 0.9})


def test_trainer_rejects_bad_arguments(tmp_path):
    train, val, _ = splits()
    config = TrainConfig(epochs=1, quiet=True, device="cpu")
    with pytest.raises(ValueError, match="loss"):
        Trainer(mlp(), config, train, loss="hinge", run_dir=tmp_path)
    with pytest.raises(ValueError, match="metric"):
        Trainer(mlp(), config, train, metric="f1", run_dir=tmp_path)
    with pytest.raises(TypeError, match="higher_is_better"):
        Trainer(mlp(), config, train, metric=lambda p, t: 0.0, run_dir=tmp_path)
    with pytest.raises(ValueError, match="train.*rows"):
        Trainer(mlp(), config, (train[0], train[1][:-1]), run_dir=tmp_path)
    with pytest.raises(TypeError, match="config"):
        Trainer(mlp(), {"epochs": 1}, train, run_dir=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            Trainer(mlp(), TrainConfig(device="cuda"), train, run_dir=tmp_path)


def test_learning_rate_schedules():
    constant = TrainConfig(lr=0.1)
    assert [learning_rate(constant, s, 10) for s in range(10)] == [0.1] * 10
    warm = TrainConfig(lr=0.1, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    rates = [learning_rate(warm, s, 20) for s in range(20)]
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert rates[4] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))  # cosine decays monotonically
    assert rates[12] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 8 / 15)))


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 2))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 1))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 4, 2))
    assert sorted(epoch_order(50, 3, 2).tolist()) == list(range(50))
    sizes = [len(b) for b in epoch_batches(50, 16, 0, 0)]
    assert sizes == [16, 16, 16, 2]
    assert [len(b) for b in epoch_batches(50, 16, 0, 0, drop_last=True)] == [16, 16, 16]
    assert [len(b) for b in epoch_batches(50, 16, 0, 0, max_steps=2)] == [16, 16]
    assert [len(b) for b in epoch_batches(49, 16, 0, 0, min_size=2)] == [16, 16, 16]  # 1 sample for 2 ranks


# ------------------------------------------------------------------------------------------ losses, metrics, evaluate
def test_losses_and_metrics_check_shapes_and_values():
    pred, target = torch.randn(6, 1), torch.randn(6)
    with pytest.raises(ValueError, match="same shape"):
        METRICS["mse"](pred, target)
    with pytest.raises(ValueError, match="integer class targets"):
        METRICS["accuracy"](torch.randn(6, 3), torch.randn(6))
    logits = torch.randn(4, 5, 3)  # (B, T, C) sequence classification
    labels = logits.argmax(-1)
    labels[0, 0] = (labels[0, 0] + 1) % 3
    assert METRICS["accuracy"](logits, labels) == pytest.approx(19 / 20)
    p, t = torch.randn(50, 3), torch.randn(50, 3)
    rmse = (p.double() - t.double()).pow(2).mean().sqrt().item()
    assert METRICS["nrmse"](p, t) == pytest.approx(rmse / t.double().std(correction=0).item(), rel=1e-12)
    assert METRICS["accuracy"].better(0.9, 0.8) and METRICS["mse"].better(0.1, 0.2)
    assert not METRICS["mse"].better(float("nan"), 0.2)


@pytest.mark.parametrize("labels, match", [
    (torch.tensor([0, 1, 3]), r"targets y must be class indices in \[0, 3\) for the model's 3 outputs, got values "
                              r"from 0 to 3"),
    (torch.tensor([0, -100, 2]), "got values from -100 to 2"),  # torch would skip -100 in the loss, not in accuracy
], ids=["too-large", "ignore-index"])
def test_class_targets_out_of_range_are_named(labels, match):
    logits = torch.randn(3, 3)
    with pytest.raises(ValueError, match=match):
        METRICS["accuracy"](logits, labels)
    with pytest.raises(ValueError, match=match):
        resolve_loss("cross_entropy")[1](logits, labels)


def test_int32_class_targets_are_taken():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(resolve_loss("cross_entropy")[1](logits, labels.int()),
                               nn.functional.cross_entropy(logits, labels))


class PairDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_evaluate_and_predict_on_their_own():
    x, y = classification(50)
    model = mlp(dropout=0.5)
    model.train()
    out = predict(model, x, batch_size=7)
    assert out.shape == (50, 3) and model.training  # eval mode inside, previous mode restored
    assert torch.allclose(out, predict(model, x, batch_size=50), atol=1e-6)  # dropout is off
    with torch.no_grad():
        model.eval()
        reference = model(x)
    assert torch.allclose(out, reference, atol=1e-6)
    scores = evaluate(model, (x, y), "accuracy", loss="cross_entropy", batch_size=16)
    assert scores["n"] == 50 and scores["metric"] == "accuracy"
    assert scores["value"] == pytest.approx((reference.argmax(-1) == y).double().mean().item())
    assert scores["loss"] == pytest.approx(nn.functional.cross_entropy(reference, y).item(), rel=1e-5)
    assert evaluate(model, PairDataset(x, y), "accuracy", batch_size=16)["value"] == scores["value"]
    custom = Metric("errors", lambda p, t: (p.argmax(-1) != t).sum().item(), higher_is_better=False)
    assert evaluate(model, (x, y), custom)["value"] == round(50 * (1 - scores["value"]))


class MaskClass(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, logits):
        return logits.index_fill(-1, torch.tensor([self.index]), float("-inf"))


def test_evaluate_refuses_to_score_nan_outputs(tmp_path):
    """A NaN in one validation input made NaN logits, and the accuracy of their argmax was reported as a score."""
    x, y = classification(50)
    x[7, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="val: the model's outputs are NaN for 1 of 50 samples"):
        evaluate(mlp(), (x, y), "accuracy", name="val")
    train, _, _ = splits()
    trainer = Trainer(mlp(), TrainConfig(epochs=2, batch_size=16, seed=0), train, (x, y), run_dir=tmp_path,
                      console=Console(file=io.StringIO()))
    with pytest.raises(FloatingPointError, match="val: the model's outputs are NaN"):
        trainer.fit()
    masked = nn.Sequential(mlp(), MaskClass(2))  # -inf logits are meant: their accuracy is well defined
    x[7, 0] = 0.0
    assert evaluate(masked, (x, y), "accuracy")["value"] == pytest.approx(
        (masked(x).argmax(-1) == y).double().mean().item())


# ------------------------------------------------------------------------------------------ training
def test_lr_multipliers_scale_a_parameter_group(tmp_path):
    """Adam's first step moves every parameter by about its group's learning rate: the suffix-matched one
    (``0.bias``) by ``lr * 50``, the others by ``lr``; a suffix that matches nothing is refused."""
    train, _, _ = splits()
    model = mlp()
    before = params_of(model)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-4, quiet=True, device="cpu", max_steps_per_epoch=1,
                         lr_multipliers={"0.bias": 50.0})
    Trainer(model, config, train, run_dir=tmp_path / "a", console=quiet_console()).fit()
    moved = {name: float((p.detach() - before[name]).abs().max()) for name, p in model.named_parameters()}
    assert moved["0.bias"] == pytest.approx(50e-4, rel=0.05)
    assert all(value == pytest.approx(1e-4, rel=0.05) for name, value in moved.items() if name != "0.bias")
    with pytest.raises(ValueError, match="match no trainable"):
        Trainer(mlp(), TrainConfig(device="cpu", lr_multipliers={"theta": 2.0}), train, run_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="match no trainable"):  # whole name components only
        Trainer(mlp(), TrainConfig(device="cpu", lr_multipliers={"ias": 2.0}), train, run_dir=tmp_path / "c")


def test_a_run_written_before_a_setting_existed_resumes(tmp_path):
    """A stored config without a later TrainConfig field (here lr_multipliers) compares at the default."""
    train, val, _ = splits()
    config = TrainConfig(epochs=1, batch_size=16, quiet=True, device="cpu", max_steps_per_epoch=2)
    run_dir = tmp_path / "old"
    first = Trainer(mlp(), config, train, val, run_dir=run_dir, console=quiet_console()).fit()
    stored = json.loads((run_dir / "config.json").read_text())
    del stored["train"]["lr_multipliers"]
    (run_dir / "config.json").write_text(json.dumps(stored))
    again = Trainer(mlp(), config, train, val, run_dir=run_dir, console=quiet_console()).fit(resume=True)
    assert again["value"] == first["value"]


def test_learns_and_writes_run_files(tmp_path):
    train, val, test = splits()
    config = TrainConfig(epochs=4, batch_size=16, lr=1e-2, schedule="cosine", warmup_steps=3, clip_grad_norm=1.0,
                         quiet=True, device="cpu", checkpoint_every=5)
    console = quiet_console()
    run_dir = tmp_path / "MLP"
    result = Trainer(mlp(), config, train, val, test, run_dir=run_dir, name="MLP", console=console).fit()
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.6 * losses[0]
    assert result["value"] > 0.8 and result["metric"] == "accuracy" and result["model"] == "MLP"
    assert result["params"] == sum(p.numel() for p in mlp().parameters()) and result["epochs"] == 4
    assert result["seconds_per_epoch"] > 0 and len(result["history"]) == 4
    assert result["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 at the last step
    for name in ("config.json", "result.json", "history.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "result.json").read_text()) == result
    log = console.file.getvalue()
    assert [line.startswith("MLP epoch") for line in log.splitlines()].count(True) == 4  # quiet: a line per epoch
    assert "samples/s" in log and "test accuracy" in log

    # A finished run is not trained again; other settings are refused.
    start = time.perf_counter()
    again = Trainer(mlp(seed=5), config, train, val, test, run_dir=run_dir, name="MLP", console=quiet_console())
    assert again.fit() == result and time.perf_counter() - start < 1.0
    with pytest.raises(ValueError, match="train.lr"):
        Trainer(mlp(), config.replace(lr=0.5), train, val, test, run_dir=run_dir, name="MLP",
                console=quiet_console()).fit()


def test_progress_bars_render(tmp_path):
    train, val, test = splits(64, 16, 16)
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", quiet=False)
    Trainer(mlp(), config, train, val, test, run_dir=tmp_path, name="Bars", console=console).fit()
    text = console.file.getvalue()
    assert "Bars epoch 1/1" in text and "train_loss" in text


def test_dataset_and_tensors_train_identically(tmp_path):
    train, val, test = splits(96, 24, 24)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu", quiet=True, checkpoint_every=0)
    a = Trainer(mlp(dropout=0.2), config, train, val, test, run_dir=tmp_path / "a", console=quiet_console())
    b = Trainer(mlp(dropout=0.2), config, PairDataset(*train), PairDataset(*val), PairDataset(*test),
                run_dir=tmp_path / "b", console=quiet_console())
    assert strip_timing(a.fit()) == strip_timing(b.fit())
    assert_params_equal(params_of(a.model), params_of(b.model))


def test_without_val_or_test_under_bf16_autocast(tmp_path):
    train, _, _ = splits(96, 0, 0)
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, device="cpu", quiet=True, autocast="bf16")
    result = Trainer(mlp(), config, train, run_dir=tmp_path, console=quiet_console()).fit()
    assert result["value"] is None and result["val_value"] is None
    assert result["best_epoch"] == 3  # without validation the last epoch is the best
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0] and all(h["val_value"] is None for h in result["history"])


class Constant(nn.Module):
    """Predicts one learned number for every sample: easy to steer past the validation optimum."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # (B, 1) -> (B, 1)
        return self.c.expand(x.shape[0], 1)


def test_test_score_comes_from_the_best_validation_checkpoint(tmp_path):
    # Training targets are 1, validation and test targets 0.45: c rises by ~lr per epoch, so the validation
    # error is smallest around epoch 5 and grows after it.
    n = 8
    train = (torch.zeros(n, 1), torch.ones(n, 1))
    val = (torch.zeros(n, 1), torch.full((n, 1), 0.45))
    test = (torch.zeros(n, 1), torch.full((n, 1), 0.45))
    config = TrainConfig(epochs=9, batch_size=n, lr=0.1, device="cpu", quiet=True)
    trainer = Trainer(Constant(), config, train, val, test, loss="mse", metric="mse", run_dir=tmp_path,
                      console=quiet_console())
    result = trainer.fit()
    values = [h["val_value"] for h in result["history"]]
    best = min(range(len(values)), key=values.__getitem__) + 1
    assert 1 < best < config.epochs and values[-1] > 2 * values[best - 1]
    assert result["best_epoch"] == best and result["val_value"] == values[best - 1]

    def test_mse(folder):
        model = load_weights(Constant(), folder)
        return evaluate(model, test, "mse")["value"]

    best_folder = find_checkpoint(tmp_path / "checkpoints", "best")
    last_folder = find_checkpoint(tmp_path / "checkpoints", "last")
    assert best_folder != last_folder
    assert result["value"] == test_mse(best_folder) != test_mse(last_folder)
    assert read_checkpoint(best_folder).state["epoch"] == best
    assert torch.equal(trainer.model.c.detach(), load_file(best_folder / "model.safetensors")["c"])  # kept loaded


# ------------------------------------------------------------------------------------------ checkpoints
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight  # shared storage: safetensors refuses it unless copied
        self.register_buffer("count", torch.tensor(3, dtype=torch.int64))

    def forward(self, tokens):
        return self.head(self.embed(tokens))


def _adam_steps(model, optimizer, steps=3):
    for i in range(steps):
        tokens = torch.arange(5).roll(i)
        loss = nn.functional.cross_entropy(model(tokens), tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _files_are_safetensors_or_json(folder: Path):
    for path in folder.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"\x80") and not data.startswith(b"PK"), path  # no pickle, no torch zip
        if path.suffix == ".json":
            json.loads(data)
        else:
            assert path.suffix == ".safetensors", path
            with safe_open(path, framework="pt") as f:
                assert all(f.get_tensor(k) is not None for k in f.keys())


def test_checkpoint_round_trip_is_exact_and_holds_no_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)
    _adam_steps(model, optimizer)
    rng = torch.get_rng_state()
    folder = write_checkpoint(tmp_path, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
                              config={"name": "tied"}, state={"epoch": 1, "history": [{"loss": 0.5}]},
                              tensors={"rng/torch_cpu": rng}, label="e0001", pointers=("last", "best"))
    assert find_checkpoint(tmp_path, "last") == folder == find_checkpoint(tmp_path, "best")
    _files_are_safetensors_or_json(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = read_checkpoint(folder)
    monkeypatch.undo()

    assert loaded.config == {"name": "tied"} and loaded.state == {"epoch": 1, "history": [{"loss": 0.5}]}
    assert torch.equal(loaded.tensors["rng/torch_cpu"], rng) and loaded.tensors["rng/torch_cpu"].dtype == torch.uint8
    assert_params_equal(loaded.model, model.state_dict())
    saved = optimizer.state_dict()
    assert loaded.optimizer["param_groups"] == saved["param_groups"]
    assert loaded.optimizer["state"].keys() == saved["state"].keys()
    for pid, values in saved["state"].items():
        for key, value in values.items():
            assert torch.equal(loaded.optimizer["state"][pid][key], value), (pid, key)

    # Restored into fresh objects, the next step is identical.
    torch.manual_seed(1)
    clone = Tied()
    clone_optimizer = torch.optim.AdamW(clone.parameters(), lr=0.5)
    clone.load_state_dict(loaded.model)
    clone_optimizer.load_state_dict(loaded.optimizer)
    assert clone.head.weight is clone.embed.weight
    _adam_steps(model, optimizer, 2)
    _adam_steps(clone, clone_optimizer, 2)
    assert_params_equal(clone.state_dict(), model.state_dict())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = Tied()
    first = write_checkpoint(tmp_path, model_state=model.state_dict(), config={}, state={"n": 1}, label="one")

    def fail_on_call(target, n):
        real, calls = getattr(ckpt.os, target), []

        def fake(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise OSError(f"simulated failure in {target}")
            return real(*args, **kwargs)

        monkeypatch.setattr(ckpt.os, target, fake)

    def only_first_remains():
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted([first.name, "last.json"]), names
        assert sorted(p.name for p in first.iterdir()) == sorted(
            ["model.safetensors", "trainer.safetensors", "trainer.json", "config.json"])
        assert find_checkpoint(tmp_path) == first and read_checkpoint(first).state == {"n": 1}

    with torch.no_grad():
        model.embed.weight.add_(1.0)
    # A failure half-way through the folder (third file), then one while replacing the pointer.
    fail_on_call("fsync", 3)
    with pytest.raises(OSError, match="simulated"):
        write_checkpoint(tmp_path, model_state=model.state_dict(), config={}, state={"n": 2}, label="two")
    monkeypatch.undo()
    only_first_remains()
    fail_on_call("replace", 1)
    with pytest.raises(OSError, match="simulated"):
        write_checkpoint(tmp_path, model_state=model.state_dict(), config={}, state={"n": 2}, label="two")
    monkeypatch.undo()
    only_first_remains()
    # Nothing serializable-but-wrong reaches the disk either.
    with pytest.raises(ValueError):
        write_checkpoint(tmp_path, model_state=model.state_dict(), config={}, state={"x": float("nan")})
    only_first_remains()

    # A folder left by a process killed while writing is never named, and is removed by the next write.
    (tmp_path / "ckpt-killed-abc").mkdir()
    (tmp_path / "ckpt-killed-abc" / "model.safetensors").write_bytes(b"\x00" * 10)
    second = write_checkpoint(tmp_path, model_state=model.state_dict(), config={}, state={"n": 2}, label="two")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([second.name, "last.json"])
    assert torch.equal(read_checkpoint(second).model["embed.weight"], model.embed.weight)


class InterruptingLoss:
    """Cross entropy that raises on call number ``stop`` (an interruption at a known step)."""

    __name__ = "cross_entropy_with_interrupt"

    def __init__(self, stop: int | None = None):
        self.stop, self.calls = stop, 0

    def __call__(self, pred, target):
        self.calls += 1
        if self.stop is not None and self.calls == self.stop:
            raise KeyboardInterrupt("simulated interruption")
        return nn.functional.cross_entropy(pred, target)


def test_resume_in_process_equals_uninterrupted(tmp_path, monkeypatch):
    train, val, test = splits(160, 40, 40)
    config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.01,
                         schedule="cosine", warmup_steps=4, clip_grad_norm=0.5, checkpoint_every=3, quiet=True,
                         device="cpu", seed=7)

    def run(run_dir, model_seed, stop=None):
        trainer = Trainer(mlp(dropout=0.3, seed=model_seed), config, train, val, test,
                          loss=InterruptingLoss(stop), run_dir=run_dir, console=quiet_console())
        return trainer, trainer.fit()

    reference, expected = run(tmp_path / "straight", 0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "broken", 0, stop=15)  # epoch 2, batch 5: the last checkpoint is at step 12
    state = read_checkpoint(find_checkpoint(tmp_path / "broken" / "checkpoints")).state
    assert (state["epoch"], state["batch"], state["global_step"]) == (1, 2, 12)

    def refuse(*args, **kwargs):
        raise AssertionError("resume must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    resumed, result = run(tmp_path / "broken", 99)  # another initialization: the checkpoint must win
    assert strip_timing(result) == strip_timing(expected)
    assert_params_equal(params_of(resumed.model), params_of(reference.model))


# ------------------------------------------------------------------------------------------ subprocesses
SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    import torch
    from torch import nn
    from safetensors.torch import save_file
    from contime.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    task, run_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    delay = float(os.environ.get("STEP_DELAY", "0"))
    g = torch.Generator().manual_seed(1)

    def slow_cross_entropy(pred, target):
        time.sleep(delay)  # only to give the test time to kill the process mid-epoch
        return nn.functional.cross_entropy(pred, target)

    torch.manual_seed(int(os.environ.get("INIT_SEED", "0")))
    if task == "resume":
        x = torch.randn(360, 6, generator=g)
        y = (x[:, :3].sum(1) > x[:, 3:].sum(1)).long()
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 2))
        config = TrainConfig(epochs=3, batch_size=16, lr=1e-2, schedule="cosine", warmup_steps=3,
                             clip_grad_norm=0.5, checkpoint_every=4, quiet=True, device="cpu", seed=3)
        loss, metric = slow_cross_entropy, "accuracy"
        train, val, test = (x[:240], y[:240]), (x[240:300], y[240:300]), (x[300:], y[300:])
    else:  # "ddp": regression, 101 samples: the last batch of 5 splits 3 + 2 over two ranks
        x = torch.randn(141, 5, generator=g)
        y = torch.sin(x.sum(1, keepdim=True))
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
        config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, optimizer="adamw", weight_decay=0.01,
                             clip_grad_norm=1.0, checkpoint_every=3, quiet=True, device="cpu", seed=5)
        loss, metric = "mse", "nrmse"
        train, val, test = (x[:101], y[:101]), (x[101:121], y[101:121]), (x[121:], y[121:])
    trainer = Trainer(model, config, train, val, test, loss=loss, metric=metric, run_dir=run_dir, name=task)
    result = trainer.fit()
    rank = trainer.dist.rank
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, f"{out}.rank{rank}.safetensors")
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(result, f)
''')


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _outputs(out: Path, rank: int = 0):
    return (json.loads(Path(f"{out}.rank{rank}.json").read_text()),
            load_file(f"{out}.rank{rank}.safetensors"))


def _last_state(run_dir: Path):
    try:
        folder = find_checkpoint(run_dir / "checkpoints")
        return None if folder is None else json.loads((folder / "trainer.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # replaced under our feet: read again


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    straight = subprocess.Popen([sys.executable, str(script), "resume", str(tmp_path / "straight"),
                                 str(tmp_path / "straight_out")], env=_env(), **popen)
    victim = subprocess.Popen([sys.executable, str(script), "resume", str(tmp_path / "killed"),
                               str(tmp_path / "killed_out")], env=_env(STEP_DELAY="0.04"), **popen)
    steps = 15  # 240 samples / 16
    deadline = time.monotonic() + 60
    while True:  # wait for a mid-epoch checkpoint of the second epoch
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
        state = _last_state(tmp_path / "killed")
        if state is not None and state["epoch"] == 1 and 0 < state["batch"] <= 5:  # early: ~10 steps to spare
            break
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    state = _last_state(tmp_path / "killed")
    assert state["epoch"] == 1 and 0 < state["batch"] < steps and len(state["history"]) == 1
    assert not (tmp_path / "killed" / "result.json").exists()

    resumed = subprocess.Popen([sys.executable, str(script), "resume", str(tmp_path / "killed"),
                                str(tmp_path / "killed_out")], env=_env(INIT_SEED="99"), **popen)
    log = _finish(resumed)
    assert f"resumed from ckpt-e0001-b{state['batch']:06d}" in log
    _finish(straight)
    expected, expected_params = _outputs(tmp_path / "straight_out")
    result, params = _outputs(tmp_path / "killed_out")
    assert strip_timing(result) == strip_timing(expected)
    assert_params_equal(params, expected_params)


def test_ddp_two_processes_equal_one_process_with_the_combined_batch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.Popen([sys.executable, str(script), "ddp", str(tmp_path / "one"), str(tmp_path / "one_out")],
                              env=_env(), **popen)
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            str(script), "ddp", str(tmp_path / "two"), str(tmp_path / "two_out")],
                           env=_env(), **popen)
    log = _finish(ddp, timeout=120)
    _finish(single)
    expected, expected_params = _outputs(tmp_path / "one_out")
    for rank in (0, 1):
        result, params = _outputs(tmp_path / "two_out", rank)
        assert result["world_size"] == 2 and expected["world_size"] == 1
        for key in expected_params:
            assert torch.allclose(params[key], expected_params[key], rtol=0, atol=1e-6), (rank, key)
        assert result["value"] == pytest.approx(expected["value"], rel=1e-5)
        for mine, theirs in zip(result["history"], expected["history"]):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert mine["samples"] == theirs["samples"] == 101 and mine["steps"] == theirs["steps"] == 7
    # Rank 0 alone prints and writes: one line per epoch, one set of files.
    assert [line.lstrip().startswith("ddp epoch") for line in log.splitlines()].count(True) == 2, log
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        ["checkpoints", "config.json", "result.json", "history.png"])


def test_time_budget_stops_at_an_epoch_boundary(tmp_path):
    """With a budget of 0 s, the first epoch finishes and no second one starts; the result says so."""
    from contime.training import TrainConfig, Trainer

    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    model = torch.nn.Linear(3, 2)
    config = TrainConfig(epochs=5, batch_size=16, seed=0, quiet=True, device="cpu", time_budget=0.0)
    result = Trainer(model, config, (x, y), (x, y), (x, y), run_dir=tmp_path / "m", name="m").fit()
    assert result["epochs"] == 1 and result["epochs_planned"] == 5 and result["stopped_by_time_budget"]
    assert len(result["history"]) == 1
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=-1.0)
