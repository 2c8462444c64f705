"""torch.vmap of fastdrop with torch's randomness semantics, as PyTorch's own
TestRandomness (test/functorch/test_vmap.py) asserts them for its dropouts,
and, beyond those, exactly: randomness="same" gives every slice the mask an
unbatched call with the same generator state gives it, "different" gives the
slices the masks of one call on the stacked batch. Batched gradients (vmap of
grad, jacrev, jacfwd) apply the mask the forward drew."""

import contextlib
import functools
import warnings

import pytest
import torch
from torch.func import grad, jacfwd, jacrev, vmap

import fastdrop
from conftest import assert_identical

FD = fastdrop.functional
ops = torch.ops.fastdrop
RANDOMNESS_ERROR = r"called random operation while in randomness error mode"
B0 = 4


@contextlib.contextmanager
def no_fallback():
    """Fails on vmap's for-loop fallback (the warning torch emits where an op has no batching rule)."""
    previous = torch._C._debug_only_are_vmap_fallback_warnings_enabled()
    torch._C._debug_only_display_vmap_fallback_warnings(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        fallbacks = [str(w.message) for w in caught if "performance drop" in str(w.message)]
        assert not fallbacks, fallbacks
    finally:
        torch._C._debug_only_display_vmap_fallback_warnings(previous)


# --- PyTorch's TestRandomness, with torch.nn.functional's dropouts replaced by fastdrop's ---


def image(batched_input, device, dims=2):
    """torch's test input: ones of (3, 3, 14, 14) per slice, the batch first, last or absent."""
    shape = {"first": [B0, 3, 3, 14, 14], "last": [3, 3, 14, 14, B0], "none": [3, 3, 14, 14]}[batched_input]
    x = torch.ones(shape, device=device)
    if dims == 3:
        x = x.unsqueeze(-2 if batched_input == "last" else -1)
    return x


def in_dims(batched_input):
    return ({"first": 0, "last": -1, "none": None}[batched_input], 0)


def assert_all_slices_equal(tensor):
    assert bool((tensor == tensor[0]).all())


def assert_all_slices_unique(tensor):
    equal = vmap(vmap(lambda x, y: (x == y).all(), (0, None)), (None, 0))(tensor, tensor)
    equal.diagonal().zero_()
    assert not bool(equal.any())


RANDOM_OPS = {
    "dropout": lambda t: FD.dropout(t, 0.5),
    "alpha_dropout": lambda t: FD.alpha_dropout(t, 0.5, training=True),
    "dropout2d": lambda t: FD.dropout2d(t, 0.5),
    "dropout3d": lambda t: FD.dropout3d(t, 0.5),
    "feature_alpha_dropout": lambda t: FD.feature_alpha_dropout(t, 0.5, training=True),
}


@pytest.mark.parametrize("randomness", ["error", "same", "different"])
@pytest.mark.parametrize("batched_input", ["first", "last", "none"])
@pytest.mark.parametrize("name", RANDOM_OPS)
def test_torch_randomness_semantics(device, name, randomness, batched_input):
    # Seeded: a channel variant's slice has 9 decisions, so two of the 4 slices of a
    # correct "different" call coincide with probability 6 * 2^-9 (1.2%); unseeded,
    # the suite's 9 such cases would fail one run in ten.
    torch.manual_seed(20261129)
    dims = 3 if name in ("dropout3d", "feature_alpha_dropout") else 2

    def op(t, ignored):
        return RANDOM_OPS[name](torch.ones_like(t))

    always_batched = torch.randn(B0)
    passed = image(batched_input, device, dims)
    if randomness == "error":
        with pytest.raises(RuntimeError, match=RANDOMNESS_ERROR):
            vmap(op, randomness=randomness, in_dims=in_dims(batched_input))(passed, always_batched)
        return
    with no_fallback():
        result = vmap(op, randomness=randomness, in_dims=in_dims(batched_input))(passed, always_batched)
    if name == "dropout":  # >= 1764 decisions: outside (0.25, 0.75) with probability < 1e-40
        p_estimate = result.mean() / 2
        assert 0.25 < p_estimate < 0.75
    if name != "dropout" and name != "alpha_dropout":  # each (n, c) plane all kept or all dropped
        planes = result.sum([-1, -2] if dims == 2 else [-1, -2, -3])
        assert bool(((planes == planes.min()) | (planes == planes.max())).all())
    if randomness == "different":
        assert_all_slices_unique(result)
    else:
        assert_all_slices_equal(result)


@pytest.mark.parametrize("randomness", ["error", "same", "different"])
def test_dropout_of_an_unbatched_tensor_inside_vmap(randomness):
    # torch's test_dropout_unbatched: the output is [B, 1, 3]; only "error" raises.
    x, y = torch.randn(3), torch.randn(1, 3)
    context = pytest.raises(RuntimeError, match=RANDOMNESS_ERROR) if randomness == "error" else contextlib.nullcontext()
    with context:
        result = vmap(lambda x, y: x + FD.dropout(y, p=0.5).mean(1), in_dims=(0, None), randomness=randomness)(x, y)
    if randomness == "different":
        masks = vmap(lambda x: FD.dropout(torch.ones(64), 0.5) + 0 * x, randomness="different")(x)
        assert_all_slices_unique(masks)
    if randomness == "same":
        assert result.shape == (3, 1)


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_chunked_vmap_draws_every_chunk_anew(chunks):
    x = torch.ones(6, 400)  # 400 or 80 decisions a slice: two coincide with probability below 2^-80
    for result in (
        vmap(lambda t: FD.dropout(t, 0.5), randomness="different", chunk_size=chunks)(x),
        vmap(lambda t: FD.dropout1d(t.view(2, 40, 5), 0.5), randomness="different", chunk_size=chunks)(x),
    ):
        assert_all_slices_unique(result)


def test_jacfwd_respects_randomness():
    x = torch.randn(6)
    with pytest.raises(RuntimeError, match=RANDOMNESS_ERROR):
        jacfwd(lambda t: FD.dropout(t, 0.5))(x)
    torch.manual_seed(0)
    jacobian = jacfwd(lambda t: FD.dropout(t, 0.5), randomness="same")(x)
    torch.manual_seed(0)
    mask = FD.dropout(torch.ones(6), 0.5)
    assert_identical(jacobian, torch.diag(mask))
    jacfwd(lambda t: FD.dropout(t, 0.5), randomness="different")(x)


# --- exact semantics: "same" is the unbatched call per slice, "different" the call on the stack ---


def reseeded(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


# name -> (fastdrop call with a generator, its shape per slice, the call on the whole batch that
# "different" is: feature dropouts group (batch, n, c), so their batch merges into n)
def _merged_feature(call):
    def stacked(x, g):
        return call(x.flatten(0, 1), g).view(x.shape)

    return stacked


EXACT = {
    "dropout": (lambda x, g: FD.dropout(x, 0.3, generator=g), (5, 7), None),
    "alpha_dropout": (lambda x, g: FD.alpha_dropout(x, 0.3, True, generator=g), (5, 7), None),
    "dropout1d_unbatched": (lambda x, g: FD.dropout1d(x, 0.3, generator=g), (6, 5), None),
    "dropout2d": (lambda x, g: FD.dropout2d(x, 0.3, generator=g), (2, 6, 3, 3), "merge"),
    "dropout3d": (lambda x, g: FD.dropout3d(x, 0.3, generator=g), (2, 3, 2, 2, 2), "merge"),
    "feature_alpha_dropout": (lambda x, g: FD.feature_alpha_dropout(x, 0.3, True, generator=g), (2, 6, 3, 3), "merge"),
    "drop_path": (lambda x, g: FD.drop_path(x, 0.3, True, generator=g), (6, 4, 3), "merge"),
    "drop_path_unscaled": (
        lambda x, g: FD.drop_path(x, 0.3, True, scale_by_keep=False, generator=g),
        (6, 4, 3),
        "merge",
    ),
    "stochastic_depth_row": (lambda x, g: FD.stochastic_depth(x, 0.3, "row", generator=g), (6, 4, 3), "merge"),
}


def stacked_call(name, x, g):
    call, _, how = EXACT[name]
    return _merged_feature(call)(x, g) if how == "merge" else call(x, g)


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("in_dim", [0, 1, -1])
def test_different_is_one_call_on_the_stacked_batch(device, name, in_dim):
    call, shape, _ = EXACT[name]
    batch = torch.randn(B0, *shape, device=device)
    x = batch.movedim(0, in_dim)
    with no_fallback():
        result = vmap(lambda t: call(t, reseeded(1, device)), in_dims=in_dim, randomness="different")(x)
    assert_identical(result, stacked_call(name, batch, reseeded(1, device)))


@pytest.mark.parametrize("name", EXACT)
def test_different_expands_an_unbatched_input(device, name):
    call, shape, _ = EXACT[name]
    x = torch.randn(shape, device=device)
    result = vmap(lambda t: call(x, reseeded(2, device)) + 0 * t, randomness="different")(
        torch.zeros(B0, *shape, device=device)
    )
    assert_identical(result, stacked_call(name, x.expand(B0, *shape), reseeded(2, device)))


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("in_dim", [0, -1])
def test_same_is_the_unbatched_call_on_every_slice(device, name, in_dim):
    call, shape, _ = EXACT[name]
    batch = torch.randn(B0, *shape, device=device)
    with no_fallback():
        same = vmap(lambda t: call(t, reseeded(3, device)), in_dims=in_dim, randomness="same")
        result = same(batch.movedim(0, in_dim))
    for i in range(B0):
        assert_identical(result[i], call(batch[i], reseeded(3, device)))


def test_stochastic_depth_batch_mode_decides_once_per_slice():
    x = torch.ones(64, 3, 2)
    different = vmap(lambda t: FD.stochastic_depth(t, 0.5, "batch", generator=reseeded(4)), randomness="different")(x)
    assert set(different.flatten().tolist()) <= {0.0, 2.0}
    per_slice = different.flatten(1)
    assert bool((per_slice == per_slice[:, :1]).all())  # one decision per slice
    assert 10 < int((per_slice[:, 0] == 0).sum()) < 54  # and they differ: P(outside) < 1e-8
    same = vmap(lambda t: FD.stochastic_depth(t, 0.5, "batch", generator=reseeded(4)), randomness="same")(x)
    assert_all_slices_equal(same)


FUSED = {
    "dropout_add": lambda r, x, b, g: FD.dropout_add(r, x, 0.3, generator=g),
    "bias_dropout_add": lambda r, x, b, g: FD.bias_dropout_add(x, b, r, 0.3, generator=g),
    "drop_path_add": lambda r, x, b, g: FD.drop_path_add(r, x, 0.3, generator=g),
}


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("randomness", ["same", "different"])
@pytest.mark.parametrize("batched", ["all", "input_only", "residual_only"])
@pytest.mark.parametrize("branch_dtype", [torch.float32, torch.bfloat16], ids=["same_dtype", "fp32_residual"])
def test_fused_forms_under_vmap(device, name, randomness, batched, branch_dtype):
    call = FUSED[name]
    r = torch.randn(B0, 6, 8, device=device)
    x = torch.randn(B0, 6, 8, device=device).to(branch_dtype)
    x[0, 0, :2] = float("nan")  # a dropped sample's NaN branch must not reach drop_path_add's output
    b = torch.randn(8, device=device).to(branch_dtype)
    dims = {"all": (0, 0), "input_only": (None, 0), "residual_only": (0, None)}[batched]
    r_in = r if dims[0] == 0 else r[0]
    x_in = x if dims[1] == 0 else x[0]
    with no_fallback():
        fused = vmap(lambda rr, xx: call(rr, xx, b, reseeded(5, device)), in_dims=dims, randomness=randomness)
        result = fused(r_in, x_in)
    r_full, x_full = r_in.expand(B0, 6, 8), x_in.expand(B0, 6, 8)
    if randomness == "same":
        for i in range(B0):
            assert_identical(result[i], call(r_full[i], x_full[i], b, reseeded(5, device)))
        return
    if name == "drop_path_add":
        expected = call(r_full.flatten(0, 1), x_full.flatten(0, 1), b, reseeded(5, device)).view(B0, 6, 8)
    else:
        expected = call(r_full, x_full, b, reseeded(5, device))
    assert_identical(result, expected)


def test_bias_dropout_add_with_a_batched_bias():
    x, r, b = torch.randn(B0, 3, 8), torch.randn(B0, 3, 8), torch.randn(B0, 8)
    result = vmap(
        lambda xx, bb, rr: FD.bias_dropout_add(xx, bb, rr, 0.3, generator=reseeded(6)), randomness="different"
    )(x, b, r)
    assert_identical(result, r + FD.dropout(x + b[:, None], 0.3, generator=reseeded(6)))


@pytest.mark.parametrize("randomness", ["same", "different"])
def test_nested_vmaps_compose_level_by_level(randomness):
    x = torch.randn(3, B0, 5, 6)
    # outer "different" over dim 0; inner `randomness` over dim 1
    nested = vmap(
        vmap(lambda t: FD.dropout(t, 0.4, generator=reseeded(7)), randomness=randomness), randomness="different"
    )(x)
    if randomness == "different":
        assert_identical(nested, FD.dropout(x, 0.4, generator=reseeded(7)))
    else:  # the outer slices differ, each one's mask the same for every inner slice
        state = ops.dropout(x[:, 0], 0.4, reseeded(7))[1]
        for j in range(B0):
            assert_identical(nested[:, j], ops.dropout_backward(x[:, j], state, 0.4))
    outer_same = vmap(
        vmap(lambda t: FD.dropout(t, 0.4, generator=reseeded(7)), randomness="different"), randomness="same"
    )(x)
    for i in range(3):
        assert_identical(outer_same[i], FD.dropout(x[i], 0.4, generator=reseeded(7)))


@pytest.mark.parametrize("randomness", ["same", "different"])
def test_in_place_under_vmap(randomness):
    batch = torch.randn(B0, 5, 6)
    x = batch.clone()
    vmap(lambda t: FD.dropout(t, 0.4, inplace=True, generator=reseeded(8)), randomness=randomness)(x)
    if randomness == "different":
        assert_identical(x, FD.dropout(batch, 0.4, generator=reseeded(8)))
    else:
        for i in range(B0):
            assert_identical(x[i], FD.dropout(batch[i], 0.4, generator=reseeded(8)))
    unbatched = torch.randn(5, 6)
    if randomness == "different":
        with pytest.raises(RuntimeError, match="different inplace randomness on an unbatched tensor"):
            vmap(lambda t: FD.dropout(unbatched, 0.4, inplace=True) + t, randomness=randomness)(batch)
    else:
        vmap(lambda t: FD.dropout(unbatched, 0.4, inplace=True) + t, randomness=randomness)(batch)


@pytest.mark.parametrize(
    "call",
    [
        lambda t: FD.dropout(t, 0.5),
        lambda t: FD.dropout(t, 0.5, inplace=True),
        lambda t: FD.dropout2d(t, 0.5),
        lambda t: FD.alpha_dropout(t, 0.5, True),
        lambda t: FD.drop_path(t, 0.5, True),
        lambda t: FD.dropout_add(t, t, 0.5),
        lambda t: FD.bias_dropout_add(t, t[0, 0], t, 0.5),
        lambda t: FD.drop_path_add(t, t, 0.5),
        lambda t: FD.dropout(torch.ones(3), 0.5) + t,  # unbatched: torch raises all the same
    ],
    ids=[
        "dropout",
        "dropout_",
        "dropout2d",
        "alpha",
        "drop_path",
        "dropout_add",
        "bias_dropout_add",
        "drop_path_add",
        "unbatched",
    ],
)
def test_error_mode_refuses_every_random_op(call):
    with pytest.raises(RuntimeError, match=RANDOMNESS_ERROR):
        vmap(call)(torch.randn(B0, 2, 3, 3))


def test_eval_mode_and_p_zero_draw_nothing_so_error_mode_allows_them():
    x = torch.randn(B0, 3)
    assert_identical(vmap(lambda t: FD.dropout(t, 0.5, training=False))(x), x)
    assert_identical(vmap(lambda t: FD.dropout(t, 0.0))(x), x)


# --- gradients under vmap: the backward applies the forward's mask ---


def weighted_sum(call):
    weights = torch.arange(1.0, 8.0)

    def f(t):
        return (call(t) * weights).sum()

    return f, weights


@pytest.mark.parametrize("randomness", ["same", "different"])
@pytest.mark.parametrize("name", ["dropout", "alpha_dropout", "drop_path"])
def test_per_sample_gradients_apply_the_forward_mask(name, randomness):
    call = {
        "dropout": lambda t, g: FD.dropout(t, 0.3, generator=g),
        "alpha_dropout": lambda t, g: FD.alpha_dropout(t, 0.3, True, generator=g),
        "drop_path": lambda t, g: FD.drop_path(t, 0.3, True, generator=g),
    }[name]
    weights = torch.arange(1.0, 8.0)
    x = torch.randn(B0, 5, 7)
    with no_fallback():
        grads = vmap(grad(lambda t: (call(t, reseeded(9)) * weights).sum()), randomness=randomness)(x)
        outputs = vmap(lambda t: call(t, reseeded(9)), randomness=randomness)(x)
    # The gradient of sum(w * y) is w times y's derivative, which is y's mask (and scale): read it
    # from the forward on ones, whose derivative is the same (alpha dropout: its gradient factor).
    if name == "alpha_dropout":
        ones_out = vmap(lambda t: call(t, reseeded(9)), randomness=randomness)(torch.zeros_like(x))
        factor = (outputs - ones_out) / x  # a * keep, up to rounding
        torch.testing.assert_close(grads, weights * factor, rtol=1e-5, atol=1e-5)
        return
    scale = vmap(lambda t: call(t, reseeded(9)), randomness=randomness)(torch.ones_like(x))
    assert_identical(grads, weights * scale)


def test_per_sample_gradients_of_a_model_with_fastdrop_modules():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8),
        fastdrop.nn.Dropout(0.3),
        torch.nn.ReLU(),
        fastdrop.nn.Dropout1d(0.2),
        torch.nn.Linear(8, 2),
    )
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(B0, 4, 6), torch.randn(B0, 4, 2)

    def loss(params, sample, target):
        out = torch.func.functional_call(model, params, (sample.unsqueeze(0),))
        return torch.nn.functional.mse_loss(out, target.unsqueeze(0))

    torch.manual_seed(1)
    with no_fallback():
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)
    # The same masks, drawn by one call per module on the whole batch: each sample's loss, backward alone.
    torch.manual_seed(1)
    batch_out = model(x)
    for i in range(B0):
        expected = torch.autograd.grad(
            torch.nn.functional.mse_loss(batch_out[i : i + 1], y[i : i + 1]),
            list(model.parameters()),
            retain_graph=True,
        )
        for (name, actual), wanted in zip(per_sample.items(), expected):
            torch.testing.assert_close(actual[i], wanted, msg=name)


def test_jacrev_of_a_random_op_is_its_mask():
    x = torch.randn(6)
    torch.manual_seed(3)
    jacobian = jacrev(lambda t: FD.dropout(t, 0.5))(x)  # the backward is vmapped, not the draw
    torch.manual_seed(3)
    assert_identical(jacobian, torch.diag(FD.dropout(torch.ones(6), 0.5)))


def test_vmap_over_distinct_rng_states_is_refused():
    states = torch.tensor([[1, 0], [2, 0]])
    with pytest.raises(RuntimeError, match="vmap over different rng_states is not supported"):
        vmap(lambda s: ops.dropout_backward(torch.ones(4), s, 0.5))(states)
    # identical rows are the one state they repeat
    same_rows = torch.tensor([[7, 4], [7, 4]])
    result = vmap(lambda s, t: ops.dropout_backward(t, s, 0.5))(same_rows, torch.ones(2, 4))
    assert_identical(result, ops.dropout_backward(torch.ones(8), same_rows[0], 0.5).view(2, 4))


def test_indexed_dropout_under_vmap_adds_a_level():
    x = torch.randn(B0, 3, 5)
    strides, base = [1, 3], 11  # column-major within a slice, based
    different = vmap(
        lambda t: ops.indexed_dropout(t, 0.4, "dropout", strides, base, reseeded(10))[0], randomness="different"
    )(x)
    span = 1 + 2 * 1 + 4 * 3
    assert_identical(different, ops.indexed_dropout(x, 0.4, "dropout", [span, *strides], base, reseeded(10))[0])
    same = vmap(lambda t: ops.indexed_dropout(t, 0.4, "dropout", strides, base, reseeded(10))[0], randomness="same")(x)
    assert_identical(same, ops.indexed_dropout(x, 0.4, "dropout", [0, *strides], base, reseeded(10))[0])
    with pytest.raises(RuntimeError, match="one stride per dim of the input \\(2\\)"):
        vmap(lambda t: ops.indexed_dropout(t, 0.4, "dropout", [1], 0)[0], randomness="same")(x)


@pytest.mark.parametrize("in_dims", [(0, None), (None, 0)])
def test_fused_operand_checks_under_vmap(in_dims):
    a, b = torch.randn(B0, 3, 4), torch.randn(3, 5)
    args = (a, b) if in_dims == (0, None) else (b, a)
    with pytest.raises(RuntimeError, match="must have the same shape"):
        vmap(lambda r, x: FD.dropout_add(r, x, 0.5), in_dims=in_dims, randomness="different")(*args)


def test_no_fallback_under_vmap_of_every_operator():
    # Each operator and its backward, through functorch's transforms together.
    x = torch.randn(B0, 2, 3, 4)
    calls = [
        functools.partial(FD.dropout, p=0.3),
        functools.partial(FD.alpha_dropout, p=0.3, training=True),
        functools.partial(FD.dropout2d, p=0.3),
        functools.partial(FD.feature_alpha_dropout, p=0.3, training=True),
        functools.partial(FD.drop_path, drop_prob=0.3, training=True),
        lambda t: FD.drop_path_add(t, t, 0.3),
        lambda t: FD.dropout_add(t, t, 0.3),
        lambda t: FD.bias_dropout_add(t, t[0, 0], t, 0.3),
    ]
    with no_fallback():
        for call in calls:
            for randomness in ("same", "different"):
                vmap(grad(lambda t: call(t).sum()), randomness=randomness)(x)
                vmap(jacrev(lambda t: call(t).sum()), randomness=randomness)(x)
