import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The repository root, for the benchmark's measurements; last, so that an
# installed fastdrop is not shadowed by the source tree.
sys.path.append(str(Path(__file__).resolve().parent.parent))

import fastdrop  # noqa: E402,F401
from benchmarks import measure  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param


def assert_identical(actual, expected):
    """Bit-for-bit agreement of values (NaN where NaN), dtype, shape and device."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def saved_bytes(fn, *inputs):
    """Bytes autograd saves for backward while fn(*inputs) runs, the inputs themselves excluded."""
    return measure.saved_bytes(fn, inputs)
