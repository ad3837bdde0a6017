"""Time-series estimators on contime's models, following aeon's (and so scikit-learn's) conventions.

    from contime.estimators import LMUClassifier
    clf = LMUClassifier(random_state=0).fit(X_train, y_train)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)

X is what aeon takes: a ``(n_cases, n_channels, n_timepoints)`` array, a ``(n_cases, n_timepoints)`` array
(univariate), or a list of ``(n_channels, n_timepoints_i)`` arrays for series of unequal length. aeon's
``BaseClassifier`` / ``BaseRegressor`` check and convert it, store ``classes_``, and raise clear errors for
unsupported input; each estimator here only implements ``_fit``, ``_predict`` and (classifiers)
``_predict_proba``.

What every estimator does:
    1. pads the series to ``(n_cases, max_length, n_channels)`` and keeps their lengths;
    2. standardises each channel with the mean and standard deviation seen in fit;
    3. trains its network with Adam on minibatches (cross-entropy for classes, MSE on a standardised target
       for regression), seeded from ``random_state``: on the CPU the same seed gives the same predictions;
    4. predicts in batches, in eval mode, without gradients.

The models:
    LMU*            an LMU layer (``contime.LMU``, a GRU as its hidden cell by default) read at each series'
                    last valid step, then a linear head.
                    Unequal lengths go to the LMU as ``lengths``, so padding never reaches the memory.
    RoughTransformer*  the multi-view signature tokens of each series (``contime.signatures``), computed once
                    per call to fit or predict since the input is not learned, then the Transformer encoder and
                    head of ``contime.RoughTransformer``. aeon's series carry no timestamps: sample i is at
                    time i. Missing values (NaN) are handled: a step where every channel is NaN is dropped, as an
                    irregular sample, and a channel that is NaN where others are observed is interpolated
                    linearly in time between its own observations.

Not imported by ``contime/__init__.py``: importing aeon takes seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from aeon.classification import BaseClassifier
from aeon.regression import BaseRegressor
from sklearn.utils import check_random_state
from torch import nn

from .data.delay import _check_int
from .lmu import LMU
from .rough_transformer import RoughTransformer
from .signatures import SignatureConfig, precompute_features
from .training.distributed import resolve_device

__all__ = ["LMUClassifier", "LMURegressor", "RoughTransformerClassifier", "RoughTransformerRegressor"]

HIDDEN_CELLS = ("gru", "lstm", "rnn", "feedforward")

_COMMON_TAGS = {
    "capability:multivariate": True,
    "capability:unequal_length": True,
    # np-list holds unequal lengths; numpy3D is kept as it is (no copy into a list).
    "X_inner_type": ["np-list", "numpy3D"],
    "algorithm_type": "deeplearning",
    "python_dependencies": "torch",
}


# ------------------------------------------------------------------------------------------------ data helpers
def _padded(X) -> tuple[np.ndarray, np.ndarray]:
    """aeon's inner X -> values ``(n_cases, max_length, n_channels)`` float64 and lengths ``(n_cases,)``.

    X is a numpy3D array ``(n_cases, n_channels, n_timepoints)`` or an np-list of ``(n_channels, n_i)`` arrays.
    Steps past a series' length are NaN. Always a copy: the caller's X is never written to.
    """
    if isinstance(X, np.ndarray):
        values, lengths = X.transpose(0, 2, 1).astype(np.float64), np.full(X.shape[0], X.shape[2], dtype=np.int64)
    else:
        lengths = np.array([x.shape[1] for x in X], dtype=np.int64)
        values = np.full((len(X), int(lengths.max()), X[0].shape[0]), np.nan)
        for i, x in enumerate(X):
            values[i, : x.shape[1]] = x.T
    infinite = np.flatnonzero(np.isinf(values).any(axis=(1, 2)))  # NaN marks a missing value; Inf is an error
    if infinite.size:
        shown = ", ".join(map(str, infinite[:10])) + (", ..." if infinite.size > 10 else "")
        raise ValueError(f"X holds infinite values (series {shown}); NaN marks missing values")
    return values, lengths


def _channel_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation ``(n_channels,)`` over every observed (non-NaN) value.

    A constant channel gets std 1 (it is only centred); a channel never observed gets mean 0, std 1.
    """
    flat = values.reshape(-1, values.shape[-1])
    observed = np.isfinite(flat)
    count = observed.sum(axis=0)
    filled = np.where(observed, flat, 0.0)
    mean = filled.sum(axis=0) / np.maximum(count, 1)
    var = (np.where(observed, flat - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
    std = np.sqrt(var)
    return mean, np.where(std > 1e-8, std, 1.0)


def _seed_from(random_state) -> int:
    """An int seed from sklearn's random_state (None, int or RandomState)."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class _NetworkEstimator:
    """What the four estimators share: preparing X, the training loop, batched inference.

    A subclass provides ``_build_network(n_channels, out_features, lengths)`` and ``_encode(values, lengths)``
    (standardised values ``(n, L, C)`` with NaN padding -> the network's input tensors, first dimension n),
    and may override ``_forward(network, inputs)``.
    """

    def _check_training_params(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        self._device()

    def _device(self) -> torch.device:
        """``device`` as the training engine reads it ("cpu", "cuda", "cuda:N" or "auto"), checked there."""
        try:
            return resolve_device(self.device)
        except (ValueError, AttributeError) as err:  # AttributeError: not a string
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {self.device!r}: "
                             f"{err}") from err

    def _inputs(self, X) -> list[torch.Tensor]:
        """aeon's inner X -> the network's input tensors on ``self.device``, standardised with fit's statistics."""
        values, lengths = _padded(X)
        values = (values - self.channel_mean_) / self.channel_std_
        device = self._device()
        return [t.to(device) for t in self._encode(values, lengths)]

    def _forward(self, network: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        return network(*inputs)

    def _fit_network(self, X, target: torch.Tensor, out_features: int, loss_fn) -> None:
        """Build ``network_`` for X and train it on ``target`` (first dimension n_cases) with ``loss_fn``."""
        self._check_training_params()
        values, lengths = _padded(X)
        self.channel_mean_, self.channel_std_ = _channel_statistics(values)
        seed = _seed_from(self.random_state)
        device = self._device()
        # fork_rng: seeding here must not reset the user's global torch random state.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # initial weights and dropout masks
            network = self._build_network(values.shape[-1], out_features, lengths).to(device)
            inputs = self._inputs(X)
            target = target.to(device)
            optimizer = torch.optim.Adam(network.parameters(), lr=float(self.lr))
            shuffle = torch.Generator().manual_seed(seed)
            n_cases = target.shape[0]
            self.loss_curve_ = []  # mean training loss of each epoch
            network.train()
            for epoch in range(self.epochs):
                order = torch.randperm(n_cases, generator=shuffle).to(device)
                total = torch.zeros((), device=device)  # read once per epoch: .item() per step waits for the GPU
                for start in range(0, n_cases, self.batch_size):
                    batch = order[start : start + self.batch_size]
                    optimizer.zero_grad()
                    loss = loss_fn(self._forward(network, [t[batch] for t in inputs]), target[batch])
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * len(batch)
                self.loss_curve_.append(total.item() / n_cases)
                if self.verbose:
                    print(f"{type(self).__name__} epoch {epoch + 1}/{self.epochs}: loss {self.loss_curve_[-1]:.4f}")
        network.eval()
        self.network_ = network

    def _outputs(self, X, batch_size: int = 256) -> np.ndarray:
        """The trained network's outputs ``(n_cases, out_features)`` as float64."""
        inputs = self._inputs(X)
        # inference_mode: no gradients. The LMU may cache its discretized matrices, which it never pickles, so
        # the estimator's pickled (and hashed) state is unchanged by predicting.
        with torch.inference_mode():
            outputs = [self._forward(self.network_, [t[i : i + batch_size] for t in inputs])
                       for i in range(0, inputs[0].shape[0], batch_size)]
        return torch.cat(outputs).to("cpu", torch.float64).numpy()


# ------------------------------------------------------------------------------------------------- the tasks
class _ClassifierTask:
    """_fit / _predict / _predict_proba of a classifier on top of ``_NetworkEstimator``."""

    def _fit(self, X, y):
        # classes_ and _class_dictionary come from BaseClassifier.fit (sorted unique labels).
        target = torch.as_tensor(np.array([self._class_dictionary[label] for label in y]), dtype=torch.long)
        self._fit_network(X, target, self.n_classes_, nn.CrossEntropyLoss())
        return self

    def _predict_proba(self, X) -> np.ndarray:
        logits = self._outputs(X)
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax, in float64
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def _predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self._predict_proba(X), axis=1)]


class _RegressorTask:
    """_fit / _predict of a regressor: MSE on the target standardised with fit's mean and std."""

    def _fit(self, X, y):
        y = np.asarray(y, dtype=np.float64)
        self.target_mean_ = float(y.mean())
        std = float(y.std())
        self.target_std_ = std if std > 1e-12 else 1.0
        target = torch.as_tensor((y - self.target_mean_) / self.target_std_, dtype=torch.float32)[:, None]
        self._fit_network(X, target, 1, nn.MSELoss())
        return self

    def _predict(self, X) -> np.ndarray:
        return self._outputs(X)[:, 0] * self.target_std_ + self.target_mean_


# ------------------------------------------------------------------------------------------------------ LMU
class _LMUNetwork(nn.Module):
    """LMU read at each series' last valid step, dropout, linear head.

    Shapes: x ``(batch, time, n_channels)``, lengths ``(batch,)`` -> ``(batch, out_features)``.
    """

    def __init__(self, n_channels: int, out_features: int, *, memory_d: int, order: int, theta: float,
                 hidden_size: int, hidden_cell: str, dropout: float):
        super().__init__()
        memory_size = memory_d * order
        if hidden_cell == "feedforward":
            cell = nn.Sequential(nn.Linear(memory_size, hidden_size), nn.Tanh())
        else:
            cell = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}[hidden_cell](memory_size, hidden_size)
        self.lmu = LMU(n_channels, memory_d, order, theta, cell, return_sequences=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.lmu.output_size, out_features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h, _ = self.lmu(x, lengths=lengths)
        return self.head(self.dropout(h))


class _LMUEstimator(_NetworkEstimator):
    """Hyperparameters and network of the LMU estimators (documented on LMUClassifier)."""

    def __init__(self, order: int = 32, theta: float | None = None, memory_d: int | None = None,
                 hidden_size: int = 64, hidden_cell: str = "gru", dropout: float = 0.0,
                 epochs: int = 100, batch_size: int = 32, lr: float = 1e-3, random_state=None,
                 device: str = "cpu", verbose: bool = False):
        self.order = order
        self.theta = theta
        self.memory_d = memory_d
        self.hidden_size = hidden_size
        self.hidden_cell = hidden_cell
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        super().__init__()

    def _build_network(self, n_channels: int, out_features: int, lengths: np.ndarray) -> nn.Module:
        if self.hidden_cell not in HIDDEN_CELLS:
            raise ValueError(f"hidden_cell must be one of {HIDDEN_CELLS}, got {self.hidden_cell!r}")
        for name in ("order", "hidden_size"):  # the LMU would name them otherwise (hidden_size as hidden_cell)
            _check_int(name, getattr(self, name), 1)
        # theta defaults to the longest training series, so the memory's window covers every series.
        self.theta_ = float(self.theta if self.theta is not None else lengths.max())
        self.memory_d_ = int(self.memory_d if self.memory_d is not None else n_channels)
        return _LMUNetwork(n_channels, out_features, memory_d=self.memory_d_, order=self.order, theta=self.theta_,
                           hidden_size=self.hidden_size, hidden_cell=self.hidden_cell, dropout=self.dropout)

    def _encode(self, values: np.ndarray, lengths: np.ndarray) -> list[torch.Tensor]:
        # Padding -> 0; the LMU zeroes the input past each length anyway, so its value does not matter.
        x = torch.as_tensor(np.nan_to_num(values, nan=0.0), dtype=torch.float32)
        return [x, torch.as_tensor(lengths)]

    @classmethod
    def _get_test_params(cls, parameter_set: str = "default"):
        # Both kinds of hidden cell: recurrent (the default) and feedforward (the LMU's "final" mode).
        return [{"order": 4, "hidden_size": 8, "epochs": 2, "batch_size": 4},
                {"order": 4, "hidden_size": 8, "epochs": 2, "batch_size": 4, "hidden_cell": "feedforward",
                 "memory_d": 2, "theta": 10.0, "dropout": 0.5}]


class LMUClassifier(_ClassifierTask, _LMUEstimator, BaseClassifier):
    """Legendre Memory Unit classifier: an LMU layer read at each series' last step, then a linear head.

    The network: each time step's channels are projected to ``memory_d`` inputs, each held by a LegT memory of
    ``order`` Legendre coefficients over a sliding window of ``theta`` steps. The hidden cell reads the memory
    ``(memory_d * order)``: by default a GRU cell at every step, whose state at the series' last valid step
    goes through dropout and a linear layer to the class logits. ``hidden_cell="feedforward"`` (Linear + tanh)
    reads only the last memory state, which the LMU computes as one product with its impulse response (mode
    "final"): about 8x faster to train, but the features it sees are then linear in the series, and it was
    less accurate on BasicMotions (0.75 against 0.93 for the GRU, default settings, seed 0).

    Parameters
    ----------
    order : int, default=32
        Legendre coefficients per memory dimension.
    theta : float or None, default=None
        Memory window in steps; None uses the longest training series.
    memory_d : int or None, default=None
        Memory dimensions (learned projections of the channels); None uses the number of channels.
    hidden_size : int, default=64
        Units of the hidden cell.
    hidden_cell : {"gru", "lstm", "rnn", "feedforward"}, default="gru"
        The LMU's hidden cell: a torch GRU/LSTM/RNN cell over the steps, or Linear + tanh on the final memory.
    dropout : float, default=0.0
        Dropout before the linear head.
    epochs, batch_size, lr : int, int, float, default=100, 32, 1e-3
        The Adam training loop.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, dropout and the shuffling; with an int, fit is repeatable (on the CPU).
    device : str, default="cpu"
        Torch device for training and prediction: "cpu", "cuda", "cuda:N" or "auto" (CUDA where there is one).
    verbose : bool, default=False
        Print the training loss after each epoch.

    Attributes
    ----------
    network_ : torch.nn.Module
        The trained network (eval mode); ``network_.lmu`` is the ``contime.LMU``.
    classes_, n_classes_ : labels and their number (from aeon's BaseClassifier).
    theta_, memory_d_ : the values used.
    channel_mean_, channel_std_ : ndarray of shape (n_channels,)
        The per-channel standardisation learned in fit.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    """

    _tags = dict(_COMMON_TAGS)


class LMURegressor(_RegressorTask, _LMUEstimator, BaseRegressor):
    """Legendre Memory Unit regressor: the network of ``LMUClassifier`` with one output, trained with MSE.

    Parameters and attributes are those of ``LMUClassifier``; instead of the classes, ``target_mean_`` and
    ``target_std_`` hold the standardisation of y (the network learns the standardised target).
    """

    _tags = dict(_COMMON_TAGS)


# --------------------------------------------------------------------------------------- Rough Transformer
def _observed_steps(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask and fill NaN for the signatures: values ``(n, L, C)`` -> filled values, mask ``(n, L)`` bool.

    A step is a sample (mask True) if it lies within the series' length and at least one channel is observed
    there. A channel that is NaN at a sample is interpolated linearly in time between that channel's own
    observations (constant before the first and after the last); a channel never observed in the series is set
    to 0, the training mean after standardisation.
    """
    within = np.arange(values.shape[1])[None, :] < lengths[:, None]
    observed = np.isfinite(values) & within[..., None]
    mask = observed.any(axis=2)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"every series needs at least one observed value; series {empty.tolist()} are all NaN")
    values = np.where(observed, values, 0.0)
    for case, channel in zip(*np.nonzero((mask[..., None] & ~observed).any(axis=1))):
        seen = observed[case, :, channel]
        fill = mask[case] & ~seen
        if seen.any():
            values[case, fill, channel] = np.interp(np.flatnonzero(fill), np.flatnonzero(seen),
                                                    values[case, seen, channel])
    return values, mask


class _RoughTransformerEstimator(_NetworkEstimator):
    """Hyperparameters and network of the Rough Transformer estimators (documented on the classifier)."""

    def __init__(self, depth: int = 3, n_windows: int = 16, views: tuple = ("global", "local"),
                 univariate: bool = False, log_signature: bool = False, basepoint: bool = True, d_model: int = 64,
                 n_heads: int = 4, n_layers: int = 2, dropout: float = 0.1, pooling: str = "mean", epochs: int = 100,
                 batch_size: int = 32, lr: float = 1e-3, random_state=None, device: str = "cpu",
                 verbose: bool = False):
        self.depth = depth
        self.n_windows = n_windows
        self.views = views
        self.univariate = univariate
        self.log_signature = log_signature
        self.basepoint = basepoint
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.dropout = dropout
        self.pooling = pooling
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        super().__init__()

    def _signature_config(self) -> SignatureConfig:
        views = self.views if isinstance(self.views, str) else tuple(self.views)  # a string: SignatureConfig says so
        return SignatureConfig(depth=self.depth, n_windows=self.n_windows, views=views,
                               univariate=self.univariate, log_signature=self.log_signature,
                               basepoint=self.basepoint)

    def _build_network(self, n_channels: int, out_features: int, lengths: np.ndarray) -> nn.Module:
        config = self._signature_config()
        if config.feature_size(n_channels) > 20_000:
            warnings.warn(f"{config.feature_size(n_channels)} signature features per token for {n_channels} "
                          f"channels at depth {self.depth} (they grow like channels ** depth); univariate=True "
                          "or a lower depth needs far less memory", UserWarning, stacklevel=2)
        return RoughTransformer(n_channels, out_features, signature=config,
                                d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
                                dropout=self.dropout, pooling=self.pooling)

    def _encode(self, values: np.ndarray, lengths: np.ndarray) -> list[torch.Tensor]:
        # The input is not learned, so its signature tokens are computed once here (offline mode), not at
        # every training step. Every series gives n_windows tokens whatever its length: no token mask needed.
        values, mask = _observed_steps(values, lengths)
        times = np.tile(np.arange(values.shape[1], dtype=np.float64), (len(values), 1))  # sample i at time i
        features, token_times = precompute_features(torch.as_tensor(values), torch.as_tensor(times),
                                                     torch.as_tensor(mask), self._signature_config())
        return [features.to(torch.float32), token_times.to(torch.float32)]

    def _forward(self, network: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
        return network.forward_features(*inputs)

    @classmethod
    def _get_test_params(cls, parameter_set: str = "default"):
        small = {"depth": 2, "n_windows": 4, "d_model": 8, "n_heads": 2, "n_layers": 1, "epochs": 2, "batch_size": 4}
        return [small, {**small, "views": ("local",), "univariate": True, "log_signature": True, "basepoint": False,
                        "pooling": "cls"}]


_RT_TAGS = {**_COMMON_TAGS, "capability:missing_values": True}


class RoughTransformerClassifier(_ClassifierTask, _RoughTransformerEstimator, BaseClassifier):
    """Rough Transformer classifier (Moreno-Pino et al., 2024): signature tokens of each series, a Transformer.

    Each series is the piecewise-linear path through (time, channels), sample i at time i, normalised to
    [0, 1] over the series' own span, opening with a jump from the origin (see ``basepoint``). It is cut
    into ``n_windows`` equal windows; token k holds the path's signatures truncated at ``depth`` over the chosen
    ``views`` ("global": from the start to the end of window k; "local": window k alone). The tokens, computed
    once per fit or predict call, go through a LayerNorm, a linear projection plus a time encoding, a pre-LN
    Transformer encoder, pooling and a linear head.
    Attention runs over the ``n_windows`` tokens, so its cost does not depend on the series' length.

    Missing values are handled: a step where every channel is NaN is left out of the path (the series is then
    irregularly sampled, which signatures handle natively); a channel NaN where others are observed is
    interpolated linearly in time between its own observations.

    Parameters
    ----------
    depth : int, default=3
        Signature truncation level.
    n_windows : int, default=16
        Tokens per series.
    views : tuple of str, default=("global", "local")
        Which signatures each token holds.
    univariate : bool, default=False
        Sign each channel's path (time, x_c) separately: the feature size grows linearly in the channels instead
        of like channels ** depth (use it for many channels).
    log_signature : bool, default=False
        Log-signatures (Lyndon basis) instead of signatures.
    basepoint : bool, default=True
        Open each path with a jump from the origin (the training means of the channels) at its first observed
        time (``SignatureConfig.basepoint``). Signatures see only increments, so without it the level of a
        series is lost: on JapaneseVowels a
        logistic regression on whole-series depth-2 signatures scored 0.87 without, 0.99 with it.
    d_model, n_heads, n_layers, dropout : int, int, int, float, default=64, 4, 2, 0.1
        The Transformer encoder (d_model divisible by n_heads, and even).
    pooling : {"mean", "last", "cls"}, default="mean"
        How the tokens are pooled into one vector.
    epochs, batch_size, lr : int, int, float, default=100, 32, 1e-3
        The Adam training loop.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, dropout and the shuffling; with an int, fit is repeatable (on the CPU).
    device : str, default="cpu"
        Torch device for training and prediction ("cpu", "cuda", "cuda:N" or "auto"); the signatures are computed
        on the CPU.
    verbose : bool, default=False
        Print the training loss after each epoch.

    Attributes
    ----------
    network_ : contime.RoughTransformer
        The trained model (eval mode).
    classes_, n_classes_ : labels and their number (from aeon's BaseClassifier).
    channel_mean_, channel_std_ : ndarray of shape (n_channels,)
        The per-channel standardisation learned in fit.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    """

    _tags = dict(_RT_TAGS)


class RoughTransformerRegressor(_RegressorTask, _RoughTransformerEstimator, BaseRegressor):
    """Rough Transformer regressor: the model of ``RoughTransformerClassifier`` with one output, trained with MSE.

    Parameters and attributes are those of ``RoughTransformerClassifier``; instead of the classes,
    ``target_mean_`` and ``target_std_`` hold the standardisation of y.
    """

    _tags = dict(_RT_TAGS)
