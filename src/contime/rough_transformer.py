"""The Rough Transformer (Moreno-Pino et al., 2024): multi-view signature tokens fed to a plain Transformer.

    (values, times, mask) --signatures.signature_features--> tokens (batch, K, F), token times (batch, K)
    tokens --LayerNorm, Linear--> (batch, K, d_model) + time encoding of each token's time
           --pre-LayerNorm Transformer encoder (scaled dot-product attention)--> pooled (batch, d_model)
           --Linear head--> (batch, out_features)

Attention runs over K tokens (the grid windows), not over the L samples, so its cost does not depend on the
sampling rate; the signatures cost O(L) once. The signature step runs online (inside ``forward``, on the
model's device, differentiable, redrawn whenever the mask changes) or offline (``precompute_features`` once,
then ``forward_features``): both give the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .legendre import can_read_values
from .signatures import SignatureConfig, signature_features

POOLING = ("mean", "last", "cls")
TASKS = ("classification", "regression")


def time_encoding(token_times: torch.Tensor, d_model: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal encoding of real times: ``(batch, K)`` in [0, 1] -> ``(batch, K, d_model)``.

    The transformer's positional encoding, evaluated at ``scale * time`` instead of at the token index, so that
    tokens at the same time get the same code whatever their number (d_model must be even).
    """
    half = d_model // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=token_times.device,
                                                               dtype=token_times.dtype) / half)
    angles = scale * token_times[..., None] * frequencies  # (batch, K, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TokenEncoder(nn.Module):
    """Tokens with times -> one vector per series: projection, time encoding, pre-LN encoder, pooling, head.

    Shared by the Rough Transformer (signature tokens) and the vanilla Transformer baseline (raw samples).
    Shapes: tokens ``(batch, K, in_features)``, token_times ``(batch, K)``, token_mask ``(batch, K)`` bool
    (True = real token; None = all) -> ``(batch, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, *, d_model: int = 64, n_heads: int = 4,
                 n_layers: int = 2, dim_feedforward: int | None = None, dropout: float = 0.1,
                 pooling: str = "mean", normalize_input: bool = True):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("d_model", d_model),
                            ("n_heads", n_heads), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if d_model % 2 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be even and divisible by n_heads ({n_heads})")
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        if dim_feedforward is not None and (isinstance(dim_feedforward, bool) or not isinstance(dim_feedforward, int)
                                            or dim_feedforward < 1):
            raise ValueError(f"dim_feedforward must be None (4 * d_model) or an int >= 1, got {dim_feedforward!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.pooling = pooling
        self.d_model = d_model
        # Signature levels differ by orders of magnitude; a LayerNorm with learned scales evens them out.
        self.input_norm = nn.LayerNorm(in_features) if normalize_input else nn.Identity()
        self.project = nn.Linear(in_features, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pooling == "cls" else None
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward or 4 * d_model, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_features)

    def check_dtype(self, name: str, tensor: torch.Tensor) -> None:
        """``tensor`` must come in the dtype of the encoder's weights, except under autocast (which casts each
        product): raise naming it, instead of torch's "mixed dtype" from deep inside a LayerNorm."""
        weight = self.project.weight
        if tensor.dtype != weight.dtype and not torch.is_autocast_enabled(tensor.device.type):
            raise TypeError(f"{name} has dtype {str(tensor.dtype).replace('torch.', '')}, but the model's weights "
                            f"are {str(weight.dtype).replace('torch.', '')}: convert one to the other "
                            f"({name}.to(dtype) or model.to(dtype)), or use torch.autocast")

    def forward(self, tokens: torch.Tensor, token_times: torch.Tensor,
                token_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.project(self.input_norm(tokens)) + time_encoding(token_times, self.d_model).to(tokens.dtype)
        padding = None if token_mask is None else ~token_mask  # True = ignore, torch's convention
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
            if padding is not None:
                padding = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], dim=1)
        h = self.encoder(h, src_key_padding_mask=padding)  # (batch, K [+1], d_model)
        if self.pooling == "cls":
            pooled = h[:, 0]
        elif self.pooling == "last":
            last = (h.shape[1] - 1 if token_mask is None
                    else token_mask.shape[1] - 1 - token_mask.flip(1).to(torch.int8).argmax(dim=1))
            pooled = h[:, -1] if token_mask is None else h[torch.arange(h.shape[0], device=h.device), last]
        elif token_mask is None:
            pooled = h.mean(dim=1)
        else:
            weight = token_mask.to(h.dtype)[..., None]
            pooled = (h * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class RoughTransformer(nn.Module):
    """Rough Transformer for irregular series: classification logits or regression outputs.

    Args:
        in_channels: channels C of the series.
        out_features: classes (logits) or regression targets.
        signature: a ``SignatureConfig`` (depth, number of windows K, views, univariate, log-signatures).
        task: "classification" or "regression" (the head is linear either way; the estimators pick the loss).
        d_model, n_heads, n_layers, dim_feedforward, dropout, pooling: the encoder's sizes; pooling "mean",
            "last" (the token that ends at the series' end, whose global view saw everything) or "cls".

    Shapes:
        values ``(batch, length, C)``, times ``(batch, length)`` strictly increasing at valid points,
        mask ``(batch, length)`` bool (None = all valid) -> ``(batch, out_features)``.
    """

    def __init__(self, in_channels: int, out_features: int, *, signature: SignatureConfig | None = None,
                 task: str = "classification", d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                 dim_feedforward: int | None = None, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if signature is not None and not isinstance(signature, SignatureConfig):
            raise TypeError(f"signature must be a SignatureConfig, got {type(signature).__name__}")
        self.in_channels = in_channels
        self.task = task
        self.signature = signature or SignatureConfig()
        self.encoder = TokenEncoder(self.signature.feature_size(in_channels), out_features, d_model=d_model,
                                    n_heads=n_heads, n_layers=n_layers, dim_feedforward=dim_feedforward,
                                    dropout=dropout, pooling=pooling)

    def features(self, values: torch.Tensor, times: torch.Tensor,
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The signature tokens ``(batch, K, F)`` and their times ``(batch, K)`` (validates the input)."""
        if torch.is_tensor(values) and values.ndim == 3 and values.shape[-1] != self.in_channels:
            raise ValueError(f"values must have in_channels={self.in_channels} channels in their last dimension, "
                             f"got {values.shape[-1]}")
        if torch.is_tensor(values) and values.is_floating_point():
            self.encoder.check_dtype("values", values)
        return signature_features(values, times, mask, self.signature)

    def forward_features(self, features: torch.Tensor, token_times: torch.Tensor) -> torch.Tensor:
        """The model on precomputed tokens (offline mode): ``(batch, K, F)``, ``(batch, K)`` -> output."""
        expected = (self.signature.n_windows, self.signature.feature_size(self.in_channels))
        for name, tensor in (("features", features), ("token_times", token_times)):
            if not torch.is_tensor(tensor) or not tensor.is_floating_point():
                got = tensor.dtype if torch.is_tensor(tensor) else type(tensor).__name__
                raise TypeError(f"{name} must be a floating-point tensor, got {got}")
            if can_read_values(tensor) and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} contains NaN or Inf")
        self.encoder.check_dtype("features", features)
        if features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"features must have shape (batch, {expected[0]}, {expected[1]}), "
                             f"got {tuple(features.shape)}")
        if token_times.shape != features.shape[:2]:
            raise ValueError(f"token_times must have shape {tuple(features.shape[:2])}, got {tuple(token_times.shape)}")
        return self.encoder(features, token_times)

    def forward(self, values: torch.Tensor, times: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        features, token_times = self.features(values, times, mask)
        return self.encoder(features, token_times)


class OfflineRoughTransformer(nn.Module):
    """A ``RoughTransformer`` fed precomputed tokens (``signatures.precompute_features``), for training loops
    that call ``model(*inputs)``: ``(features (batch, K, F), token_times (batch, K))`` -> output."""

    def __init__(self, rough_transformer: RoughTransformer):
        super().__init__()
        self.rt = rough_transformer

    def forward(self, features: torch.Tensor, token_times: torch.Tensor) -> torch.Tensor:
        return self.rt.forward_features(features, token_times)
