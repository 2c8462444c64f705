"""fastdrop::indexed_dropout: element (i_0, ...) takes the contract's decision
for index base + sum_k i_k * strides[k]. Checked against the NumPy statement
of the contract for any strides (zeros, reversed order, long steps), any base,
every variant and dtype, forward, in place and backward; its autograd, forward
AD, opcheck, functionalization and errors."""

import numpy as np
import pytest
import torch

import oracle as ref
from conftest import assert_identical
from oracle import keeps

ops = torch.ops.fastdrop


def decision_indices(shape, strides, base):
    index = torch.full(shape, base, dtype=torch.int64)
    for d, (size, stride) in enumerate(zip(shape, strides)):
        view = [1] * len(shape)
        view[d] = size
        index = index + torch.arange(size, dtype=torch.int64).view(view) * stride
    return index


def keep_of(rng_state, shape, strides, base, p):
    seed, offset = (int(v) & (2**64 - 1) for v in rng_state.cpu().tolist())
    index = decision_indices(shape, strides, base)
    kept = keeps(seed, offset, index.flatten().numpy().astype(np.uint64), p)
    return torch.from_numpy(kept).view(shape)


def expected(variant, x, mask, p, backward=False):
    if variant == "dropout":
        return ref.dropout(x, mask, p)
    if variant == "unscaled":
        return x * (mask.to(x.device, x.dtype) if p < 1 else torch.zeros((), dtype=x.dtype, device=x.device))
    alpha = variant == "alpha_dropout"
    return ref.unfused_grad(x, mask, p, alpha) if backward else ref.unfused(x, mask, p, alpha)


CASES = {
    "row_major": ((3, 5, 7), lambda s: [35, 7, 1], 0),
    "same_batch": ((4, 5, 6), lambda s: [0, 6, 1], 0),
    "channels": ((2, 6, 3, 3), lambda s: [6, 1, 0, 0], 8),
    "reversed": ((5, 9), lambda s: [1, 5], 0),
    "based_off_a_block": ((3, 17), lambda s: [17, 1], 13),
    "long_steps": ((3, 4, 5), lambda s: [7, 2**31 + 5, 2**40], 2**50),
    "all_one_decision": ((4, 4), lambda s: [0, 0], 99),
    "ten_dims": ((2,) * 10, lambda s: [3**k for k in range(10)], 1),
}
VARIANTS = ["dropout", "feature_dropout", "alpha_dropout", "unscaled"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_decisions_follow_the_contract(device, dtype, case, variant):
    shape, strides_of, base = CASES[case]
    strides = strides_of(shape)
    x = torch.randn(shape, device=device).to(dtype)
    generator = torch.Generator().manual_seed(len(case)) if device == "cpu" else None
    for p in (0.3, 1.0):
        out, state = ops.indexed_dropout(x, p, variant, strides, base, generator)
        mask = keep_of(state, shape, strides, base, p)
        assert_identical(out, expected(variant, x, mask, p))
        grad = torch.randn(shape, device=device).to(dtype)
        assert_identical(
            ops.indexed_dropout_backward(grad, state, p, variant, strides, base),
            expected(variant, grad, mask, p, backward=True),
        )
        inplace = x.clone()
        inplace_state = ops.indexed_dropout_(inplace, p, variant, strides, base, generator)
        assert_identical(inplace, expected(variant, x, keep_of(inplace_state, shape, strides, base, p), p))


def test_layouts_do_not_change_decisions(device):
    x = torch.randn(4, 6, 5, device=device)
    strides, base = [0, 1, 6], 3
    out, state = ops.indexed_dropout(x, 0.4, "dropout", strides, base)
    wide = torch.zeros(4, 12, 5, device=device)
    wide[:, ::2] = x
    for layout in (
        x.transpose(0, 2).contiguous().transpose(0, 2),
        x.permute(1, 0, 2).contiguous().permute(1, 0, 2),
        wide[:, ::2],
    ):
        assert_identical(ops.indexed_dropout_backward(layout, state, 0.4, "dropout", strides, base), out)


def test_row_major_strides_are_dropout_and_leading_ones_feature_dropout(device):
    x = torch.randn(3, 4, 5, device=device)
    out, state = ops.dropout(x, 0.3)
    assert_identical(ops.indexed_dropout_backward(x, state, 0.3, "dropout", [20, 5, 1], 0), out)
    out, state = ops.feature_dropout(x, 0.3)
    assert_identical(ops.indexed_dropout_backward(x, state, 0.3, "feature_dropout", [4, 1, 0], 0), out)
    out, state = ops.drop_path(x, 0.3, False, True)
    assert_identical(ops.indexed_dropout_backward(x, state, 0.3, "unscaled", [1, 0, 0], 0), out)


def test_autograd_forward_ad_and_opcheck():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    args = (0.3, "alpha_dropout", [0, 1], 6)

    def f(t):
        return ops.indexed_dropout(t, *args, torch.Generator().manual_seed(0))[0]

    assert torch.autograd.gradcheck(
        f, (x,), check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True
    )
    assert torch.autograd.gradgradcheck(f, (x,))
    state = ops.indexed_dropout(x.detach(), *args)[1]
    for op, op_args in [
        (ops.indexed_dropout.default, (x, *args, None)),
        (ops.indexed_dropout_.default, (x.detach().clone(), *args, None)),
        (ops.indexed_dropout_backward.default, (x, state, *args)),
    ]:
        torch.library.opcheck(op, op_args)


def test_in_place_forms_functionalize_to_the_out_of_place_operators():
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x):
        y = x * 2
        torch.ops.fastdrop.dropout_(y, 0.3)
        torch.ops.fastdrop.feature_alpha_dropout_(y, 0.3)
        torch.ops.fastdrop.indexed_dropout_(y, 0.3, "dropout", [0, 1], 0)
        return y

    graph = make_fx(torch.func.functionalize(f), tracing_mode="fake")(torch.randn(3, 4)).graph
    targets = {node.target for node in graph.nodes if node.op == "call_function"}
    assert {ops.dropout.default, ops.feature_alpha_dropout.default, ops.indexed_dropout.default} <= targets
    assert not any("auto_functionalized" in str(t) or str(t).endswith("_.default") for t in targets)
    # and the functionalized program computes what the eager one does
    x = torch.randn(3, 4)
    torch.manual_seed(5)
    eager = f(x)
    torch.manual_seed(5)
    assert_identical(torch.func.functionalize(f)(x), eager)


def test_meta_and_symbolic_shapes():
    meta = torch.empty(3, 4, device="meta")
    out, state = ops.indexed_dropout(meta, 0.3, "dropout", [4, 1], 0)
    assert out.shape == (3, 4) and out.device.type == "meta" and state.shape == (2,)

    @torch.compile(fullgraph=True, dynamic=True, backend="aot_eager")
    def f(x):
        return ops.indexed_dropout(x, 0.3, "dropout", [0, *x.stride()[1:]], 2)[0]

    x = torch.randn(3, 5)
    torch.manual_seed(1)
    compiled = f(x)
    torch.manual_seed(1)
    assert_identical(compiled, ops.indexed_dropout(x, 0.3, "dropout", [0, 1], 2)[0])


@pytest.mark.parametrize(
    "strides, base, match",
    [
        ([1], 0, "one stride per dim of the input \\(2\\), but got 1"),
        ([-1, 1], 0, "must be non-negative"),
        ([1, 1], -1, "index_base must be in"),
        ([2**58, 1], 0, "below 2\\^59"),
        ([1, 1], 2**59, "index_base must be in"),
    ],
)
def test_bad_decision_indices_are_refused(strides, base, match):
    x = torch.randn(3, 4)
    for call in (
        lambda: ops.indexed_dropout(x, 0.3, "dropout", strides, base),
        lambda: ops.indexed_dropout_(x.clone(), 0.3, "dropout", strides, base),
        lambda: ops.indexed_dropout_backward(x, torch.zeros(2, dtype=torch.long), 0.3, "dropout", strides, base),
        lambda: ops.indexed_dropout(x.to("meta"), 0.3, "dropout", strides, base),
    ):
        with pytest.raises(RuntimeError, match=match):
            call()


def test_bad_variants_probabilities_and_dtypes_are_refused():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="variant must be 'dropout'"):
        ops.indexed_dropout(x, 0.3, "bernoulli", [4, 1])
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        ops.indexed_dropout(x, 1.5, "dropout", [4, 1])
    with pytest.raises(RuntimeError, match="floating-point"):
        ops.indexed_dropout(torch.ones(3, 4, dtype=torch.long), 0.3, "dropout", [4, 1])


def test_an_empty_input_still_draws():
    generator = torch.Generator().manual_seed(0)
    out, state = ops.indexed_dropout(torch.empty(0, 3), 0.3, "dropout", [3, 1], 0, generator)
    assert out.shape == (0, 3) and state.shape == (2,)
