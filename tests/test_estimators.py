"""contime.estimators: aeon's estimator checks, learning toy problems, unequal lengths, errors, seeding."""

import numpy as np
import pytest
import torch
from aeon.testing.estimator_checking import parametrize_with_checks

from contime.estimators import LMUClassifier, LMURegressor, RoughTransformerClassifier, RoughTransformerRegressor

CLASSIFIERS = [LMUClassifier, RoughTransformerClassifier]
REGRESSORS = [LMURegressor, RoughTransformerRegressor]

# Small networks and short training, so that each fit takes well under a second.
SMALL = {
    LMUClassifier: {"order": 8, "hidden_size": 16},
    LMURegressor: {"order": 8, "hidden_size": 16},
    RoughTransformerClassifier: {"depth": 2, "n_windows": 8, "d_model": 16, "n_heads": 2, "n_layers": 1},
    RoughTransformerRegressor: {"depth": 2, "n_windows": 8, "d_model": 16, "n_heads": 2, "n_layers": 1},
}


def small(cls, **kw):
    return cls(**{**SMALL[cls], "epochs": 30, "batch_size": 16, "lr": 3e-3, "random_state": 0, **kw})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On our shared 2-core machine, torch's second thread made a Linear(64, 256) on 320 rows 50x slower
    # (10 ms against 0.2 ms): these networks are far too small to gain from threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frequency_task(n, length=24, seed=0):
    """Two classes of 2-channel series: a sine of 1 or 3 cycles (random phase) in channel 0, noise in both."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n)
    t = np.linspace(0, 2 * np.pi, length)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    X = 0.3 * rng.randn(n, 2, length)
    X[:, 0] += np.sin(np.where(y[:, None] == 1, 3.0, 1.0) * t + phase)
    return X, np.array(["slow", "fast"])[y]


def slope_task(n, length=20, seed=0):
    """Univariate noisy lines a * t / length; the target is the slope a, uniform in [-1, 1]."""
    rng = np.random.RandomState(seed)
    a = rng.uniform(-1, 1, n)
    X = a[:, None, None] * np.arange(length) / length + 0.05 * rng.randn(n, 1, length)
    return X, a


# --------------------------------------------------------------------------------------------- aeon's checks
@parametrize_with_checks([LMUClassifier, LMURegressor, RoughTransformerClassifier, RoughTransformerRegressor])
def test_aeon_estimator_checks(check):
    check()


# ------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("cls", CLASSIFIERS)
def test_classifier_learns_toy_problem(cls):
    X, y = frequency_task(80)
    X_test, y_test = frequency_task(60, seed=1)
    clf = small(cls).fit(X, y)
    assert clf.score(X_test, y_test) >= 0.85  # chance is 0.5
    proba = clf.predict_proba(X_test)
    assert proba.shape == (60, 2) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert set(clf.predict(X_test)) <= {"slow", "fast"}
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


@pytest.mark.parametrize("cls", REGRESSORS)
def test_regressor_learns_slope(cls):
    X, y = slope_task(80)
    X_test, y_test = slope_task(40, seed=1)
    reg = small(cls).fit(X, y)
    prediction = reg.predict(X_test)
    assert prediction.shape == (40,) and prediction.dtype == np.float64
    assert reg.score(X_test, y_test) >= 0.8  # R^2


# ----------------------------------------------------------------------------------------- unequal lengths
@pytest.mark.parametrize("cls", CLASSIFIERS + REGRESSORS)
def test_unequal_length_lists(cls):
    X, y = frequency_task(30) if cls in CLASSIFIERS else slope_task(30)
    lengths = np.random.RandomState(0).randint(8, X.shape[2] + 1, len(X))
    X_list = [x[:, :n] for x, n in zip(X, lengths)]
    est = small(cls, epochs=3).fit(X_list, y)
    method = est.predict_proba if cls in CLASSIFIERS else est.predict
    together = method(X_list)
    assert len(together) == 30
    # Padding plays no part: a short series predicted alone or beside the longest one gives the same output.
    short, longest = int(np.argmin(lengths)), int(np.argmax(lengths))
    alone = method([X_list[short]])
    beside = method([X_list[short], X_list[longest]])
    np.testing.assert_allclose(alone[0], beside[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[0], together[short], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- missing values
def test_rough_transformer_interpolates_a_missing_channel_value():
    # Channel 0 is linear in time, so its linear interpolation at the NaN is exact: nothing may change.
    X, y = frequency_task(20)
    X[:, 0] = np.linspace(-1, 1, X.shape[2])
    clf = small(RoughTransformerClassifier, epochs=2).fit(X, y)
    holed = X.copy()
    holed[:, 0, 5] = np.nan
    np.testing.assert_allclose(clf.predict_proba(holed), clf.predict_proba(X), rtol=1e-5, atol=1e-6)
    holed[:, :, 7] = np.nan  # a whole step missing: dropped from the path, still finite output
    assert np.all(np.isfinite(clf.predict_proba(holed)))


def test_lmu_rejects_missing_values():
    X, y = frequency_task(10)
    X[0, 0, 3] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        small(LMUClassifier, epochs=1).fit(X, y)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("cls", CLASSIFIERS + REGRESSORS)
def test_wrong_ndim_is_a_clear_error(cls):
    y = np.array([0, 1, 0, 1]) if cls in CLASSIFIERS else np.arange(4.0)
    with pytest.raises(TypeError, match="must be 2D or 3D but found 4"):
        small(cls).fit(np.zeros((4, 1, 10, 2)), y)
    est = small(cls, epochs=1).fit(np.random.RandomState(0).randn(4, 1, 10), y)
    with pytest.raises(TypeError, match="must be 2D or 3D but found 1"):
        est.predict(np.zeros(10))
    with pytest.raises(ValueError, match="number of channels"):
        est.predict(np.zeros((2, 3, 10)))


def test_bad_hyperparameters_are_reported_in_fit():
    X, y = frequency_task(8)
    with pytest.raises(ValueError, match="hidden_cell"):
        small(LMUClassifier, hidden_cell="transformer").fit(X, y)
    with pytest.raises(ValueError, match="epochs"):
        small(RoughTransformerClassifier, epochs=0).fit(X, y)
    with pytest.raises(ValueError, match="n_heads"):
        small(RoughTransformerClassifier, d_model=10, n_heads=4).fit(X, y)
    with pytest.raises(ValueError, match="device must name a torch device such as 'cpu' or 'cuda', got 'gpu0'"):
        small(LMUClassifier, device="gpu0").fit(X, y)
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1, got 0"):  # was an MKL FFT error
        small(LMUClassifier, hidden_size=0).fit(X, y)
    with pytest.raises(TypeError, match=r"views must be a tuple, got 'global'; e.g. views=\('global',\)"):
        small(RoughTransformerClassifier, views="global").fit(X, y)


@pytest.mark.parametrize("cls", CLASSIFIERS + REGRESSORS)
def test_infinite_values_are_an_error_not_missing(cls):
    """The Rough Transformers took +-Inf for missing values (NaN) with only a numpy warning."""
    X, y = frequency_task(8)
    y = y if cls in CLASSIFIERS else np.arange(len(y), dtype=float)
    X[5, 0, 3] = -np.inf
    with pytest.raises(ValueError, match=r"X holds infinite values \(series 5\)"):
        small(cls, epochs=1).fit(X, y)


# --------------------------------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("cls", CLASSIFIERS + REGRESSORS)
def test_same_random_state_same_predictions(cls):
    X, y = frequency_task(24) if cls in CLASSIFIERS else slope_task(24)
    method = "predict_proba" if cls in CLASSIFIERS else "predict"
    first = getattr(small(cls, epochs=3, dropout=0.2, random_state=7).fit(X, y), method)(X)
    torch.manual_seed(123)  # the global torch state plays no part
    second = getattr(small(cls, epochs=3, dropout=0.2, random_state=7).fit(X, y), method)(X)
    other = getattr(small(cls, epochs=3, dropout=0.2, random_state=8).fit(X, y), method)(X)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_fit_leaves_the_global_torch_random_state_alone():
    X, y = frequency_task(8)
    before = torch.get_rng_state()
    small(LMUClassifier, epochs=1).fit(X, y)
    assert torch.equal(torch.get_rng_state(), before)
