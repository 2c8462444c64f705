"""fastdrop: fused, mask-free dropout kernels for PyTorch on CPU and CUDA."""

from . import _ops, functional, nn  # noqa: F401  (_ops registers fake kernels and autograd)
from .stochastic_depth import add_stochastic_depth

__version__ = "0.1.0"
__all__ = ["functional", "nn", "add_stochastic_depth"]
