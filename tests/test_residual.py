"""The fused residual epilogues (drop_path_add, dropout_add, bias_dropout_add)
against residual + timm's drop path, residual + torch's dropout and Megatron's
bias-dropout-add, from the same draws."""

import pytest
import torch

import fastdrop
import oracle as ref
from conftest import WIDER_RESIDUALS, assert_identical, dtype_pair_id, requires_cuda, saved_bytes
from oracle import keep_mask

F = fastdrop.functional
ops = torch.ops.fastdrop


# ------------------------------------------------------- residual epilogues ----


@pytest.mark.parametrize("p", [0.2, 0.7, 1.0])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_add_is_residual_plus_timm_drop_path(device, dtype, p, scale_by_keep):
    shape = (16, 3, 5, 4)
    residual = torch.randn(shape, device=device).to(dtype).requires_grad_()
    branch = torch.randn(shape, device=device).to(dtype).requires_grad_()
    y, rng_state = ops.drop_path_add(residual, branch, p, scale_by_keep)
    keep = ref.sample_mask(rng_state, shape[0], p)
    assert_identical(y, residual.detach() + ref.timm_drop_path(branch.detach(), keep, p, scale_by_keep))
    grad = torch.randn_like(y)
    grad_residual, grad_branch = torch.autograd.grad(y, [residual, branch], grad)
    assert grad_residual is grad  # the incoming gradient itself, no copy
    assert_identical(grad_branch, ref.timm_drop_path(grad, keep, p, scale_by_keep))


def test_drop_path_add_never_reads_a_dropped_branch(device):
    residual = torch.randn(64, 40, device=device)
    branch = torch.full((64, 40), float("nan"), device=device)
    y, rng_state = ops.drop_path_add(residual, branch, 0.5)
    dropped = ~ref.sample_mask(rng_state, 64, 0.5).to(device)
    assert dropped.any() and (~dropped).any()
    # Had the NaN been read (as x * 0 reads it), these rows would be NaN.
    assert_identical(y[dropped], residual[dropped])
    assert y[~dropped].isnan().all()


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_dropout_add_is_residual_plus_dropout(device, dtype, p):
    residual = torch.randn(6, 1001, device=device).to(dtype).requires_grad_()
    x = torch.randn(6, 1001, device=device).to(dtype).requires_grad_()
    y, rng_state = ops.dropout_add(residual, x, p)
    mask = keep_mask(rng_state, x.shape, p)
    assert_identical(y, residual.detach() + ref.dropout(x.detach(), mask, p))
    grad = torch.randn_like(y)
    grad_residual, grad_x = torch.autograd.grad(y, [residual, x], grad)
    assert grad_residual is grad
    assert_identical(grad_x, ref.dropout(grad, mask, p))


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(4, 9, 24), (7, 13), (5,)])
def test_bias_dropout_add_is_megatrons_epilogue(device, dtype, p, shape):
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    bias = torch.randn(shape[-1], device=device).to(dtype).requires_grad_()
    residual = torch.randn(shape, device=device).to(dtype).requires_grad_()
    y, rng_state = ops.bias_dropout_add(x, bias, residual, p)
    mask = keep_mask(rng_state, shape, p)
    # Megatron's bias_dropout_add, in torch ops, with fastdrop's mask.
    h = x + bias
    expected = residual + ref.dropout(h, mask, p)
    assert_identical(y, expected)
    grad = torch.randn_like(y)
    grad_x, grad_bias, grad_residual = torch.autograd.grad(y, [x, bias, residual], grad)
    # torch's fused dropout backward, and autograd's reduction for a broadcast operand.
    grad_h = ref.dropout(grad, mask, p)
    assert_identical(grad_x, grad_h)
    assert_identical(grad_bias, grad_h.sum_to_size(bias.shape))
    assert grad_residual is grad


def test_eval_forms_are_plain_sums(device):
    residual, x = torch.randn(3, 4, device=device), torch.randn(3, 4, device=device)
    bias = torch.randn(4, device=device)
    assert_identical(F.drop_path_add(residual, x, 0.5, training=False), residual + x)
    assert_identical(F.dropout_add(residual, x, 0.5, training=False), residual + x)
    assert_identical(F.bias_dropout_add(x, bias, residual, 0.5, training=False), residual + (x + bias))
    assert_identical(F.dropout_add(residual, x, 0.0), residual + x)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r, x, b: F.drop_path_add(r, x[:2], 0.5), "residual and branch must have the same shape"),
        (
            lambda r, x, b: F.dropout_add(r, x.double(), 0.5),
            "residual must have the input.s dtype or a wider float dtype",
        ),
        (lambda r, x, b: F.bias_dropout_add(x, b[:3], r, 0.5), "bias must be 1-D with the size of input's last dim"),
        (lambda r, x, b: F.bias_dropout_add(x, b.double(), r, 0.5), "bias must have the input's dtype"),
        (lambda r, x, b: ops.drop_path_add(r, x[:2], 0.5), "residual and branch must have the same shape"),
        (lambda r, x, b: ops.bias_dropout_add(x, b[:3], r, 0.5), "bias must be 1-D"),
        (lambda r, x, b: ops.dropout_add(r, x.t(), 0.5), "residual and input must have the same shape"),
    ],
)
def test_mismatched_operands_raise(call, message):
    residual, x, bias = torch.randn(4, 5), torch.randn(4, 5), torch.randn(5)
    with pytest.raises(RuntimeError, match=message):
        call(residual, x, bias)


def test_mismatched_operands_raise_in_eval_mode_too():
    # Eval mode adds with torch, which would broadcast silently.
    residual, x, bias = torch.randn(4, 5), torch.randn(1, 5), torch.randn(5)
    with pytest.raises(RuntimeError, match="residual and branch must have the same shape"):
        F.drop_path_add(residual, x, 0.5, training=False)
    with pytest.raises(RuntimeError, match="residual and input must have the same shape"):
        F.dropout_add(residual, x, 0.5, training=False)
    with pytest.raises(RuntimeError, match="bias must be 1-D"):
        F.bias_dropout_add(residual, bias[None], residual, 0.5, training=False)


@requires_cuda
def test_mismatched_devices_raise():
    residual, x = torch.randn(4, 5), torch.randn(4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="must be on the same device"):
        F.dropout_add(residual, x, 0.5)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        F.drop_path_add(residual, x, 0.5, training=False)


def test_channels_last_residuals(device):
    residual = torch.randn(8, 6, 5, 7, device=device).contiguous(memory_format=torch.channels_last)
    branch = torch.randn(8, 6, 5, 7, device=device).contiguous(memory_format=torch.channels_last)
    for op, args in [(ops.drop_path_add, (0.5,)), (ops.dropout_add, (0.5,))]:
        torch.manual_seed(1)
        y, _ = op(residual, branch, *args)
        torch.manual_seed(1)
        y_contiguous, _ = op(residual.contiguous(), branch.contiguous(), *args)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_identical(y.contiguous(), y_contiguous)


# ------------------------------------------------- autograd, opcheck, compile ----


def test_fused_forms_save_sixteen_bytes(device):
    r, x = (torch.randn(16, 64, device=device, requires_grad=True) for _ in range(2))
    b = torch.randn(64, device=device, requires_grad=True)
    assert saved_bytes(lambda r, x: F.drop_path_add(r, x, 0.5), r, x) == 16
    assert saved_bytes(lambda r, x: F.dropout_add(r, x, 0.5), r, x) == 16
    assert saved_bytes(lambda x, b, r: F.bias_dropout_add(x, b, r, 0.5), x, b, r) == 16


def test_gradcheck_every_fused_form(device):
    def seeded():
        return torch.Generator(device).manual_seed(0)

    kw = dict(dtype=torch.float64, device=device, requires_grad=True)
    r, x = torch.randn(6, 5, **kw), torch.randn(6, 5, **kw)
    b = torch.randn(5, **kw)
    cases = [
        (lambda r, x: ops.drop_path_add(r, x, 0.4, True, seeded())[0], (r, x)),
        (lambda r, x: ops.dropout_add(r, x, 0.4, seeded())[0], (r, x)),
        (lambda x, b, r: ops.bias_dropout_add(x, b, r, 0.4, seeded())[0], (x, b, r)),
    ]
    for fn, inputs in cases:
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.traces
def test_opcheck_every_fused_form(device):
    r, x = torch.randn(6, 8, device=device), torch.randn(6, 8, device=device)
    b = torch.randn(8, device=device)
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    for op, args in [
        (ops.drop_path_add.default, (grad(r), grad(x), 0.3, True, None)),
        (ops.dropout_add.default, (grad(r), grad(x), 0.3, None)),
        (ops.bias_dropout_add.default, (grad(x), grad(b), grad(r), 0.3, None)),
    ]:
        torch.library.opcheck(op, args)


@pytest.mark.traces
def test_compile_fullgraph(device):
    block = fastdrop.nn.StochasticDepthBlock(torch.nn.Linear(8, 8), 0.3).to(device)

    def step(x, bias, residual):
        h = F.bias_dropout_add(x, bias, residual, 0.1)
        h = F.dropout_add(h, x, 0.2)
        h = F.drop_path(h, 0.3, training=True) + fastdrop.nn.StochasticDepth(0.2, "batch")(h)
        return block(h)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, residual = (torch.randn(16, 8, device=device, requires_grad=True) for _ in range(2))
    bias = torch.randn(8, device=device, requires_grad=True)
    torch.manual_seed(0)
    eager = step(x, bias, residual)
    eager_grads = torch.autograd.grad(eager.sum(), [x, bias, residual])
    torch.manual_seed(0)
    out = compiled(x, bias, residual)
    grads = torch.autograd.grad(out.sum(), [x, bias, residual])
    assert_identical(out, eager)
    for a, b in zip(grads, eager_grads):
        assert_identical(a, b)


@requires_cuda
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_cpu_and_cuda_agree(dtype, scale_by_keep):
    residual = torch.randn(12, 5, 7, 3, device="cuda").to(dtype)
    branch = torch.randn_like(residual)
    y, state = ops.drop_path_add(residual, branch, 0.4, scale_by_keep)
    keep = ref.sample_mask(state, 12, 0.4)
    assert_identical(y.cpu(), residual.cpu() + ref.timm_drop_path(branch.cpu(), keep, 0.4, scale_by_keep))
    grad = torch.randn_like(y)
    assert_identical(
        ops.drop_path_backward(grad, state, 0.4, scale_by_keep, True).cpu(),
        ops.drop_path_backward(grad.cpu(), state.cpu(), 0.4, scale_by_keep, True),
    )
    bias = torch.randn(3, device="cuda").to(dtype)
    y, state = ops.bias_dropout_add(branch, bias, residual, 0.3)
    mask = keep_mask(state, branch.shape, 0.3)
    assert_identical(y.cpu(), residual.cpu() + ref.dropout(branch.cpu() + bias.cpu(), mask, 0.3))


def test_every_fp16_value_in_every_residual_form(device):
    # Each operand takes every fp16 bit pattern, in another order than the others.
    x, residual = ref.every_half_value((64, 1024), device), ref.every_half_value((64, 1024), device, shift=777)
    bias = ref.every_half_value((64, 1024), device, shift=4242)[5]
    y, rng_state = ops.dropout_add(residual, x, 0.3)
    assert_identical(y, residual + ref.dropout(x, keep_mask(rng_state, x.shape, 0.3), 0.3))
    y, rng_state = ops.bias_dropout_add(x, bias, residual, 0.3)
    assert_identical(y, residual + ref.dropout(x + bias, keep_mask(rng_state, x.shape, 0.3), 0.3))
    y, rng_state = ops.drop_path_add(residual, x, 0.3)
    keep = ref.sample_mask(rng_state, 64, 0.3)
    # A dropped sample's branch is never read (its NaNs and infinities too): the residual itself.
    expected = torch.where(keep[:, None].to(device), residual + ref.timm_drop_path(x, keep, 0.3, True), residual)
    assert_identical(y, expected)


# ------------------------------------- mixed precision: a residual wider than the branch ----

WIDER = WIDER_RESIDUALS
WIDER_IDS = [dtype_pair_id(pair) for pair in WIDER]


@pytest.mark.parametrize("branch_dtype, residual_dtype", WIDER, ids=WIDER_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "branch_transposed"])
def test_a_wider_residual_is_torchs_type_promotion(device, branch_dtype, residual_dtype, layout):
    # Megatron's and flash-attention's residual_in_fp32: residual + dropout(branch) in torch
    # promotes the branch's dropped value (rounded to its own dtype) to the residual's dtype.
    p, shape = 0.3, (8, 6, 5, 8)
    residual, x = ref.residual_and_branch(device, shape, branch_dtype, residual_dtype, layout)
    bias = torch.randn(shape[-1], device=device).to(branch_dtype).requires_grad_()
    grad = torch.randn(shape, device=device, dtype=torch.float64).to(residual_dtype)
    # Backward: autograd hands the branch the gradient cast to its dtype, then torch's dropout
    # backward (or timm's x * random_tensor) applies the mask; the residual takes the gradient itself.
    narrow = grad.to(branch_dtype)

    y, state = ops.dropout_add(residual, x, p)
    mask = keep_mask(state, shape, p)
    expected = residual + ref.dropout(x, mask, p)
    check_mixed(y, expected, residual, (residual, x), grad, (grad, ref.dropout(narrow, mask, p)))

    y, state = ops.bias_dropout_add(x, bias, residual, p)
    mask = keep_mask(state, shape, p)
    expected = residual + ref.dropout(x + bias, mask, p)
    grad_h = ref.dropout(narrow, mask, p)
    check_mixed(y, expected, residual, (x, bias, residual), grad, (grad_h, grad_h.sum_to_size(bias.shape), grad))

    y, state = ops.drop_path_add(residual, x, p)
    keep = ref.sample_mask(state, shape[0], p)
    expected = residual + ref.timm_drop_path(x, keep, p)
    check_mixed(y, expected, residual, (residual, x), grad, (grad, ref.timm_drop_path(narrow, keep, p)))


def check_mixed(y, expected, residual, inputs, grad, expected_grads):
    assert y.dtype == residual.dtype
    if residual.is_contiguous() or residual.is_contiguous(memory_format=torch.channels_last):
        assert y.stride() == residual.stride()
    assert_identical(y, expected)
    for g, e, t in zip(torch.autograd.grad(y, inputs, grad), expected_grads, inputs):
        assert g.dtype == t.dtype
        assert_identical(g, e)


@pytest.mark.parametrize("branch_dtype, residual_dtype", WIDER[:1] + WIDER[-1:], ids=WIDER_IDS[:1] + WIDER_IDS[-1:])
def test_a_wider_residual_through_the_functional_forms(device, branch_dtype, residual_dtype):
    residual, x = ref.residual_and_branch(device, (16, 24), branch_dtype, residual_dtype)
    bias = torch.randn(24, device=device).to(branch_dtype)
    for fn in (
        lambda r, x: F.dropout_add(r, x, 0.2),
        lambda r, x: F.bias_dropout_add(x, bias, r, 0.2),
        lambda r, x: F.drop_path_add(r, x, 0.2),
    ):
        torch.manual_seed(3)
        y = fn(residual, x)
        assert y.dtype == residual_dtype
        y.sum().backward()
        assert residual.grad.dtype == residual_dtype and x.grad.dtype == branch_dtype
        residual.grad = x.grad = None
    # Eval mode and p == 0 are torch's promoted sums.
    assert_identical(F.dropout_add(residual, x, 0.2, training=False), residual + x)
    assert_identical(F.drop_path_add(residual, x, 0.0), residual + x)
    assert_identical(F.bias_dropout_add(x, bias, residual, 0.2, training=False), residual + (x + bias))


def test_every_fp16_value_beside_an_fp32_residual(device):
    x = ref.every_half_value((64, 1024), device)
    residual = ref.every_half_value((64, 1024), device, shift=777).float() * 1.25
    y, rng_state = ops.dropout_add(residual, x, 0.3)
    assert_identical(y, residual + ref.dropout(x, keep_mask(rng_state, x.shape, 0.3), 0.3))
    y, rng_state = ops.drop_path_add(residual, x, 0.3)
    keep = ref.sample_mask(rng_state, 64, 0.3)
    expected = torch.where(keep[:, None].to(device), residual + ref.timm_drop_path(x, keep, 0.3, True), residual)
    assert_identical(y, expected)


@pytest.mark.parametrize("branch_dtype, residual_dtype", WIDER, ids=WIDER_IDS)
def test_a_wider_residual_is_added_without_a_cast_copy(branch_dtype, residual_dtype):
    residual = torch.randn(64, 64, dtype=residual_dtype)
    x = torch.randn(64, 64).to(branch_dtype)
    bias = torch.randn(64).to(branch_dtype)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.dropout_add(residual, x, 0.3)
        ops.bias_dropout_add(x, bias, residual, 0.3)
        ops.drop_path_add(residual, x, 0.3)
    called = {event.name for event in prof.events()}
    assert {"fastdrop::dropout_add", "fastdrop::bias_dropout_add", "fastdrop::drop_path_add"} <= called
    assert not called & {"aten::to", "aten::_to_copy", "aten::copy_"}, called


def test_forward_ad_of_a_wider_residual(device):
    import torch.autograd.forward_ad as fwAD

    residual = torch.randn(12, 10, device=device)
    x = torch.randn(12, 10, device=device).to(torch.bfloat16)
    t_residual, t_x = torch.randn_like(residual), torch.randn_like(x)
    for name, call in [
        ("dropout_add", lambda r, x: ops.dropout_add(r, x, 0.4, torch.Generator(device).manual_seed(5))),
        ("drop_path_add", lambda r, x: ops.drop_path_add(r, x, 0.4, True, torch.Generator(device).manual_seed(5))),
    ]:
        for tangents in [(t_residual, t_x), (None, t_x), (t_residual, None)]:
            with fwAD.dual_level():
                duals = [t if d is None else fwAD.make_dual(t, d) for t, d in zip((residual, x), tangents)]
                y, state = call(*duals)
                tangent = fwAD.unpack_dual(y).tangent
            assert tangent.dtype == torch.float32
            expected = torch.zeros_like(residual) if tangents[0] is None else tangents[0]
            if tangents[1] is not None:
                if name == "dropout_add":
                    masked = ref.dropout(tangents[1], keep_mask(state, x.shape, 0.4), 0.4)
                else:
                    masked = ref.timm_drop_path(tangents[1], ref.sample_mask(state, 12, 0.4), 0.4)
                expected = expected + masked if tangents[0] is not None else masked.float()
            assert_identical(tangent, expected)


@pytest.mark.parametrize(
    "residual_dtype, branch_dtype",
    [
        (torch.float16, torch.bfloat16),  # neither is wider: torch would promote both to float32
        (torch.bfloat16, torch.float16),
        (torch.float32, torch.float64),  # a narrower residual
        (torch.float16, torch.float32),
        (torch.int32, torch.float32),
        (torch.complex64, torch.float32),
    ],
)
def test_a_residual_that_is_not_wider_raises(residual_dtype, branch_dtype):
    residual = torch.ones(4, 8, dtype=residual_dtype)
    x, bias = torch.randn(4, 8).to(branch_dtype), torch.randn(8).to(branch_dtype)
    message = "residual must have the (input|branch)'s dtype or a wider float dtype"
    for call in (
        lambda: ops.dropout_add(residual, x, 0.5),
        lambda: ops.bias_dropout_add(x, bias, residual, 0.5),
        lambda: ops.drop_path_add(residual, x, 0.5),
        lambda: F.dropout_add(residual, x, 0.5),
        lambda: F.dropout_add(residual, x, 0.5, training=False),
        lambda: F.bias_dropout_add(x, bias, residual, 0.5),
        lambda: F.drop_path_add(residual, x, 0.5, training=False),
    ):
        with pytest.raises(RuntimeError, match=message):
            call()


def test_the_bias_keeps_the_branchs_dtype():
    residual, x, bias = torch.randn(4, 8), torch.randn(4, 8).to(torch.bfloat16), torch.randn(8)
    for call in (ops.bias_dropout_add, F.bias_dropout_add):
        with pytest.raises(RuntimeError, match="bias must have the input's dtype"):
            call(x, bias, residual, 0.5)


@pytest.mark.traces
def test_opcheck_and_compile_with_a_wider_residual(device):
    r = torch.randn(6, 8, device=device, requires_grad=True)
    x = torch.randn(6, 8, device=device).to(torch.bfloat16).requires_grad_()
    b = torch.randn(8, device=device).to(torch.bfloat16).requires_grad_()
    for op, args in [
        (ops.drop_path_add.default, (r, x, 0.3, True, None)),
        (ops.dropout_add.default, (r, x, 0.3, None)),
        (ops.bias_dropout_add.default, (x, b, r, 0.3, None)),
    ]:
        torch.library.opcheck(op, args)

    def step(x, b, r):
        return F.drop_path_add(F.bias_dropout_add(x, b, r, 0.1), x, 0.3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    eager = step(x, b, r)
    eager_grads = torch.autograd.grad(eager.sum(), [x, b, r])
    torch.manual_seed(0)
    out = compiled(x, b, r)
    assert out.dtype == torch.float32
    assert_identical(out, eager)
    for a, e in zip(torch.autograd.grad(out.sum(), [x, b, r]), eager_grads):
        assert_identical(a, e)
