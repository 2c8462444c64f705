"""Shared-mask dims: dropout and alpha_dropout with noise_shape, and LockedDropout.

One decision per index of the noise shape (row-major), shared along its dims of
size 1, scaled as torch's noise tensors scale: checked against the oracle built
from the same draw, and bit for bit against the existing ops where they coincide
(Dropout1d/2d/3d, feature alpha dropout, drop path, plain dropout).
"""

import pytest
import torch

import fastdrop
import oracle as ref
from conftest import assert_identical
from oracle import keep_mask

F = fastdrop.functional
ops = torch.ops.fastdrop


def drawn_state(device):
    """The rng_state the next fastdrop call on device's default generator draws (without drawing it)."""
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if cuda else []):
        return ops.dropout(torch.ones(1, device=device), 0.5)[1]


def seeded(function, seed=7):
    torch.manual_seed(seed)
    return function()


# (shape, noise_shape, the existing op it equals)
COINCIDING = [
    ((4, 6, 9), (4, 6, 1), lambda x, p: F.dropout1d(x, p)),
    ((4, 6, 3, 5), (4, 6, 1, 1), lambda x, p: F.dropout2d(x, p)),
    ((2, 6, 3, 2, 5), (2, 6, 1, 1, 1), lambda x, p: F.dropout3d(x, p)),
    ((7, 3, 5), (7, 1, 1), lambda x, p: F.drop_path(x, p, True)),
    ((4, 6, 3, 5), None, lambda x, p: F.dropout(x, p)),
    ((4, 6, 3, 5), (4, 6, 3, 5), lambda x, p: F.dropout(x, p)),
    ((4, 6, 3, 5), (None, 6, None, 5), lambda x, p: F.dropout(x, p)),
]


@pytest.mark.parametrize("case", range(len(COINCIDING)))
@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_dropout_with_noise_shape_is_the_op_it_coincides_with(device, dtype, case, p):
    shape, noise, existing = COINCIDING[case]
    x = torch.randn(shape, device=device).to(dtype)
    got = seeded(lambda: F.dropout(x, p, noise_shape=noise))
    assert_identical(got, seeded(lambda: existing(x, p)))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_alpha_dropout_with_channel_noise_is_feature_alpha_dropout(device, dtype, p):
    x = torch.randn(4, 6, 3, 5, device=device).to(dtype)
    got = seeded(lambda: F.alpha_dropout(x, p, True, noise_shape=(4, 6, 1, 1)))
    assert_identical(got, seeded(lambda: F.feature_alpha_dropout(x, p, True)))


def test_channels_last_input_is_dropout2d_of_it(device):
    x = torch.randn(4, 6, 3, 5, device=device).to(memory_format=torch.channels_last)
    got = seeded(lambda: F.dropout(x, 0.3, noise_shape=(4, 6, 1, 1)))
    assert_identical(got, seeded(lambda: F.dropout2d(x, 0.3)))
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "shape,noise",
    [
        ((3, 4, 5, 6), (1, 4, 1, 6)),
        ((5, 8, 3), (1, 8, 3)),
        ((5, 8, 3), (5, 1, 1)),
        ((2, 3, 4), (1, 1, 1)),
        ((3, 4, 5, 6), (3, 4, 1, 6)),  # three dims with decisions: the indexed operator
        ((3, 1, 5, 6), (1, None, 5, 1)),
        ((6, 7, 700), (1, 7, 700)),  # rows of 4900 decisions: column chunks of the bits buffer
    ],
)
@pytest.mark.parametrize("alpha", [False, True])
def test_any_noise_shape_is_the_oracle_from_the_same_draw(device, dtype, shape, noise, alpha):
    x = torch.randn(shape, device=device).to(dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    torch.manual_seed(11)
    rng_state = drawn_state(device)
    leaf = x.clone().requires_grad_()
    call = F.alpha_dropout if alpha else F.dropout
    out = call(leaf, 0.3, True, noise_shape=noise)
    out.backward(grad)
    reduced = [size if n is None else n for n, size in zip(noise, shape)]
    mask = keep_mask(rng_state, reduced, 0.3)  # row-major over the noise shape: the decision indices
    assert_identical(out, ref.unfused(x, mask.to(device), 0.3, alpha))
    assert_identical(leaf.grad, ref.unfused_grad(grad, mask.to(device), 0.3, alpha))


def test_in_place_and_eval(device):
    x = torch.randn(5, 8, 3, device=device)
    expected = seeded(lambda: F.dropout(x, 0.4, noise_shape=(1, 8, 3)))
    y = x.clone()
    assert seeded(lambda: F.dropout(y, 0.4, inplace=True, noise_shape=(1, 8, 3))) is y
    assert_identical(y, expected)
    assert F.dropout(x, 0.4, training=False, noise_shape=(1, 8, 3)) is x
    assert F.dropout(x, 0.0, noise_shape=(1, 8, 3)) is x


def test_gradcheck_with_shared_dims(device):
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    for call in (F.dropout, F.alpha_dropout):

        def f(t, call=call):
            torch.manual_seed(3)
            return call(t, 0.4, True, noise_shape=(3, 1, 5))

        assert torch.autograd.gradcheck(f, (x,), check_forward_ad=True)
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.traces
def test_compile_fullgraph(device):
    def step(x):
        return F.dropout(x, 0.3, noise_shape=(1, x.shape[1], x.shape[2])) * 2

    x = torch.randn(6, 4, 5, device=device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_identical(seeded(lambda: compiled(x)), seeded(lambda: step(x)))


@pytest.mark.parametrize(
    "noise,error,message",
    [
        ((4, 6), ValueError, "one entry per dim"),
        ((4, 6, 2), ValueError, r"noise_shape\[2\] must be 1 or the input's size 5"),
        ((4, 6.0, 1), TypeError, r"noise_shape\[1\] must be an int or None"),
        ((4, True, 1), TypeError, r"noise_shape\[1\] must be an int or None"),
        (3, TypeError, "must be a sequence of ints"),
        ("abc", TypeError, "must be a sequence of ints"),
    ],
)
def test_bad_noise_shapes_raise(noise, error, message):
    with pytest.raises(error, match=message):
        F.dropout(torch.randn(4, 6, 5), 0.5, noise_shape=noise)


@pytest.mark.parametrize("randomness", ["same", "different"])
def test_vmap(randomness):
    x = torch.randn(4, 6, 5)  # 4 slices of (T=6, H=5), one mask per slice shared over T

    def f(t):
        return F.dropout(t, 0.5, noise_shape=(1, t.shape[1]))

    got = seeded(lambda: torch.vmap(f, randomness=randomness)(x))
    if randomness == "different":  # the stacked call: one decision per (slice, h)
        assert_identical(got, seeded(lambda: F.dropout(x, 0.5, noise_shape=(4, 1, 5))))
    else:  # every slice the mask an unbatched call with the same draw gives it
        assert_identical(got, torch.stack([seeded(lambda b=b: f(x[b])) for b in range(4)]))


# ---------------------------------------------------------- LockedDropout ----


@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_dropout_shares_a_mask_over_time(device, batch_first):
    module = fastdrop.nn.LockedDropout(0.4, batch_first=batch_first)
    x = torch.randn(7, 3, 10, device=device)  # (T, B, H), or (B, T, H) batch first
    time = 1 if batch_first else 0
    noise = [7, 3, 10]
    noise[time] = 1
    torch.manual_seed(5)
    rng_state = drawn_state(device)
    y = module(x)
    mask = keep_mask(rng_state, noise, 0.4).to(device)
    # PyTorch-NLP's and AWD-LSTM's arithmetic: x * (bernoulli(1 - p) / (1 - p)) with the mask broadcast over time.
    assert_identical(y, x * (mask.to(x.dtype) / (1 - 0.4)))
    assert bool(((y == 0) == (y == 0).select(time, 0).unsqueeze(time)).all())
    module.eval()
    assert module(x) is x
    assert "batch_first=" + str(batch_first) in repr(module)


def test_locked_dropout_checks():
    with pytest.raises(ValueError, match="between 0 and 1"):
        fastdrop.nn.LockedDropout(1.5)
    with pytest.raises(RuntimeError, match="at least 2-D"):
        fastdrop.nn.LockedDropout(0.5)(torch.randn(4))
