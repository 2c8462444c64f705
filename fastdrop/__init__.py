"""fastdrop: fused, mask-free dropout kernels for PyTorch on CPU and CUDA."""

from . import _ops, functional, losses, nn  # noqa: F401  (_ops loads the operators)
from .adoption import replace_dropout
from .stochastic_depth import add_stochastic_depth

__version__ = "0.1.0"
__all__ = ["functional", "nn", "losses", "replace_dropout", "add_stochastic_depth"]
