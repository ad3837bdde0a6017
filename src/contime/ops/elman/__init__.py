"""The Elman recurrence h_t = act(p_t + W h_{t-1}) of ``nn.RNNCell``, with a hand-written backward pass.

The naive reference is ``nn.RNNCell`` called step by step (``contime.hidden.recurrent_sequence(fast=False)``).
"""

from .manual import elman_recurrence

__all__ = ["elman_recurrence"]
