"""Drop path / stochastic depth against timm's and torchvision's formulas from
the same draws. (drop_path_add: test_residual.py.)"""

import pytest
import torch

import fastdrop
import oracle as ref
from conftest import assert_identical, saved_bytes
from oracle import keep_mask

F = fastdrop.functional
ops = torch.ops.fastdrop


# --------------------------------------------------------------- drop path ----


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_is_timms_from_the_same_draws(device, dtype, p, scale_by_keep):
    for shape in [(16, 7), (12, 3, 5, 5), (9, 4, 6)]:
        x = torch.randn(shape, device=device).to(dtype).requires_grad_()
        y, rng_state = ops.drop_path(x, p, scale_by_keep, True)
        keep = ref.sample_mask(rng_state, shape[0], p)
        assert_identical(y, ref.timm_drop_path(x.detach(), keep, p, scale_by_keep))
        grad = torch.randn_like(y)
        (x_grad,) = torch.autograd.grad(y, x, grad)
        assert_identical(x_grad, ref.timm_drop_path(grad, keep, p, scale_by_keep))


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_stochastic_depth_is_torchvisions_from_the_same_draws(device, dtype, mode, p):
    x = torch.randn(10, 3, 4, 4, device=device).to(dtype)
    y, rng_state = ops.drop_path(x, p, True, mode == "row")
    keep = keep_mask(rng_state, (x.shape[0] if mode == "row" else 1,), p)
    assert_identical(y, ref.torchvision_stochastic_depth(x, keep, p, mode))
    if p == 1.0:
        assert torch.equal(y, torch.zeros_like(y))


def stochastic_depth_drop_counts(seed, mode, p, batch_size=5, trials=250):
    """torchvision's binomial experiment: (dropped, drawn) over `trials` calls."""
    torch.manual_seed(seed)
    x = torch.ones(size=(batch_size, 3, 4, 4))
    layer = fastdrop.nn.StochasticDepth(p=p, mode=mode)
    num_samples, counts = 0, 0
    for _ in range(trials):
        non_zero_count = layer(x).sum(dim=(1, 2, 3)).nonzero().size(0)
        if mode == "batch":
            counts += int(non_zero_count == 0)
            num_samples += 1
        else:
            counts += batch_size - non_zero_count
            num_samples += batch_size
    return counts, num_samples


SEEDS = range(10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_stochastic_depth_binomial(seed, mode, p):
    # torchvision's test (fixed seeds, both modes, p in 0.2, 0.5, 0.8). Its 0.01
    # threshold per case would fail a correct sampler in 45% of 60-case runs, so
    # each case gets 0.01 / 60 (Bonferroni): at most 1% for the whole family.
    stats = pytest.importorskip("scipy.stats")
    counts, num_samples = stochastic_depth_drop_counts(seed, mode, p)
    assert stats.binomtest(counts, num_samples, p=p).pvalue > 0.01 / 60


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_stochastic_depth_binomial_pooled(mode, p):
    # All seeds' draws together, at torchvision's 0.01.
    stats = pytest.importorskip("scipy.stats")
    totals = [stochastic_depth_drop_counts(seed, mode, p) for seed in SEEDS]
    counts, num_samples = sum(c for c, _ in totals), sum(n for _, n in totals)
    assert stats.binomtest(counts, num_samples, p=p).pvalue > 0.01


def test_drop_path_timm_checks(device):
    x = torch.randn(64, 8, device=device)
    assert F.drop_path(x, 0.3, training=False) is x
    assert F.drop_path(x, 0.0, training=True) is x
    y = F.drop_path(x, 0.25, training=True)
    kept = (y != 0).any(1)
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(y[kept], x[kept] / 0.75)  # to rounding: timm multiplies by 1 / keep
    assert_identical(y[kept], x[kept] * torch.tensor(1 / 0.75, device=device))
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    unscaled = F.drop_path(x, 0.25, training=True, scale_by_keep=False)
    kept = (unscaled != 0).any(1)
    assert_identical(unscaled[kept], x[kept])


def test_stochastic_depth_identity_and_errors():
    x = torch.randn(4, 5)
    assert F.stochastic_depth(x, 0.5, "row", training=False) is x
    assert F.stochastic_depth(x, 0.0, "batch") is x
    with pytest.raises(ValueError, match="drop probability has to be between 0 and 1, but got 1.5"):
        F.stochastic_depth(x, 1.5, "row")
    with pytest.raises(ValueError, match="mode has to be either 'batch' or 'row', but got col"):
        F.stochastic_depth(x, 0.5, "col")
    with pytest.raises(ValueError, match="drop probability has to be between 0 and 1, but got nan"):
        F.drop_path(x, float("nan"), training=True)


def test_modules_match_timm_and_torchvision():
    assert repr(fastdrop.nn.DropPath(0.1234)) == "DropPath(drop_prob=0.123)"
    assert repr(fastdrop.nn.StochasticDepth(0.2, "row")) == "StochasticDepth(p=0.2, mode=row)"
    module = fastdrop.nn.DropPath(0.5)
    x = torch.randn(32, 4)
    assert module.state_dict() == {}
    assert not torch.equal(module(x), x)
    module.eval()
    assert module(x) is x
    timm = pytest.importorskip("timm")
    assert repr(fastdrop.nn.DropPath(0.1)) == repr(timm.layers.DropPath(0.1))


# ------------------------------------------------- autograd, opcheck ----


def test_drop_path_saves_sixteen_bytes(device):
    x = torch.randn(16, 64, device=device, requires_grad=True)
    assert saved_bytes(lambda x: F.drop_path(x, 0.5, True), x) == 16


def test_gradcheck_drop_path(device):
    def seeded():
        return torch.Generator(device).manual_seed(0)

    x = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    for fn in (
        lambda x: ops.drop_path(x, 0.4, True, True, seeded())[0],
        lambda x: ops.drop_path(x, 0.4, False, False, seeded())[0],
    ):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.traces
def test_opcheck_drop_path(device):
    x = torch.randn(6, 8, device=device)
    state = ops.drop_path(x, 0.3)[1]
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    for op, args in [
        (ops.drop_path.default, (grad(x), 0.3, True, True, None)),
        (ops.drop_path.default, (grad(x), 0.3, False, False, None)),
        (ops.drop_path_backward.default, (grad(x), state, 0.3, True, True)),
    ]:
        torch.library.opcheck(op, args)
