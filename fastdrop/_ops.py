"""fastdrop's operators, torch.ops.fastdrop.

Loading fastdrop._C registers them: their schemas, CPU and CUDA kernels, Meta
kernels (shape-only, for torch.compile and FakeTensor, with the same checks)
and autograd (backward and forward-mode AD), all in C++. Each forward returns
its output and a 2-element int64 rng_state (seed, offset); autograd saves only
that, and backward regenerates the mask from it. torch.vmap's batching rules
are Python (_vmap).
"""

import torch

from . import _C  # noqa: F401  (loading it registers torch.ops.fastdrop)

ops = torch.ops.fastdrop

from . import _vmap  # noqa: E402, F401  (registers the batching rules)
