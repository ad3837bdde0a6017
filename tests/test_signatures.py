"""Multi-view signatures against a naive Chen-product reference written here, in float64."""

import math

import numpy as np
import pytest
import torch

from contime.signatures import SignatureConfig, precompute_features, signature_features

F64 = torch.float64


# ------------------------------------------------------------------------------ naive tensor-algebra reference
def _segment_signature(delta: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """exp(delta) truncated: level k is delta^{(x)k} / k!, as a list of tensors of shape (d,) * k."""
    levels, term = [], torch.ones((), dtype=F64)
    for k in range(1, depth + 1):
        term = torch.tensordot(term, delta, dims=0) / k if k > 1 else delta.clone()
        levels.append(term)
    return levels


def _chen(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """(1, a) (x) (1, b) truncated at the same depth."""
    out = []
    for k in range(1, len(a) + 1):
        level = a[k - 1] + b[k - 1]
        for i in range(1, k):
            level = level + torch.tensordot(a[i - 1], b[k - i - 1], dims=0)
        out.append(level)
    return out


def naive_signature(points: torch.Tensor, depth: int) -> torch.Tensor:
    """Signature of the piecewise-linear path through ``points`` (P, d), flattened level by level."""
    d = points.shape[1]
    sig = [torch.zeros((d,) * k, dtype=F64) for k in range(1, depth + 1)]
    for i in range(1, points.shape[0]):
        sig = _chen(sig, _segment_signature(points[i] - points[i - 1], depth))
    return torch.cat([level.reshape(-1) for level in sig])


def naive_path(t: torch.Tensor, x: torch.Tensor, a: float, b: float, start: float, span: float,
               include_time: bool = True) -> torch.Tensor:
    """The path restricted to [a, b]: interpolated end points and the samples strictly inside, (P, 1 + C)."""
    def value(at):
        return torch.tensor([float(np.interp(at, t.numpy(), x[:, c].numpy())) for c in range(x.shape[1])],
                            dtype=F64)

    inner = (t > a) & (t < b)
    times = torch.cat([torch.tensor([a], dtype=F64), t[inner], torch.tensor([b], dtype=F64)])
    xs = torch.stack([value(a), *x[inner], value(b)])
    if not include_time:
        return xs
    return torch.cat([((times - start) / span)[:, None], xs], dim=1)


def naive_features(t, x, config: SignatureConfig) -> torch.Tensor:
    """Features (K, F) of one series (t (L,), x (L, C)), every view signed directly from its own path."""
    start, end = (float(t[0]), float(t[-1])) if config.time_range is None else config.time_range
    span = end - start
    grid = [start + span * k / config.n_windows for k in range(config.n_windows + 1)]
    grid[-1] = end
    tokens = []
    for k in range(1, config.n_windows + 1):
        windows = {"global": (grid[0], grid[k]), "local": (grid[k - 1], grid[k])}
        spans = [windows[v] for v in config.views] + [(grid[max(k - w, 0)], grid[k]) for w in config.local_widths]
        parts = []
        for a, b in spans:
            path = naive_path(t, x, a, b, start, span, config.include_time)
            if config.basepoint and a == grid[0]:  # the path opens with a jump from the origin
                origin = path[:1].clone()
                origin[:, int(config.include_time):] = 0.0
                path = torch.cat([origin, path])
            if config.univariate:
                lead = int(config.include_time)
                parts += [naive_signature(torch.cat([path[:, :lead], path[:, lead + c:lead + c + 1]], 1),
                                          config.depth) for c in range(x.shape[1])]
            else:
                parts.append(naive_signature(path, config.depth))
        tokens.append(torch.cat(parts))
    return torch.stack(tokens)


def irregular_batch(batch=3, length=17, channels=2, seed=0, drop=0.3):
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(torch.rand(batch, length, generator=g, dtype=F64) + 0.05, dim=1)
    values = torch.randn(batch, length, channels, generator=g, dtype=F64)
    mask = torch.rand(batch, length, generator=g, dtype=F64) > drop
    mask[:, 0] = True
    mask[0, -3:] = False  # a series that ends early, padded
    values = values.masked_fill(~mask[..., None], float("nan"))  # NaN outside the mask is allowed
    return values, times, mask


CONFIGS = {
    "global+local": SignatureConfig(depth=3, n_windows=5),
    "local-only": SignatureConfig(depth=2, n_windows=7, views=("local",)),
    "global-only-depth4": SignatureConfig(depth=4, n_windows=3, views=("global",)),
    "widths": SignatureConfig(depth=2, n_windows=6, local_widths=(2, 4)),
    "univariate": SignatureConfig(depth=3, n_windows=4, univariate=True),
    "no-time": SignatureConfig(depth=3, n_windows=4, include_time=False),
    "time-range": SignatureConfig(depth=2, n_windows=4, time_range=(0.0, 20.0)),
    "many-windows": SignatureConfig(depth=2, n_windows=40),
    "basepoint": SignatureConfig(depth=3, n_windows=4, local_widths=(2,), basepoint=True),
    "basepoint-univariate": SignatureConfig(depth=2, n_windows=3, univariate=True, basepoint=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_features_equal_naive_chen_reference(name):
    config = CONFIGS[name]
    values, times, mask = irregular_batch()
    if config.time_range is not None:
        times = times / times.max() * 19.0
    features, token_times = signature_features(values, times, mask, config)
    assert features.shape == (3, config.n_windows, config.feature_size(2))
    for b in range(3):
        t, x = times[b][mask[b]], values[b][mask[b]]
        expected = naive_features(t, x, config)
        torch.testing.assert_close(features[b], expected, rtol=1e-10, atol=1e-12)
    assert torch.all(token_times[:, -1] <= 1.0 + 1e-12) and torch.all(token_times[:, 1:] > token_times[:, :-1])


def test_global_view_equals_direct_signature_of_prefix():
    values, times, mask = irregular_batch(batch=2, length=30, seed=3)
    config = SignatureConfig(depth=3, n_windows=8, views=("global",))
    features, _ = signature_features(values, times, mask, config)
    for b in range(2):
        t, x = times[b][mask[b]], values[b][mask[b]]
        end = float(t[-1])
        start = float(t[0])
        cut = start + (end - start) * 5 / 8
        path = naive_path(t, x, start, cut, start, end - start)
        torch.testing.assert_close(features[b, 4], naive_signature(path, 3), rtol=1e-10, atol=1e-12)


def test_inserting_points_on_a_straight_segment_changes_nothing():
    values, times, mask = irregular_batch(batch=2, length=12, seed=5, drop=0.0)
    values, mask = values.nan_to_num(0.0), torch.ones_like(mask)
    config = SignatureConfig(depth=3, n_windows=4, views=("global", "local"), local_widths=(3,))
    before, _ = signature_features(values, times, mask, config)
    # Insert the midpoint (in time and value) of every segment.
    mid_t = (times[:, 1:] + times[:, :-1]) / 2
    mid_x = (values[:, 1:] + values[:, :-1]) / 2
    t2 = torch.stack([times[:, :-1], mid_t], dim=2).reshape(2, -1)
    x2 = torch.stack([values[:, :-1], mid_x], dim=2).reshape(2, -1, values.shape[2])
    t2 = torch.cat([t2, times[:, -1:]], dim=1)
    x2 = torch.cat([x2, values[:, -1:]], dim=1)
    after, _ = signature_features(x2, t2, None, config)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-12)


def test_affine_change_of_time_units_changes_nothing():
    values, times, mask = irregular_batch(seed=7)
    config = SignatureConfig(depth=3, n_windows=5)
    a, _ = signature_features(values, times, mask, config)
    b, _ = signature_features(values, 1000.0 * times + 37.0, mask, config)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_without_time_channel_any_reparametrisation_changes_nothing():
    values, times, mask = irregular_batch(seed=8, drop=0.0)
    config = SignatureConfig(depth=3, n_windows=1, views=("global",), include_time=False)
    a, _ = signature_features(values, times, mask, config)
    warped = torch.exp(times / times.max()) ** 3  # increasing, non-linear
    b, _ = signature_features(values, warped, mask, config)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_log_signature_equals_log_of_signature_levels():
    values, times, mask = irregular_batch(batch=2, seed=9)
    config = SignatureConfig(depth=2, n_windows=3, log_signature=True, views=("local",))
    features, _ = signature_features(values, times, mask, config)
    signature, _ = signature_features(values, times, mask, SignatureConfig(depth=2, n_windows=3, views=("local",)))
    d = 3
    # Depth 2: log = (S1, S2 - S1 (x) S1 / 2); the Lyndon coordinates are S1 and the antisymmetric part [i<j].
    s1, s2 = signature[..., :d], signature[..., d:].reshape(*signature.shape[:-1], d, d)
    log2 = s2 - s1[..., :, None] * s1[..., None, :] / 2
    rows, cols = torch.triu_indices(d, d, offset=1)
    expected = torch.cat([s1, log2[..., rows, cols]], dim=-1)
    assert features.shape[-1] == config.feature_size(2) == expected.shape[-1]
    torch.testing.assert_close(features, expected, rtol=1e-10, atol=1e-12)


def test_univariate_size_grows_linearly_with_channels():
    sizes = [SignatureConfig(depth=3, univariate=True).feature_size(c) for c in (1, 2, 4, 8)]
    assert sizes == [sizes[0] * c for c in (1, 2, 4, 8)]
    multi = [SignatureConfig(depth=3).feature_size(c) for c in (1, 2, 4, 8)]
    assert multi[-1] > 8 * multi[0]


def test_gradcheck_through_values():
    values, times, mask = irregular_batch(batch=2, length=8, channels=2, seed=11, drop=0.2)
    values = torch.where(mask[..., None], values, torch.zeros_like(values)).requires_grad_()
    config = SignatureConfig(depth=3, n_windows=3, local_widths=(2,))
    assert torch.autograd.gradcheck(lambda v: signature_features(v, times, mask, config)[0], (values,))
    config = SignatureConfig(depth=2, n_windows=3, univariate=True, log_signature=True)
    assert torch.autograd.gradcheck(lambda v: signature_features(v, times, mask, config)[0], (values,))


def test_float32_close_to_float64():
    values, times, mask = irregular_batch(seed=12)
    config = SignatureConfig(depth=3, n_windows=6)
    ref, _ = signature_features(values, times, mask, config)
    got, _ = signature_features(values.float(), times.float(), mask, config)
    assert got.dtype == torch.float32
    err = (got.double() - ref).norm() / ref.norm()
    assert err < 1e-5, err


def test_precompute_in_chunks_equals_one_call():
    values, times, mask = irregular_batch(batch=5, seed=13)
    config = SignatureConfig(depth=2, n_windows=4)
    one, t_one = signature_features(values, times, mask, config)
    chunked, t_chunked = precompute_features(values, times, mask, config, batch_size=2)
    torch.testing.assert_close(chunked, one, rtol=0, atol=0)
    torch.testing.assert_close(t_chunked, t_one, rtol=0, atol=0)


def test_single_point_series_gives_zero_signature():
    values = torch.tensor([[[1.0], [float("nan")]]], dtype=F64)
    times = torch.tensor([[0.0, 1.0]], dtype=F64)
    mask = torch.tensor([[True, False]])
    features, _ = signature_features(values, times, mask, SignatureConfig(depth=2, n_windows=3))
    assert torch.count_nonzero(features) == 0


@pytest.mark.parametrize("case, match", [
    ("decreasing", "strictly increasing"),
    ("nan-valid", "NaN or Inf"),
    ("shape", "times must have shape"),
    ("empty", "at least one valid point"),
    ("no-steps", "must not be empty"),
    ("ndim", "values must be 3-D"),
    ("mask-dtype", "mask must be a bool"),
    ("outside-range", "inside time_range"),
])
def test_bad_input_is_refused_with_a_clear_error(case, match):
    values, times, mask = irregular_batch(batch=2, length=6, seed=1, drop=0.0)
    config = SignatureConfig(depth=2, n_windows=2)
    if case == "decreasing":
        times[1, 3] = times[1, 2]
    elif case == "nan-valid":
        values[0, 2, 0] = float("nan")
    elif case == "shape":
        times = times[:, :-1]
    elif case == "empty":
        mask[1] = False
    elif case == "no-steps":
        values, times, mask = values[:, :0], times[:, :0], mask[:, :0]
    elif case == "ndim":
        values = values[0]
    elif case == "mask-dtype":
        mask = mask.float()
    elif case == "outside-range":
        config = SignatureConfig(depth=2, n_windows=2, time_range=(0.0, 1.0))
    with pytest.raises((ValueError, TypeError), match=match):
        signature_features(values, times, mask, config)


def test_config_validation():
    with pytest.raises(ValueError, match="views"):
        SignatureConfig(views=("global", "wide"))
    with pytest.raises(ValueError, match="depth"):
        SignatureConfig(depth=0)
    with pytest.raises(ValueError, match="local_widths"):
        SignatureConfig(local_widths=(1,))
    with pytest.raises(ValueError, match="time_range"):
        SignatureConfig(time_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        SignatureConfig(time_range=(0.0, float("inf")))
    with pytest.raises(ValueError, match=r"time_range must be \(start, end\), got \(0, 1, 2\)"):
        SignatureConfig(time_range=(0, 1, 2))
    with pytest.raises(TypeError, match=r"local_widths must be a tuple of ints, got 4; e.g. local_widths=\(4,\)"):
        SignatureConfig(local_widths=4)
    values, times, mask = irregular_batch(seed=3)
    with pytest.raises(TypeError, match="config must be a SignatureConfig, got dict"):
        signature_features(values, times, mask, config={})


def test_masked_points_do_not_matter():
    values, times, mask = irregular_batch(seed=14)
    config = SignatureConfig(depth=3, n_windows=5)
    a, _ = signature_features(values, times, mask, config)
    scrambled = values.clone()
    scrambled[~mask] = 123.0
    times2 = times.clone()
    times2[~mask] = -5.0  # masked times are not looked at either
    b, _ = signature_features(scrambled, times2, mask, config)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert math.isfinite(float(a.sum()))


def test_epoch_timestamps_with_float32_values_keep_their_gaps():
    # Unix-epoch seconds (~1.7e9) in float64 with float32 values: the gaps must survive the cast.
    values, times, mask = irregular_batch(batch=2, length=30, seed=15)
    config = SignatureConfig(depth=3, n_windows=5)
    reference, _ = signature_features(values, times, mask, config)
    got, _ = signature_features(values.float(), times + 1.7e9, mask, config)
    assert (got.double() - reference).norm() / reference.norm() < 1e-5
    fixed = SignatureConfig(depth=2, n_windows=4, time_range=(1.7e9, 1.7e9 + 40.0))
    a, _ = signature_features(values, times, mask, SignatureConfig(depth=2, n_windows=4, time_range=(0.0, 40.0)))
    b, _ = signature_features(values.float(), times + 1.7e9, mask, fixed)
    assert (b.double() - a).norm() / a.norm() < 1e-5
    # A gap that even relative times cannot hold in float32 (1e-3 s after 1e8 s) is refused, not merged.
    with pytest.raises(ValueError, match="too close together"):
        signature_features(torch.zeros(1, 3, 1), torch.tensor([[0.0, 1e8, 1e8 + 1e-3]], dtype=F64), None, config)
