"""Arguments as torch takes them: the types torch's argument parser accepts and
its TypeErrors for the rest; torch's error types for dtypes and nested tensors;
the operators' Meta kernels (torch.compile, FakeTensor) refusing exactly what
the real kernels refuse; modules and replace_dropout validating before they act."""

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from torch._subclasses.fake_tensor import FakeTensorMode, UnsupportedOperatorException

import fastdrop
from conftest import assert_identical
from oracle import keep_mask

F = fastdrop.functional
ops = torch.ops.fastdrop

FUNCTIONALS = {
    "dropout": (8, 4),
    "alpha_dropout": (8, 4),
    "dropout1d": (2, 8, 4),
    "dropout2d": (2, 8, 4, 3),
    "dropout3d": (2, 8, 4, 3, 2),
    "feature_alpha_dropout": (2, 8, 4, 3),
}


def outcome(fn, *args, **kwargs):
    """('ok', None) or the exception's type and message."""
    try:
        fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001  (compared with torch's)
        return type(error), str(error)
    return "ok", None


BAD_TRAINING = ["no", None, 1, 0, np.bool_(True), torch.tensor(True), 1.0]


@pytest.mark.parametrize("name", FUNCTIONALS)
@pytest.mark.parametrize("training", BAD_TRAINING, ids=lambda v: f"{type(v).__name__}({v!r})"[:30])
def test_training_must_be_a_bool_as_in_torch(name, training):
    x = torch.randn(FUNCTIONALS[name])
    ours = outcome(getattr(F, name), x, 0.5, training)
    assert ours[0] is TypeError
    assert ours == outcome(getattr(torch_F, name), x, 0.5, training)


@pytest.mark.parametrize("name", FUNCTIONALS)
def test_inplace_is_taken_by_truthiness_as_in_torch(name):
    for inplace in ("yes", 1, None, ""):
        x = torch.randn(FUNCTIONALS[name])
        y = torch.randn(FUNCTIONALS[name])
        assert (getattr(F, name)(x, 0.5, True, inplace) is x) == (getattr(torch_F, name)(y, 0.5, True, inplace) is y)


P_VALUES = [
    torch.tensor(0.5),
    torch.tensor(1),
    torch.tensor(True),
    torch.tensor(0.25, dtype=torch.float16),
    torch.tensor([0.5]),
    torch.tensor([0.5, 0.5]),
    torch.tensor(0.5, requires_grad=True),
    Fraction(1, 2),
    Fraction(3, 2),
    Decimal("0.5"),
    None,
    "0.5",
    [0.5],
    np.float32(0.5),
    np.float64(1.5),
    np.int64(1),
    1,
    0,
    True,
    -1,
]


@pytest.mark.parametrize("name", FUNCTIONALS)
@pytest.mark.parametrize("p", P_VALUES, ids=lambda v: f"{type(v).__name__}({v!r})"[:40])
@pytest.mark.parametrize("training", [True, False])
def test_probability_types_are_torchs(name, p, training):
    x = torch.randn(FUNCTIONALS[name])
    theirs = outcome(getattr(torch_F, name), x, p, training)
    assert outcome(getattr(F, name), x, p, training) == theirs


def test_an_accepted_tensor_probability_is_its_value():
    x = torch.randn(1000)
    torch.manual_seed(0)
    a = F.dropout(x, torch.tensor(0.25))
    torch.manual_seed(0)
    assert_identical(a, F.dropout(x, 0.25))


def test_nan_probability_is_refused_where_torch_lets_it_through():
    with pytest.raises(ValueError, match="but got nan"):
        F.dropout(torch.ones(3), float("nan"))
    with pytest.raises(ValueError, match="but got nan"):
        F.dropout(torch.ones(3), torch.tensor(float("nan")))


@pytest.mark.parametrize(
    "dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64, torch.int64, torch.int32, torch.bool]
)
@pytest.mark.parametrize("name", ["dropout", "alpha_dropout", "dropout2d", "feature_alpha_dropout"])
@pytest.mark.parametrize("inplace", [False, True])
def test_unsupported_dtypes_raise_torchs_error_types(name, dtype, inplace):
    x = torch.ones(2, 3, 4, 4).to(dtype)
    ours = outcome(getattr(F, name), x, 0.5, True, inplace)
    theirs = outcome(getattr(torch_F, name), x.clone(), 0.5, True, inplace)
    assert ours[0] is theirs[0] and ours[0] in (RuntimeError, NotImplementedError)
    assert "fastdrop" in ours[1]


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_nested_tensors_get_element_wise_dropout_as_in_torch(layout):
    parts = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)]
    x = torch.nested.nested_tensor(parts, layout=layout, requires_grad=True)
    torch.manual_seed(4)
    y = F.dropout(x, 0.5)
    theirs = torch_F.dropout(x, 0.5)
    assert y.is_nested and y.layout == theirs.layout == layout
    assert [list(t.shape) for t in y.unbind()] == [list(t.shape) for t in theirs.unbind()]
    values = y.values()
    torch.manual_seed(4)
    expected = F.dropout(x.values().detach(), 0.5)
    assert_identical(values.detach(), expected)
    (grad,) = torch.autograd.grad(values.sum(), x)
    kept = expected != 0
    assert_identical(grad.values(), kept.double() * 2)


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
@pytest.mark.parametrize(
    "call",
    [
        lambda fn, x: fn.dropout(x, 0.5, inplace=True),
        lambda fn, x: fn.alpha_dropout(x, 0.5, True),
        lambda fn, x: fn.feature_alpha_dropout(x, 0.5, True),
        lambda fn, x: fn.dropout2d(x, 0.5),
    ],
    ids=["dropout_inplace", "alpha_dropout", "feature_alpha_dropout", "dropout2d"],
)
def test_what_torch_refuses_for_nested_tensors_raises_the_same_type(layout, call):
    x = torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(5, 4)], layout=layout)
    theirs = outcome(call, torch_F, x)
    if theirs[0] == "ok":
        pytest.skip("torch supports this case")
    assert outcome(call, F, x)[0] is theirs[0]


# ------------------------------------------------------- dropout_with_seed ----


def test_dropout_with_seed_takes_64_bit_unsigned_seeds_and_offsets():
    x = torch.ones(4096)
    for seed, offset in [(0, 0), (2**64 - 1, 0), (5, 2**63 + 8), (2**63, 2**64 - 4)]:
        y = F.dropout_with_seed(x, 0.5, seed, offset)
        state = torch.tensor([seed - 2**64 if seed >= 2**63 else seed, offset - 2**64 if offset >= 2**63 else offset])
        assert torch.equal(y != 0, keep_mask(state, x.shape, 0.5))
    assert not torch.equal(F.dropout_with_seed(x, 0.5, 5, 2**63 + 8), F.dropout_with_seed(x, 0.5, 5, 8))


@pytest.mark.parametrize(
    "seed, offset, error",
    [
        (1.0, 0, TypeError),
        (np.float64(1), 0, TypeError),
        (True, 0, TypeError),
        ("1", 0, TypeError),
        (2**64, 0, ValueError),
        (-1, 0, ValueError),
        (1, 2**64, ValueError),
        (1, -4, ValueError),
        (1, 4.0, TypeError),
    ],
)
def test_dropout_with_seed_refuses_what_is_not_a_64_bit_unsigned_int(seed, offset, error):
    with pytest.raises(error, match="dropout_with_seed"):
        F.dropout_with_seed(torch.ones(8), 0.5, seed, offset)


def test_dropout_with_seed_takes_numpy_ints():
    x = torch.ones(256)
    assert_identical(F.dropout_with_seed(x, 0.5, np.uint64(7), np.int64(4)), F.dropout_with_seed(x, 0.5, 7, 4))


# ----------------------------------------------------------------- modules ----


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: fastdrop.nn.DropPath("x"), TypeError),
        (lambda: fastdrop.nn.DropPath(None), TypeError),
        (lambda: fastdrop.nn.DropPath(1.5), ValueError),
        (lambda: fastdrop.nn.StochasticDepth("x", "row"), TypeError),
        (lambda: fastdrop.nn.StochasticDepth(0.2, "col"), ValueError),
        (lambda: fastdrop.nn.StochasticDepthBlock(torch.nn.Identity(), "x"), TypeError),
        (lambda: fastdrop.nn.Dropout("x"), TypeError),
        (lambda: fastdrop.nn.Dropout(1.5), ValueError),
    ],
)
def test_modules_validate_at_construction(make, error):
    with pytest.raises(error):
        make()


def test_module_errors_match_torchs():
    assert outcome(fastdrop.nn.Dropout, "x") == outcome(torch.nn.Dropout, "x")
    assert outcome(fastdrop.nn.Dropout2d, 2.0) == outcome(torch.nn.Dropout2d, 2.0)


def test_replace_dropout_validates_every_module_before_swapping_any():
    model = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(3, 3), torch.nn.Dropout(0.2))
    model[2].p = 1.5  # set after construction, past torch's check
    with pytest.raises(ValueError, match="1.5"):
        fastdrop.replace_dropout(model)
    assert type(model[0]) is torch.nn.Dropout and type(model[2]) is torch.nn.Dropout


def test_replace_dropout_keeps_a_shared_module_shared():
    shared = torch.nn.Dropout(0.3)
    model = torch.nn.Module()
    model.a = shared
    model.b = torch.nn.Sequential(torch.nn.Linear(2, 2), shared)
    fastdrop.replace_dropout(model)
    assert isinstance(model.a, fastdrop.nn.Dropout)
    assert model.a is model.b[1]
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Dropout)]) == 1


# ------------------------------------------------------------ Meta kernels ----

BACKWARDS = {
    "dropout_backward": (),
    "alpha_dropout_backward": (),
    "feature_dropout_backward": (),
    "feature_alpha_dropout_backward": (),
    "drop_path_backward": (True, True),
}


@pytest.mark.parametrize("name", BACKWARDS)
def test_backward_with_rng_state_on_another_device_raises(name):
    grad = torch.ones(4, 8)
    for state, tensor in [(torch.tensor([1, 0], device="meta"), grad), (torch.tensor([1, 0]), grad.to("meta"))]:
        with pytest.raises(RuntimeError, match="rng_state is on .* but the tensor it applies to is on"):
            getattr(ops, name)(tensor, state, 0.5, *BACKWARDS[name])


def bad_calls():
    """Calls every operator must refuse, on CPU and Meta tensors alike: (label, op, args)."""
    x = torch.randn(4, 6, 5)
    state = torch.tensor([1, 0])
    calls = []
    for name in ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout"):
        calls += [
            (f"{name} p=2", name, (x, 2.0)),
            (f"{name} p=-0.5", name, (x, -0.5)),
            (f"{name} p=nan", name, (x, float("nan"))),
            (f"{name} int", name, (x.long(), 0.5)),
            (f"{name} complex", name, (x.to(torch.complex64), 0.5)),
            (f"{name}_ p=2", name + "_", (x.clone(), 2.0)),
            (f"{name}_ bool", name + "_", (x.bool(), 0.5)),
            (f"{name}_ overlapping", name + "_", (torch.ones(1, 5).expand(4, 5), 0.5)),
            (f"{name}_backward p=2", name + "_backward", (x, state, 2.0)),
            (f"{name}_backward int state", name + "_backward", (x, state.int(), 0.5)),
            (f"{name}_backward 3-element state", name + "_backward", (x, torch.tensor([1, 2, 3]), 0.5)),
            (f"{name}_backward float8", name + "_backward", (x.to(torch.float8_e5m2), state, 0.5)),
        ]
    calls += [
        ("feature_dropout 1-D", "feature_dropout", (torch.randn(5), 0.5)),
        ("feature_alpha_dropout_ 1-D", "feature_alpha_dropout_", (torch.randn(5), 0.5)),
        ("drop_path p=2", "drop_path", (x, 2.0)),
        ("drop_path 0-D", "drop_path", (torch.tensor(1.0), 0.5)),
        ("drop_path_backward int", "drop_path_backward", (x.long(), state, 0.5)),
        ("drop_path_add shapes", "drop_path_add", (x, x[:2], 0.5)),
        ("drop_path_add dtypes", "drop_path_add", (x, x.double(), 0.5)),
        ("dropout_add shapes", "dropout_add", (x, x[:, :2], 0.5)),
        ("dropout_add p=2", "dropout_add", (x, x, 2.0)),
        ("bias_dropout_add bias shape", "bias_dropout_add", (x, torch.randn(4), x, 0.5)),
        ("bias_dropout_add bias dtype", "bias_dropout_add", (x, torch.randn(5).double(), x, 0.5)),
        ("bias_dropout_add residual", "bias_dropout_add", (x, torch.randn(5), x[0], 0.5)),
    ]
    return calls


def to_meta(value):
    """A Meta tensor of value's shape, strides and dtype (to() would drop an expanded tensor's overlap)."""
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


@pytest.mark.parametrize("label, name, args", bad_calls(), ids=[c[0] for c in bad_calls()])
def test_meta_and_fake_kernels_refuse_what_the_real_kernels_refuse(label, name, args):
    real = outcome(getattr(ops, name), *args)
    assert real[0] in (RuntimeError, ValueError, NotImplementedError), real
    assert outcome(getattr(ops, name), *map(to_meta, args)) == real
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = outcome(getattr(ops, name), *fake_args)
    if real[0] is NotImplementedError:
        # FakeTensorMode turns a kernel's NotImplementedError into its own exception.
        assert fake[0] is UnsupportedOperatorException
    else:
        assert fake == real


def test_meta_kernels_return_what_the_real_kernels_return():
    x = torch.randn(4, 6, 5, 3).contiguous(memory_format=torch.channels_last)
    for name in ("dropout", "feature_dropout", "alpha_dropout"):
        out, state = getattr(ops, name)(x.to("meta"), 0.5)
        real_out, real_state = getattr(ops, name)(x, 0.5)
        assert out.device.type == "meta" and out.stride() == real_out.stride() and out.dtype == real_out.dtype
        assert state.shape == real_state.shape and state.dtype == torch.int64
