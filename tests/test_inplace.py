"""In-place forms under autograd, as torch's in-place ops behave: the version
counter is bumped, so a tensor that another op saved and that is then dropped
in place is caught in backward; the raw in-place operators record history (or
refuse a leaf), so gradients flow through the mask."""

import pytest
import torch
import torch.nn.functional as torch_F

import fastdrop
from conftest import assert_identical

F = fastdrop.functional
ops = torch.ops.fastdrop

# (fastdrop functional, torch functional, shape, training argument)
INPLACE_FUNCTIONALS = [
    ("dropout", (8, 4)),
    ("alpha_dropout", (8, 4)),
    ("dropout1d", (2, 8, 4)),
    ("dropout2d", (2, 8, 4, 3)),
    ("dropout3d", (2, 8, 4, 3, 2)),
    ("feature_alpha_dropout", (2, 8, 4, 3)),
]
RAW_INPLACE = ["dropout_", "alpha_dropout_", "feature_dropout_", "feature_alpha_dropout_"]
MESSAGE = "one of the variables needed for gradient computation has been modified by an inplace operation"


@pytest.mark.parametrize("name, shape", INPLACE_FUNCTIONALS, ids=[n for n, _ in INPLACE_FUNCTIONALS])
def test_inplace_on_a_saved_tensor_is_caught_in_backward_like_torch(device, name, shape):
    for fn in (getattr(torch_F, name), getattr(F, name)):
        x = torch.randn(shape, device=device)
        weight = torch.randn(shape[-1], 3, device=device, requires_grad=True)
        h = x @ weight  # saves x for weight's gradient
        fn(x, 0.5, True, inplace=True)
        with pytest.raises(RuntimeError, match=MESSAGE):
            h.sum().backward()


@pytest.mark.parametrize("op", RAW_INPLACE)
def test_raw_inplace_ops_bump_the_version_counter(device, op):
    x = torch.randn(4, 6, 5, device=device)
    before = x._version
    getattr(ops, op)(x, 0.5)
    assert x._version == before + 1
    with torch.no_grad():
        getattr(ops, op)(x, 0.5)
    assert x._version == before + 2


@pytest.mark.parametrize("op", RAW_INPLACE)
def test_raw_inplace_ops_record_history(device, op):
    a = torch.randn(4, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = a * 1
    rng_state = getattr(ops, op)(b, 0.5)
    grad = torch.randn_like(b)
    b.backward(grad)
    backward = getattr(ops, op[:-1] + "_backward")
    assert_identical(a.grad, backward(grad, rng_state, 0.5))
    assert (a.grad == 0).any() and (a.grad != 0).any()


@pytest.mark.parametrize("op", RAW_INPLACE)
def test_raw_inplace_ops_refuse_leaves_and_their_views_like_torch(device, op):
    a = torch.randn(4, 6, 5, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
        getattr(ops, op)(a, 0.5)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad is being used in an in-place"):
        getattr(ops, op)(a[1], 0.5)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
        a.mul_(2)  # torch's own wording


def test_inplace_through_a_view_rebases_the_base_history(device):
    base = torch.randn(6, 8, dtype=torch.float64, device=device, requires_grad=True)
    h = base * 2
    torch.manual_seed(1)
    F.dropout(h[2:5], 0.5, inplace=True)
    grad = torch.randn_like(h)
    h.backward(grad)
    kept = h.detach()[2:5] != 0
    expected = 2 * grad
    expected[2:5] = 2 * grad[2:5] * kept * 2.0
    assert_identical(base.grad, expected)


def test_inplace_under_no_grad_and_inference_mode(device):
    x = torch.randn(100, device=device)
    with torch.no_grad():
        F.dropout(x, 0.5, inplace=True)
    with torch.inference_mode():
        y = torch.randn(100, device=device)
        F.dropout(y, 0.5, inplace=True)
        assert (y == 0).any()
