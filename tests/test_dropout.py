"""fastdrop.functional.dropout and fastdrop.nn.Dropout against torch's behaviour."""

import math

import pytest
import torch
import torch.nn.functional as torch_F

import fastdrop
import oracle
from conftest import assert_identical, saved_bytes
from oracle import keep_mask

F = fastdrop.functional
ops = torch.ops.fastdrop


# ---------------------------------------------------------------- parity ----


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_probability_raises_torchs_value_error(p):
    message = f"dropout probability has to be between 0 and 1, but got {p}"
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        F.dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match=message):
        fastdrop.nn.Dropout(p)
    if not math.isnan(p):  # torch itself lets NaN through; we do not
        with pytest.raises(ValueError, match=message):
            torch.nn.Dropout(p)


def test_eval_p0_and_empty_return_the_input_itself(device):
    x = torch.randn(5, 7, device=device)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.5, training=False, inplace=True) is x
    assert F.dropout(x, 0.0) is x
    empty = torch.empty(0, 3, device=device)
    assert F.dropout(empty, 0.5) is empty
    # The same cases in torch, so a change there shows up here.
    assert torch_F.dropout(x, 0.5, training=False) is x
    assert torch_F.dropout(x, 0.0) is x
    assert torch_F.dropout(empty, 0.5) is empty


def test_p_one_gives_zeros_and_nan_where_torch_does(device):
    x = torch.tensor([1.0, -2.0, float("inf"), float("nan"), 0.0], device=device)
    assert_identical(F.dropout(x, 1.0), torch_F.dropout(x, 1.0))
    y = F.dropout(torch.randn(1000, device=device), 1.0)
    assert torch.equal(y, torch.zeros_like(y))


def test_inf_and_nan_follow_x_times_mask_times_scale(device):
    x = torch.tensor([float("inf"), float("-inf"), float("nan"), 1.0] * 256, device=device)
    y, rng_state = ops.dropout(x, 0.5)
    mask = keep_mask(rng_state, x.shape, 0.5)
    assert 0 < mask.sum() < mask.numel()
    assert_identical(y, oracle.dropout(x, mask, 0.5))
    dropped_inf = (~mask.to(device)) & x.isinf()
    assert y[dropped_inf].isnan().all()


@pytest.mark.parametrize(
    "make",
    [
        lambda d: torch.randn(2, 3, 4, 5, device=d).contiguous(memory_format=torch.channels_last),
        lambda d: torch.randn(2, 3, 4, 5, 6, device=d).contiguous(memory_format=torch.channels_last_3d),
        lambda d: torch.randn(6, 8, device=d).t(),
        lambda d: torch.randn(6, 8, device=d)[:, ::3],
    ],
    ids=["channels_last", "channels_last_3d", "transposed", "strided_slice"],
)
def test_output_keeps_the_memory_format_torch_gives(device, make):
    x = make(device)
    assert F.dropout(x, 0.3).stride() == torch_F.dropout(x, 0.3).stride()


def test_kept_values_are_x_times_one_over_one_minus_p(device, dtype):
    p = 0.1
    x = torch.randn(4096, device=device).to(dtype)
    y = F.dropout(x, p)
    kept = y != 0
    expected = (x.to(torch.float64 if dtype == torch.float64 else torch.float32) * (1.0 / (1.0 - p))).to(dtype)
    assert kept.any()
    assert_identical(y[kept], expected[kept])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_inputs_raise(device, dtype):
    x = torch.ones(4, device=device, dtype=dtype)
    with pytest.raises(RuntimeError, match="expects a floating-point input"):
        F.dropout(x, 0.5)
    with pytest.raises(RuntimeError, match="expects a floating-point input"):
        F.dropout(x, 0.5, inplace=True)


def test_complex_inputs_raise_not_implemented(device):
    x = torch.ones(4, device=device, dtype=torch.complex64)
    with pytest.raises(NotImplementedError, match="not implemented for ComplexFloat inputs"):
        F.dropout(x, 0.5)


def test_inplace_mutates_the_input(device):
    x = torch.randn(300, device=device)
    torch.manual_seed(3)
    expected = F.dropout(x, 0.4)
    torch.manual_seed(3)
    out = F.dropout(x, 0.4, inplace=True)
    assert out is x
    assert_identical(x, expected)


def test_inplace_on_an_overlapping_tensor_raises_like_torch(device):
    x = torch.ones(1, 4, device=device).expand(3, 4)
    with pytest.raises(RuntimeError, match="unsupported operation: more than one element of the written-to tensor"):
        F.dropout(x, 0.5, inplace=True)


def test_inplace_on_a_leaf_that_requires_grad_raises_like_torch():
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        torch_F.dropout(x, 0.5, inplace=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        F.dropout(x, 0.5, inplace=True)


def test_module_matches_torch_module():
    for args in [(), (0.3,), (0.7, True)]:
        ours, theirs = fastdrop.nn.Dropout(*args), torch.nn.Dropout(*args)
        assert repr(ours) == repr(theirs)
        assert ours.state_dict() == theirs.state_dict() == {}
        assert (ours.p, ours.inplace) == (theirs.p, theirs.inplace)
        assert isinstance(ours, torch.nn.Dropout)
    module = fastdrop.nn.Dropout(0.5)
    x = torch.randn(1000)
    assert module.training
    y = module(x)
    assert (y == 0).any() and not torch.equal(y, x)
    module.eval()
    assert module(x) is x
    module.train()
    assert (module(x) == 0).any()


# -------------------------------------------------------------- autograd ----


def test_gradient_is_the_same_mask_times_scale(device, dtype):
    x = torch.randn(3, 1000, device=device).to(dtype).requires_grad_()
    y, rng_state = ops.dropout(x, 0.3)
    grad = torch.randn_like(y)
    (x_grad,) = torch.autograd.grad(y, x, grad)
    assert_identical(x_grad, oracle.dropout(grad, keep_mask(rng_state, x.shape, 0.3), 0.3))


def test_inplace_gradient_is_correct(device):
    base = torch.randn(2000, device=device, requires_grad=True)
    h = base * 3
    torch.manual_seed(4)
    out = F.dropout(h, 0.5, inplace=True)
    assert out is h
    grad = torch.randn_like(out)
    out.backward(grad)
    mask = out.detach() != 0
    assert_identical(base.grad, 3 * oracle.dropout(grad, mask, 0.5))


def test_saves_sixteen_bytes_per_call_not_a_mask(device):
    x = torch.randn(1 << 16, device=device, requires_grad=True)
    assert saved_bytes(lambda t: F.dropout(t, 0.5), x) == 16
    h = lambda t: F.dropout(t * 1, 0.5, inplace=True)  # noqa: E731
    assert saved_bytes(h, x) == 16
    # torch keeps a mask (CUDA: 1 byte per element; CPU: a full-size noise tensor).
    assert saved_bytes(lambda t: torch_F.dropout(t, 0.5), x) >= x.numel()


def test_gradcheck_and_gradgradcheck(device):
    x = torch.randn(6, 9, dtype=torch.float64, device=device, requires_grad=True)

    def fn(t):
        return F.dropout(t, 0.4, generator=torch.Generator(device).manual_seed(0))

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_double_backward_uses_the_same_mask(device):
    x = torch.randn(500, dtype=torch.float64, device=device, requires_grad=True)
    y = F.dropout(x, 0.5)
    grad = torch.randn_like(y, requires_grad=True)
    (x_grad,) = torch.autograd.grad(y, x, grad, create_graph=True)
    (grad_grad,) = torch.autograd.grad(x_grad.sum(), grad)
    assert torch.equal(grad_grad != 0, y.detach() != 0)


# ------------------------------------------------- torch.library / compile ----


@pytest.mark.traces
def test_opcheck(device):
    x = torch.randn(8, 17, device=device)
    rng_state = ops.dropout(x, 0.3)[1]
    for op, args in [
        (ops.dropout.default, (x, 0.3, None)),
        (ops.dropout.default, (x.clone().requires_grad_(), 0.3, None)),
        (ops.dropout_.default, (x.clone(), 0.3, None)),
        (ops.dropout_backward.default, (x.clone().requires_grad_(), rng_state, 0.3)),
    ]:
        torch.library.opcheck(op, args)


@pytest.mark.traces
def test_compile_fullgraph_matches_eager(device):
    module = fastdrop.nn.Dropout(0.2)

    def step(x):
        h = x * 2
        return F.dropout(h, 0.3) + module(h) + F.dropout(h.clone(), 0.5, inplace=True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(64, 33, device=device, requires_grad=True)
    torch.manual_seed(0)
    eager = step(x)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    torch.manual_seed(0)
    out = compiled(x)
    (out_grad,) = torch.autograd.grad(out.sum(), x)
    assert_identical(out, eager)
    assert_identical(out_grad, eager_grad)


@pytest.mark.slow
def test_compile_with_inductor():
    def step(x):
        return F.dropout(x * 2, 0.3)

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(16, 40, requires_grad=True)
    torch.manual_seed(1)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.manual_seed(1)
    eager = step(x)
    assert_identical(out, eager)
    assert_identical(grad, 2 * oracle.dropout(torch.ones_like(x), eager.detach() != 0, 0.3))
