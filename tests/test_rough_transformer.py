"""The Rough Transformer: shapes, online = offline, masking, input errors, and that it learns."""

import pytest
import torch

from contime import RoughTransformer, SignatureConfig
from contime.rough_transformer import TokenEncoder, time_encoding
from contime.signatures import precompute_features


def batch(n=4, length=40, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(torch.rand(n, length, generator=g) + 0.1, dim=1)
    values = torch.sin(times[..., None] * torch.arange(1, channels + 1)) + 0.1 * torch.randn(n, length, channels,
                                                                                             generator=g)
    mask = torch.rand(n, length, generator=g) > 0.3
    mask[:, 0] = True
    return values, times, mask


def model(**kw):
    torch.manual_seed(0)
    return RoughTransformer(2, 3, signature=SignatureConfig(depth=2, n_windows=6), d_model=16, n_heads=2,
                            n_layers=1, dropout=0.0, **kw).eval()


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_output_shape_and_gradient(pooling):
    values, times, mask = batch()
    net = model(pooling=pooling)
    values.requires_grad_()
    out = net(values, times, mask)
    assert out.shape == (4, 3)
    out.sum().backward()
    assert values.grad is not None and torch.isfinite(values.grad).all()
    assert torch.count_nonzero(values.grad[~mask]) == 0  # dropped points play no part


def test_online_equals_offline():
    values, times, mask = batch()
    net = model()
    features, token_times = precompute_features(values, times, mask, net.signature, batch_size=3)
    torch.testing.assert_close(net.forward_features(features, token_times), net(values, times, mask),
                               rtol=0, atol=0)


def test_padding_with_masked_points_changes_nothing():
    values, times, mask = batch()
    net = model()
    pad_values = torch.cat([values, torch.full((4, 5, 2), float("nan"))], dim=1)
    pad_times = torch.cat([times, torch.zeros(4, 5)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(net(pad_values, pad_times, pad_mask), net(values, times, mask), rtol=1e-6,
                               atol=1e-6)


def test_same_signal_at_another_sampling_rate_gives_close_features():
    # The path is piecewise linear through the samples, so finer sampling of a smooth signal converges.
    config = SignatureConfig(depth=3, n_windows=8)
    feats = []
    for length in (2000, 4000):
        t = torch.linspace(0, 1, length)[None]
        x = torch.stack([torch.sin(6 * t), torch.cos(3 * t)], dim=-1)
        feats.append(RoughTransformer(2, 1, signature=config).features(x, t)[0])
    assert (feats[0] - feats[1]).norm() / feats[1].norm() < 1e-5


def test_mean_pooling_ignores_masked_tokens():
    torch.manual_seed(0)
    enc = TokenEncoder(5, 2, d_model=8, n_heads=2, n_layers=1, dropout=0.0).eval()
    tokens, token_times = torch.randn(2, 6, 5), torch.linspace(0, 1, 6).expand(2, 6)
    token_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    full = enc(tokens[1:, :4], token_times[1:, :4])
    masked = enc(tokens, token_times, token_mask)[1:]
    torch.testing.assert_close(masked, full, rtol=1e-5, atol=1e-6)


def test_time_encoding_depends_on_time_not_index():
    a = time_encoding(torch.tensor([[0.25, 0.5]]), 8)
    b = time_encoding(torch.tensor([[0.1, 0.25, 0.3, 0.5]]), 8)
    torch.testing.assert_close(a[0, 0], b[0, 1])
    torch.testing.assert_close(a[0, 1], b[0, 3])


@pytest.mark.parametrize("case, match", [
    ("not-increasing", "strictly increasing"),
    ("nan", "NaN or Inf"),
    ("times-shape", "times must have shape"),
    ("channels", "in_channels=2"),
    ("empty", "at least one valid point"),
    ("features-shape", "features must have shape"),
])
def test_bad_input_is_refused(case, match):
    values, times, mask = batch()
    net = model()
    with pytest.raises((ValueError, TypeError), match=match):
        if case == "not-increasing":
            times[2, 5:7] = times[2, 5]
            mask[2, 5:7] = True
            net(values, times, mask)
        elif case == "nan":
            values[1, 0, 1] = float("nan")
            net(values, times, mask)
        elif case == "times-shape":
            net(values, times[:, 1:], mask)
        elif case == "channels":
            net(values[..., :1], times, mask)
        elif case == "empty":
            mask[3] = False
            net(values, times, mask)
        else:
            net.forward_features(torch.zeros(4, 5, 3), torch.zeros(4, 5))


def test_constructor_errors():
    with pytest.raises(ValueError, match="task"):
        RoughTransformer(2, 3, task="ranking")
    with pytest.raises(ValueError, match="pooling"):
        RoughTransformer(2, 3, pooling="max")
    with pytest.raises(ValueError, match="divisible"):
        RoughTransformer(2, 3, d_model=10, n_heads=4)
    with pytest.raises(TypeError, match="SignatureConfig"):
        RoughTransformer(2, 3, signature={"depth": 2})
    for width in (0, -5):  # 0 used to become 4 * d_model without a word
        with pytest.raises(ValueError, match="dim_feedforward must be None"):
            RoughTransformer(2, 3, dim_feedforward=width)


def test_inputs_of_another_dtype_or_with_nan_are_refused():
    values, times, mask = batch()
    net = model()
    with pytest.raises(TypeError, match="values has dtype float64, but the model's weights are float32"):
        net(values.double(), times, mask)
    features, token_times = net.features(values, times, mask)
    with pytest.raises(TypeError, match="features has dtype float64"):
        net.forward_features(features.double(), token_times)
    with pytest.raises(TypeError, match="token_times must be a floating-point tensor"):
        net.forward_features(features, token_times.long())
    features[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        net.forward_features(features, token_times)
    assert net(values, times.double(), mask).dtype == torch.float32  # float64 times (epoch seconds) are fine


def test_precompute_refuses_an_empty_batch_and_a_bad_batch_size():
    values, times, mask = batch()
    with pytest.raises(ValueError, match="at least one series"):
        precompute_features(values[:0], times[:0], mask[:0])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        precompute_features(values, times, mask, batch_size=0)


def test_learns_to_tell_two_frequencies_apart():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n, length = 64, 60
    labels = torch.arange(n) % 2
    times = torch.sort(torch.rand(n, length, generator=g), dim=1).values
    phase = 2 * torch.pi * torch.rand(n, 1, generator=g)
    values = torch.sin(2 * torch.pi * (2 + 3 * labels[:, None]) * times + phase)[..., None]
    net = RoughTransformer(1, 2, signature=SignatureConfig(depth=3, n_windows=8), d_model=16, n_heads=2,
                           n_layers=1, dropout=0.0)
    features, token_times = precompute_features(values, times, None, net.signature)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net.forward_features(features, token_times), labels)
        loss.backward()
        opt.step()
    accuracy = (net.forward_features(features, token_times).argmax(1) == labels).float().mean()
    assert accuracy == 1.0, accuracy
