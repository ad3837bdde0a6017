"""contime: continuous-time sequence memory for PyTorch."""

from .bidirectional import BidirectionalLMU
from .legendre import discretize, discretize_steps, impulse_response, legendre_readout, legt_matrices
from .lmu import LMU, LMUState
from .rough_transformer import RoughTransformer
from .signatures import SignatureConfig, signature_features

__all__ = ["LMU", "LMUState", "BidirectionalLMU", "legt_matrices", "discretize", "discretize_steps", "impulse_response",
           "legendre_readout", "RoughTransformer", "SignatureConfig", "signature_features"]
__version__ = "0.1.0"
