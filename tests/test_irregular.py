"""Irregular-series data, baselines and the sinusoid / UEA / scaling experiments (quick runs)."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from contime.baselines import GRUBaseline, LMUBaseline, NeuralCDEBaseline, TransformerBaseline, pack_valid
from contime.cli import app
from contime.data.irregular import drop_mask
from contime.data.sinusoids import LONG_SWITCH, sinusoid_classification
from contime.data.uea import load_uea, to_irregular
from contime.experiments.scaling import fit_exponent

runner = CliRunner()


# -------------------------------------------------------------------------------------------------- data
def test_sinusoid_matches_its_formula_in_the_noise_free_parts():
    data = sinusoid_classification(2, 400, n_classes=5, seed=3, dtype=torch.float64)
    assert data.values.shape == (10, 400, 1) and data.targets.tolist() == [0, 1, 2, 3, 4] * 2
    t = torch.linspace(0, 1, 400, dtype=torch.float64)
    # The class's frequency dominates the spectrum of the detrended series: f = 10 + 4c cycles over [0, 1].
    for i in range(5):
        x = data.values[i, :, 0] - data.values[i, :, 0].mean()
        spectrum = torch.fft.rfft(x).abs()
        spectrum[:3] = 0  # the quadratic trend's low frequencies
        assert int(spectrum.argmax()) in (10 + 4 * i - 1, 10 + 4 * i, 10 + 4 * i + 1)
    assert torch.equal(data.times[0], t)


def test_sinusoid_long_switches_to_a_fifth_of_the_frequency():
    data = sinusoid_classification(1, 1000, n_classes=3, long=True, seed=0, dtype=torch.float64)
    c = 2
    late = data.values[c, LONG_SWITCH + 1:, 0]
    spectrum = torch.fft.rfft(late - late.mean()).abs()
    cycles = int(spectrum[1:].argmax()) + 1  # over the late part's duration
    late_duration = (1000 - LONG_SWITCH - 1) / 999
    assert abs(cycles / late_duration - (10 + 4 * c) / 5) < 1.5


def test_sinusoid_bad_arguments():
    with pytest.raises(ValueError, match="length"):
        sinusoid_classification(1, 200, long=True)
    with pytest.raises(ValueError, match="n_per_class"):
        sinusoid_classification(0, 200)
    # Each of these raised torch's own TypeError or RuntimeError, or (an int dtype) truncated the data silently.
    for kwargs, match in ((dict(n_per_class=2.5), "n_per_class must be an int"), (dict(length=50.5), "length"),
                          (dict(seed=None), "seed must be an int >= 0"), (dict(dtype=torch.int64), "dtype")):
        with pytest.raises(ValueError, match=match):
            sinusoid_classification(**{"n_per_class": 2, "length": 50, **kwargs})
    assert sinusoid_classification(np.int64(2), 50, n_classes=3).values.shape == (6, 50, 1)  # numpy ints are ints


def test_drop_mask_rate_and_minimum():
    mask = torch.ones(200, 100, dtype=torch.bool)
    mask[:, 90:] = False
    kept = drop_mask(mask, 0.7, torch.Generator().manual_seed(0))
    assert not bool((kept & ~mask).any())
    assert abs(kept.sum() / mask.sum() - 0.3) < 0.02
    tiny = drop_mask(torch.ones(50, 3, dtype=torch.bool), 0.95, torch.Generator().manual_seed(1))
    assert int(tiny.sum(1).min()) == 2
    with pytest.raises(ValueError, match="drop rate"):
        drop_mask(mask, 1.0)


def test_uea_loader_keeps_unequal_lengths():
    train, classes = load_uea("JapaneseVowels", "train")
    assert train.values.shape[2] == 12 and len(classes) == 9
    lengths = train.mask.sum(1)
    assert int(lengths.min()) < int(lengths.max()) == train.values.shape[1]
    assert torch.isnan(train.values[~train.mask]).all() and torch.isfinite(train.values[train.mask]).all()
    with pytest.raises(ValueError, match="could not load"):
        load_uea("NoSuchSet", "train")


def test_to_irregular_rejects_mixed_channels():
    with pytest.raises(ValueError, match="same number of channels"):
        import numpy as np
        to_irregular([np.zeros((2, 5)), np.zeros((3, 5))], torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------------------------- baselines
def irregular(n=4, length=30, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(torch.rand(n, length, generator=g) + 0.1, dim=1)
    values = torch.randn(n, length, channels, generator=g)
    mask = torch.rand(n, length, generator=g) > 0.4
    mask[:, :2] = True
    return values.masked_fill(~mask[..., None], float("nan")), times, mask


def test_pack_valid_moves_valid_points_first_and_normalises_time():
    values, times, mask = irregular()
    x, tau, lengths = pack_valid(values, times, mask)
    for b in range(values.shape[0]):
        n = int(mask[b].sum())
        assert int(lengths[b]) == n
        torch.testing.assert_close(x[b, :n], values[b][mask[b]])
        t = times[b][mask[b]]
        torch.testing.assert_close(tau[b, :n], (t - t[0]) / (t[-1] - t[0]))
        assert torch.all(x[b, n:] == 0)


BASELINES = {
    "transformer": lambda: TransformerBaseline(2, 3, d_model=16, n_heads=2, n_layers=1, dropout=0.0),
    "gru": lambda: GRUBaseline(2, 3, hidden_size=8),
    "ncde": lambda: NeuralCDEBaseline(2, 3, hidden_size=8, width=16),
    "lmu": lambda: LMUBaseline(2, 3, order=8, memory_d=2, hidden_size=8, theta=20.0, time_aware=False),
    "lmu-feedforward": lambda: LMUBaseline(2, 3, order=8, memory_d=2, hidden_size=8, theta=20.0, time_aware=False,
                                           hidden="feedforward"),
    "lmu-dt": lambda: LMUBaseline(2, 3, order=8, memory_d=2, hidden_size=8, theta=1.0, time_aware=True),
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_ignore_dropped_points_and_padding(name):
    torch.manual_seed(0)
    model = BASELINES[name]().eval()
    values, times, mask = irregular()
    out = model(values, times, mask)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    scrambled = values.clone()
    scrambled[~mask] = 7.0
    padded = (torch.cat([scrambled, torch.zeros(4, 3, 2)], 1), torch.cat([times, torch.zeros(4, 3)], 1),
              torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1))
    torch.testing.assert_close(model(*padded), out, rtol=1e-5, atol=1e-6)
    # One series alone gives what it gives in the batch.
    torch.testing.assert_close(model(values[1:2], times[1:2], mask[1:2]), out[1:2], rtol=1e-5, atol=1e-6)


def test_fit_exponent_recovers_a_power_law():
    lengths = [100, 300, 1000, 3000]
    assert abs(fit_exponent(lengths, [2e-6 * n ** 1.7 for n in lengths]) - 1.7) < 1e-9
    assert fit_exponent([100], [1.0]) is None


# ----------------------------------------------------------------------------------------- experiments
def _run(args, tmp_path):
    result = runner.invoke(app, ["run", *args, "--quiet", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return result


def _metrics(tmp_path, experiment):
    (run,) = (tmp_path / experiment).iterdir()
    return json.loads((run / "metrics.json").read_text()), run


def test_sinusoid_quick_with_redrawn_drops(tmp_path):
    _run(["sinusoid", "--quick", "--drop", "0.5", "--drop-mode", "redraw", "--models", "RT,GRU,LMU"], tmp_path)
    metrics, run = _metrics(tmp_path, "sinusoid")
    assert metrics["experiment"] == "sinusoid" and (run / "accuracy.png").is_file()
    records = metrics["results"]
    assert [(r["model"], r["seed"]) for r in records] == [(m, s) for s in (0, 1) for m in ("RT", "GRU", "LMU")]
    assert all(0.0 <= r["value"] <= 1.0 and r["epochs"] == 2 and r["seconds_per_epoch"] > 0 for r in records)
    assert all(r["peak_step_memory_mb"] > 0 for r in records)
    assert records[0]["signatures"] == "online"  # redrawn points: signatures inside the model
    summary = metrics["config"]["summary"]
    assert set(summary) == {"RT", "GRU", "LMU"} and summary["RT"]["n_seeds"] == 2


def test_sinusoid_long_and_uea_quick(tmp_path):
    _run(["sinusoid-long", "--quick", "--drop", "0.3", "--models", "RT,Transformer,NCDE", "--seeds", "0"], tmp_path)
    metrics, _ = _metrics(tmp_path, "sinusoid-long")
    rt = metrics["results"][0]
    assert rt["signatures"] == "offline" and rt["signature_seconds"] >= 0 and rt["length"] == 300
    _run(["uea", "--quick", "--dataset", "JapaneseVowels", "--models", "RT,LMU"], tmp_path)
    metrics, _ = _metrics(tmp_path, "uea")
    assert metrics["config"]["dataset"] == "JapaneseVowels" and metrics["results"][0]["channels"] == 12
    assert metrics["config"]["signature"]["univariate"] is True


def test_uea_unknown_dataset_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["run", "uea", "--quick", "--dataset", "NoSuchSet", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "NoSuchSet" in result.output


def test_rt_scaling_quick(tmp_path):
    _run(["rt-scaling", "--quick"], tmp_path)
    metrics, run = _metrics(tmp_path, "rt-scaling")
    assert (run / "scaling.png").is_file()
    assert {r["length"] for r in metrics["results"]} == {50, 100, 200}
    assert set(metrics["config"]["exponents"]) == {"RT", "RT-offline", "Transformer"}
    assert all(math.isfinite(r["value"]) for r in metrics["results"])


def test_pack_valid_keeps_gaps_of_epoch_timestamps():
    values, times, mask = irregular()
    _, tau, _ = pack_valid(values.double(), times.double(), mask)
    _, tau32, _ = pack_valid(values, times.double() + 1.7e9, mask)  # float32 values, float64 epoch seconds
    assert tau32.dtype == torch.float32
    torch.testing.assert_close(tau32.double(), tau, rtol=0, atol=1e-6)
