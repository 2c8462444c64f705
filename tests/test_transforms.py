"""Forward-mode AD and torch.func's transforms: the tangent is masked and
scaled exactly as the primal (the same mask), torch.func.grad / vjp / jacrev /
jacfwd / hessian work for every operator, and gradcheck passes with forward
AD and batched gradients checked. (vmap itself: test_vmap.py.)"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp

import fastdrop
from conftest import assert_identical

FD = fastdrop.functional


def reseeded(seed=0):
    return torch.Generator().manual_seed(seed)


# name -> (call(*inputs, generator), shapes of the inputs). Every input is differentiable.
OPS = {
    "dropout": (lambda x, g: FD.dropout(x, 0.4, generator=g), [(6, 5)]),
    "alpha_dropout": (lambda x, g: FD.alpha_dropout(x, 0.4, True, generator=g), [(6, 5)]),
    "dropout1d": (lambda x, g: FD.dropout1d(x, 0.4, generator=g), [(3, 4, 5)]),
    "dropout2d": (lambda x, g: FD.dropout2d(x, 0.4, generator=g), [(2, 4, 3, 3)]),
    "dropout3d": (lambda x, g: FD.dropout3d(x, 0.4, generator=g), [(2, 3, 2, 2, 2)]),
    "feature_alpha_dropout": (lambda x, g: FD.feature_alpha_dropout(x, 0.4, True, generator=g), [(2, 4, 3, 3)]),
    "drop_path": (lambda x, g: FD.drop_path(x, 0.4, True, generator=g), [(8, 3, 2)]),
    "drop_path_unscaled": (lambda x, g: FD.drop_path(x, 0.4, True, scale_by_keep=False, generator=g), [(8, 3, 2)]),
    "stochastic_depth_batch": (lambda x, g: FD.stochastic_depth(x, 0.4, "batch", generator=g), [(8, 3, 2)]),
    "drop_path_add": (lambda r, x, g: FD.drop_path_add(r, x, 0.4, generator=g), [(8, 3, 2), (8, 3, 2)]),
    "dropout_add": (lambda r, x, g: FD.dropout_add(r, x, 0.4, generator=g), [(6, 5), (6, 5)]),
    "bias_dropout_add": (lambda x, b, r, g: FD.bias_dropout_add(x, b, r, 0.4, generator=g), [(6, 5), (5,), (6, 5)]),
    "dropout_with_seed": (lambda x, g: FD.dropout_with_seed(x, 0.4, seed=12345, offset=8), [(6, 5)]),
    "indexed_dropout": (
        lambda x, g: torch.ops.fastdrop.indexed_dropout(x, 0.4, "alpha_dropout", [0, 1], 3, g)[0],
        [(6, 5)],
    ),
}


def inputs_of(name, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(100 + seed)
    return tuple(torch.randn(shape, generator=generator, dtype=dtype) for shape in OPS[name][1])


def bound(name, seed=0):
    """The op with its generator reset on every call: a deterministic function, as transforms need."""
    call = OPS[name][0]
    return lambda *inputs: call(*inputs, reseeded(seed))


@pytest.mark.parametrize("name", OPS)
def test_jvp_masks_the_tangent_as_the_primal(name):
    f = bound(name)
    primals = inputs_of(name)
    tangents = inputs_of(name, seed=1)
    out, tangent = jvp(f, primals, tangents)
    assert_identical(out, f(*primals))
    # The Jacobian is diagonal in the dropped operand (and the identity in a
    # residual), so J t is what the backward gives t: the same mask, the same scale.
    _, pullback = vjp(f, *primals)
    if name in ("dropout_add", "drop_path_add"):
        expected = tangents[0] + pullback(tangents[1])[1]
    elif name == "bias_dropout_add":
        expected = tangents[2] + pullback(tangents[0] + tangents[1])[0]
    else:
        expected = pullback(tangents[0])[0]
    assert_identical(tangent, expected)


def test_jvp_of_dropout_is_the_mask_times_the_scale():
    # The example: jvp(dropout(a, .5), ones) is the mask times 2, never zeros.
    x = torch.randn(1000)
    out, tangent = jvp(lambda a: FD.dropout(a, 0.5, generator=reseeded()), (x,), (torch.ones_like(x),))
    mask = FD.dropout(torch.ones_like(x), 0.5, generator=reseeded())
    assert_identical(tangent, mask)
    assert set(tangent.unique().tolist()) == {0.0, 2.0}
    assert_identical(out == 0, mask == 0)


@pytest.mark.parametrize("name", ["dropout", "alpha_dropout", "dropout2d", "drop_path_add", "bias_dropout_add"])
def test_forward_ad_dual_tensors(name):
    f = bound(name)
    primals, tangents = inputs_of(name), inputs_of(name, seed=1)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        out = fwAD.unpack_dual(f(*duals))
    expected_out, expected_tangent = jvp(f, primals, tangents)
    assert out.tangent is not None
    assert_identical(out.primal, expected_out)
    assert_identical(out.tangent, expected_tangent)


@pytest.mark.parametrize(
    "name, call",
    [
        ("dropout", lambda x, g: FD.dropout(x, 0.4, inplace=True, generator=g)),
        ("alpha_dropout", lambda x, g: FD.alpha_dropout(x, 0.4, True, inplace=True, generator=g)),
        ("dropout2d", lambda x, g: FD.dropout2d(x, 0.4, inplace=True, generator=g)),
        ("feature_alpha_dropout", lambda x, g: FD.feature_alpha_dropout(x, 0.4, True, inplace=True, generator=g)),
    ],
)
def test_forward_ad_in_place_masks_primal_and_tangent_together(name, call):
    primal, tangent = inputs_of(name), inputs_of(name, seed=1)
    with fwAD.dual_level():
        dual = fwAD.make_dual(primal[0].clone(), tangent[0].clone())
        result = call(dual, reseeded())
        assert result is dual
        out = fwAD.unpack_dual(dual)
    expected_out, expected_tangent = jvp(bound(name), primal, tangent)
    assert_identical(out.primal, expected_out)
    assert_identical(out.tangent, expected_tangent)


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_with_forward_ad_and_batched_gradients(name):
    f = bound(name)
    inputs = tuple(x.requires_grad_() for x in inputs_of(name, torch.float64))
    assert torch.autograd.gradcheck(
        f, inputs, check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True
    )
    assert torch.autograd.gradgradcheck(f, inputs, check_fwd_over_rev=True, check_rev_over_rev=True)


@pytest.mark.parametrize("name", OPS)
def test_grad_vjp_and_jacrev(name):
    f = bound(name)
    primals = inputs_of(name)
    weights = torch.randn(f(*primals).shape)
    out, pullback = vjp(f, *primals)
    # grad of <w, f(x)> is the pullback of w; jacrev is the pullback of each basis vector.
    grads = grad(lambda *xs: (f(*xs) * weights).sum(), argnums=tuple(range(len(primals))))(*primals)
    for actual, expected in zip(grads, pullback(weights)):
        assert_identical(actual, expected)
    jacobian = jacrev(f)(*primals)
    basis = torch.eye(out.numel()).view(out.numel(), *out.shape)
    rows = torch.stack([pullback(e)[0] for e in basis])
    torch.testing.assert_close(jacobian.reshape(out.numel(), -1), rows.reshape(out.numel(), -1), rtol=0, atol=0)


@pytest.mark.parametrize("name", OPS)
def test_hessian_is_zero(name):
    # Every op is affine in its inputs. jacfwd's vmap refuses random ops under randomness="error",
    # as torch's does for its dropouts (torch.func.hessian of F.dropout raises): forward-over-reverse
    # takes randomness="same"; dropout_with_seed draws nothing, so plain hessian works.
    f = bound(name)
    primals = inputs_of(name)

    def scalar(x):
        return (f(x, *primals[1:]) ** 1).sum() * 1.5

    if name == "dropout_with_seed":
        assert_identical(hessian(scalar)(primals[0]), torch.zeros(*primals[0].shape, *primals[0].shape))
    second = jacfwd(jacrev(scalar), randomness="same")(primals[0])
    assert_identical(second, torch.zeros(*primals[0].shape, *primals[0].shape))


def test_jacfwd_and_jacrev_agree():
    x = torch.randn(7)
    forward = jacfwd(lambda t: FD.alpha_dropout(t, 0.3, True, generator=reseeded()), randomness="same")(x)
    reverse = jacrev(lambda t: FD.alpha_dropout(t, 0.3, True, generator=reseeded()))(x)
    assert_identical(forward, reverse)
    assert bool((forward == torch.diag(torch.diagonal(forward))).all())  # diagonal: element-wise decisions


def test_forward_over_reverse_hessian_vector_product():
    # jvp of grad: the tangent goes through the backward operator, which carries its own forward AD.
    x, v = torch.randn(10), torch.randn(10)
    f = lambda t: (FD.dropout(t, 0.5, generator=reseeded()) ** 2).sum()  # noqa: E731
    _, hvp = jvp(grad(f), (x,), (v,))
    mask = FD.dropout(torch.ones(10), 0.5, generator=reseeded())
    torch.testing.assert_close(hvp, 2 * mask * mask * v)
