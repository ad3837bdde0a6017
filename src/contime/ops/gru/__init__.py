"""The GRU recurrence of ``nn.GRUCell`` with a hand-written backward pass (one autograd node per sequence).

The naive reference is ``nn.GRUCell`` called step by step (``contime.hidden.recurrent_sequence(fast=False)``).
"""

from .manual import gru_recurrence

__all__ = ["gru_recurrence"]
