"""Channel dropout (dropout1d/2d/3d, feature_alpha_dropout) and alpha dropout:
their functionals and modules against torch's behaviour (shape rules, warnings,
eval, modules), and one harness that runs every variant (element-wise dropout
too) against torch's arithmetic from the same mask, forward and backward, in
every layout, in place, under gradcheck, opcheck and compile, and for every fp16
value. (Element-wise dropout's own behaviour: test_dropout.py.)"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as torch_F

import fastdrop
import oracle as ref
from conftest import assert_identical, requires_cuda, saved_bytes

F = fastdrop.functional
ops = torch.ops.fastdrop
VARIANT_NAMES = list(ref.VARIANTS)


def shapes_for(name):
    per_row, _ = ref.VARIANTS[name]
    if per_row:
        return [(2, 3), (4, 5, 33), (3, 6, 7, 9), (2, 3, 4, 5, 6), (1, 17, 8)]
    return [(1,), (13,), (4, 1001), (2, 3, 4, 5)]


@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_forward_and_backward_match_torch_from_the_same_mask(device, dtype, name, p):
    for shape in shapes_for(name):
        x = torch.randn(shape, device=device).to(dtype).requires_grad_()
        y, rng_state = getattr(ops, name)(x, p)
        mask = ref.variant_mask(name, rng_state, shape, p)
        assert_identical(y, ref.forward(name, x.detach(), mask, p))
        grad = torch.randn_like(y)
        (x_grad,) = torch.autograd.grad(y, x, grad)
        assert_identical(x_grad, ref.backward(name, grad, mask, p))


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_every_layout_gets_the_contiguous_result(device, name):
    base = torch.randn(4, 8, 6, 10, device=device)
    layouts = [
        base.contiguous(memory_format=torch.channels_last),
        base.permute(0, 1, 3, 2),
        base[:, :, ::2, 1:],
        base.transpose(0, 1),
        base[:, :, :3],  # rows of one decision, apart in memory
        base[:1].contiguous(memory_format=torch.channels_last),  # one sample's pixels
        base[:, :, :, :1].contiguous(memory_format=torch.channels_last),
        # channels_last rows longer than the bits buffer (2048): drawn in column chunks
        torch.randn(2, 4500, 3, 2, device=device).contiguous(memory_format=torch.channels_last),
        torch.randn(1, 4500, 3, 2, device=device).contiguous(memory_format=torch.channels_last),
    ]
    for x in layouts:
        torch.manual_seed(3)
        y, _ = getattr(ops, name)(x, 0.4)
        torch.manual_seed(3)
        y_contiguous, _ = getattr(ops, name)(x.contiguous(), 0.4)
        assert_identical(y.contiguous(), y_contiguous)
        assert y.stride() == torch.empty_like(x).stride()


@pytest.mark.parametrize("name", ["feature_dropout", "feature_alpha_dropout"])
def test_channels_are_dropped_whole(device, name):
    x = torch.randn(8, 16, 5, 7, device=device)
    y, rng_state = getattr(ops, name)(x, 0.5)
    dropped_value = ref.forward(
        name, torch.zeros(1, 1, 1, 1, device=device), torch.zeros(1, 1, 1, 1, dtype=torch.bool), 0.5
    )
    dropped = (y == dropped_value).flatten(2)
    whole = dropped.all(-1) | (~dropped).all(-1)
    assert whole.all()
    assert 0 < dropped.all(-1).sum() < 8 * 16


def test_feature_dropout_needs_two_dims():
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions in the input"):
        ops.feature_dropout(torch.ones(5), 0.5)


# ------------------------------------------------------ shape rules, warnings ----


def outcome(fn, *args, **kwargs):
    """(exception type and message, or None; the warnings raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(*args, **kwargs)
            error = None
        except Exception as exc:  # noqa: BLE001  (compared with torch's)
            error = (type(exc), str(exc))
    return error, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", ["dropout1d", "dropout2d", "dropout3d"])
@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5, 6])
def test_shape_rules_errors_and_warnings_are_torchs(name, rank):
    x = torch.randn(*([3] * rank))
    ours = outcome(getattr(F, name), x, 0.5)
    theirs = outcome(getattr(torch_F, name), x, 0.5)
    assert ours == theirs


@pytest.mark.parametrize("name, batched_rank", [("dropout1d", 3), ("dropout3d", 5)])
def test_unbatched_input_is_a_batch_of_one(device, name, batched_rank):
    x = torch.randn(*([4] * (batched_rank - 1)), device=device)
    fn = getattr(F, name)
    torch.manual_seed(11)
    unbatched = fn(x, 0.5)
    torch.manual_seed(11)
    batched = fn(x.unsqueeze(0), 0.5)
    assert_identical(unbatched, batched.squeeze(0))
    torch.manual_seed(11)
    inplace = fn(x.clone(), 0.5, inplace=True)
    assert_identical(inplace, unbatched)


def test_dropout2d_takes_3d_input_as_n_c_l(device):
    x = torch.randn(6, 5, 40, device=device)
    with pytest.warns(UserWarning, match="interpreted as shape \\(N, C, L\\)"):
        y = F.dropout2d(x, 0.5)
    zero_rows = (y == 0).all(-1)
    assert zero_rows.any() and (~zero_rows).any()
    assert ((y == 0) == zero_rows.unsqueeze(-1)).all()


@pytest.mark.parametrize("name", ["dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"])
def test_bad_probability_raises_torchs_value_error(name):
    x = torch.randn(2, 3, 4, 5)
    ours = outcome(getattr(F, name), x, 1.5, True)
    assert ours[0] == (ValueError, "dropout probability has to be between 0 and 1, but got 1.5")
    assert ours[0] == outcome(getattr(torch_F, name), x, 1.5, True)[0]
    with pytest.raises(ValueError, match="but got nan"):
        getattr(F, name)(x, float("nan"), True)


@pytest.mark.parametrize("name", ["alpha_dropout", "feature_alpha_dropout"])
def test_alpha_variants_default_to_eval_like_torch(name):
    x = torch.randn(2, 3, 4)
    assert getattr(F, name)(x, 0.5) is x
    assert getattr(torch_F, name)(x, 0.5) is x


@pytest.mark.parametrize("name", ["dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"])
@pytest.mark.parametrize("batched", [True, False])
def test_identity_cases_return_the_input_as_torch_does(name, batched):
    # Where torch unsqueezes unbatched input it returns a view, not the input.
    shape = {"dropout1d": (2, 3, 4), "dropout3d": (2, 3, 4, 5, 6)}.get(name, (2, 3, 4, 5))
    shape = shape if batched or name not in ("dropout1d", "dropout3d") else shape[1:]
    ours, theirs = getattr(F, name), getattr(torch_F, name)
    for x in (torch.randn(shape), torch.empty(0, *shape[1:])):
        for p, training in ((0.5, False), (0.0, True), (0.5, True)):
            if x.numel() and p and training:
                continue
            out = ours(x, p, training)
            assert (out is x) == (theirs(x, p, training) is x)
            assert_identical(out, x)


@pytest.mark.parametrize("name", ["dropout2d", "alpha_dropout", "feature_alpha_dropout"])
def test_p_one_matches_torch(device, name):
    x = torch.tensor([[[[1.0, -2.0], [float("inf"), float("nan")]]]], device=device).expand(2, 3, 2, 2).contiguous()
    assert_identical(getattr(F, name)(x, 1.0, True), getattr(torch_F, name)(x, 1.0, True))


# ----------------------------------------------------------------- alpha ----


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_alpha_dropout_keeps_mean_and_std(device, p):
    # torch's own check. With 5000 samples the mean's standard error is 0.014 and
    # the std's about 0.01 (more for large p), so 0.1 leaves well over 5 sigma.
    x = torch.randn(5000, device=device)
    y = F.alpha_dropout(x, p, training=True)
    assert abs(y.mean().item() - x.mean().item()) < 0.1
    assert abs(y.std().item() - x.std().item()) < 0.1


def test_alpha_dropout_is_the_affine_torch_documents(device):
    p = 0.3
    a = 1.0 / math.sqrt((ref.SELU_ALPHA**2 * p + 1) * (1 - p))
    x = torch.randn(10_000, dtype=torch.float64, device=device)
    y, rng_state = ops.alpha_dropout(x, p)
    kept = ref.variant_mask("alpha_dropout", rng_state, x.shape, p).to(device)
    torch.testing.assert_close(y[kept], a * x[kept] + ref.SELU_ALPHA * a * p, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(
        y[~kept], torch.full_like(y[~kept], -ref.SELU_ALPHA * a * (1 - p)), rtol=1e-15, atol=1e-15
    )


# --------------------------------------------------------- in place, autograd ----


@pytest.mark.parametrize("name", ["dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"])
def test_inplace_mutates_and_differentiates(device, name):
    fn = getattr(F, name)
    shape = (4, 6, 20) if name == "dropout1d" else (3, 4, 5, 6, 7) if name == "dropout3d" else (3, 6, 5, 7)
    base = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(2)
    expected = fn(base * 2, 0.4, True)
    torch.manual_seed(2)
    h = base * 2
    out = fn(h, 0.4, True, inplace=True)
    assert out is h
    assert_identical(out, expected)
    grad = torch.randn_like(out)
    (inplace_grad,) = torch.autograd.grad(out, base, grad)
    (expected_grad,) = torch.autograd.grad(expected, base, grad)
    assert_identical(inplace_grad, expected_grad)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_gradcheck_and_gradgradcheck(device, name):
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    op = getattr(ops, name)

    def fn(t):
        return op(t, 0.4, torch.Generator(device).manual_seed(0))[0]

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda t: F.dropout2d(t, 0.5), lambda t: torch_F.dropout2d(t, 0.5)),
        (lambda t: F.alpha_dropout(t, 0.5, True), lambda t: torch_F.alpha_dropout(t, 0.5, True)),
        (lambda t: F.feature_alpha_dropout(t, 0.5, True), lambda t: torch_F.feature_alpha_dropout(t, 0.5, True)),
    ],
    ids=["dropout2d", "alpha_dropout", "feature_alpha_dropout"],
)
def test_saves_sixteen_bytes(device, ours, theirs):
    x = torch.randn(8, 16, 32, 32, device=device, requires_grad=True)
    assert saved_bytes(ours, x) == 16
    assert saved_bytes(theirs, x) > 16


@pytest.mark.traces
def test_opcheck_every_op(device):
    x = torch.randn(4, 6, 9, device=device)
    for name in VARIANT_NAMES:
        rng_state = getattr(ops, name)(x, 0.3)[1]
        torch.library.opcheck(getattr(ops, name).default, (x.clone().requires_grad_(), 0.3, None))
        torch.library.opcheck(getattr(ops, f"{name}_").default, (x.clone(), 0.3, None))
        torch.library.opcheck(getattr(ops, f"{name}_backward").default, (x.clone().requires_grad_(), rng_state, 0.3))


@pytest.mark.traces
def test_compile_fullgraph_with_every_module(device):
    modules = torch.nn.ModuleList(
        [
            fastdrop.nn.Dropout1d(0.2),
            fastdrop.nn.Dropout2d(0.3),
            fastdrop.nn.Dropout3d(0.1),
            fastdrop.nn.AlphaDropout(0.2),
            fastdrop.nn.FeatureAlphaDropout(0.3),
        ]
    )

    def step(x):
        out = modules[0](x.flatten(2)).view_as(x) + modules[1](x) + modules[3](x) + modules[4](x)
        return out + modules[2](x.unsqueeze(2)).squeeze(2)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 6, 5, device=device, requires_grad=True)
    torch.manual_seed(0)
    eager = step(x)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    torch.manual_seed(0)
    out = compiled(x)
    (out_grad,) = torch.autograd.grad(out.sum(), x)
    assert_identical(out, eager)
    assert_identical(out_grad, eager_grad)


# --------------------------------------------------------------- modules ----

MODULES = ["Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"]


@pytest.mark.parametrize("name", MODULES)
def test_modules_match_torch_modules(name):
    ours_cls, theirs_cls = getattr(fastdrop.nn, name), getattr(torch.nn, name)
    for args in [(), (0.3,), (0.7, True)]:
        ours, theirs = ours_cls(*args), theirs_cls(*args)
        assert repr(ours) == repr(theirs)
        assert ours.state_dict() == theirs.state_dict() == {}
        assert isinstance(ours, theirs_cls)
    with pytest.raises(ValueError, match="but got nan"):
        ours_cls(float("nan"))
    module = ours_cls(0.5)
    x = (
        torch.randn(4, 8, 6, 6, 3)
        if name == "Dropout3d"
        else torch.randn(4, 8, 6)
        if name == "Dropout1d"
        else torch.randn(4, 8, 6, 6)
    )
    assert not torch.equal(module(x), x)
    module.eval()
    assert module(x) is x


# ------------------------------------------------------------------ CUDA ----


@requires_cuda
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_cpu_and_cuda_agree_bit_for_bit(dtype, name):
    x = torch.randn(3, 8, 17, 5, device="cuda").to(dtype)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        y, rng_state = getattr(ops, name)(layout, 0.3)
        mask = ref.variant_mask(name, rng_state, layout.shape, 0.3)
        # The CUDA forward equals torch's arithmetic evaluated on the CPU from the same mask.
        assert_identical(y.cpu(), ref.forward(name, layout.cpu(), mask, 0.3))
        grad = torch.randn_like(y)
        backward = getattr(ops, name + "_backward")
        assert_identical(backward(grad, rng_state, 0.3).cpu(), backward(grad.cpu(), rng_state.cpu(), 0.3))


def test_compile_fullgraph_through_the_warning_paths():
    # Inputs for which dropout2d / dropout3d warn in eager mode still compile whole.
    def step(x):
        return F.dropout2d(x, 0.3) + F.dropout3d(x, 0.3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 6, 10)
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        eager = step(x)
    torch.manual_seed(0)
    assert_identical(compiled(x), eager)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", VARIANT_NAMES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(16, 16, 16, 16), (16, 64, 8, 8)])
def test_every_16_bit_value_rounds_as_torch(device, name, layout, dtype, shape):
    # Runs of 256, 64, 16 and 1 elements, with one decision (per channel) or many: the chunk loops
    # through float buffers (a channels_last input's pixels of 16 channels, whole pixels a chunk at a
    # time), fp16's one-pass loops (runs of 32 elements and more: a map, a pixel of 64 channels), and
    # the element loops.
    x = ref.every_half_value(shape, device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y, rng_state = getattr(ops, name)(x, 0.3)
    mask = ref.variant_mask(name, rng_state, x.shape, 0.3)
    assert_identical(y, ref.forward(name, x.detach(), mask, 0.3))
    grad = ref.every_half_value(x.shape, device, shift=12345, dtype=dtype)
    (x_grad,) = torch.autograd.grad(y, x, grad)
    assert_identical(x_grad, ref.backward(name, grad, mask, 0.3))
