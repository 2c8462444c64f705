"""DropBlock (torchvision's drop_block2d/3d, timm's DropBlock2d): every output and
gradient against torchvision's and timm's arithmetic applied to the seeds the
contract draws (tests/oracle.py), bit for bit, on every device, layout and
dtype; the realised drop fraction against its exact expectation; the scale's
rounding for every kept count; errors, autograd, compile, modules, adoption."""

import math
import os

import pytest
import torch

import fastdrop
import oracle as ref
from conftest import FLOAT_DTYPES, assert_identical

F = fastdrop.functional
ops = torch.ops.fastdrop

# (shape, block_size): odd and even blocks, rows of several mask words, blocks
# longer than a word, blocks clipped to the plane (to a different size per dim), 3-D blocks.
CASES = [
    ((2, 3, 9, 9), 3),
    ((2, 2, 7, 12), 4),
    ((1, 2, 40, 70), 5),
    ((1, 1, 40, 70), 35),
    ((2, 3, 4, 6), 7),
    ((1, 2, 5, 6, 7), 3),
    ((1, 1, 6, 5, 40), 2),
]
# (centred, share_channels, eps, scale): torchvision's form, timm's (channels coupled or
# not), and timm's without scale_by_keep.
FORMS = {
    "torchvision": (False, False, 1e-6, "input"),
    "timm": (True, True, 1e-7, "float"),
    "timm_per_channel": (True, False, 1e-7, "float"),
    "timm_unscaled": (True, True, 1e-7, "none"),
}


def seeded(device, seed=0):
    return torch.Generator(device).manual_seed(seed)


def case_id(case):
    shape, block = case
    return "x".join(map(str, shape)) + f"-b{block}"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_forward_and_backward_match_the_reference(device, dtype, case, form):
    shape, block = case
    blocks = [block] * (len(shape) - 2)
    if form == "torchvision":  # one size, clipped to the smallest dim
        blocks = [min(block, *shape[2:])] * len(blocks)
    centred, shared, eps, scale = FORMS[form]
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    gamma = 0.07
    y, rng_state, kept = ops.drop_block(x, gamma, blocks, centred, shared, eps, scale, seeded(device, 5))
    expected, noise = ref.drop_block(x.detach(), rng_state, gamma, blocks, centred, shared, eps, scale)
    assert_identical(y.detach(), expected)
    assert kept.dtype == torch.int64 and kept.dim() == 0 and int(kept) == int(noise.double().sum())
    grad = torch.randn(shape, device=device).to(dtype)
    y.backward(grad)
    assert_identical(x.grad, ref.drop_block(grad, rng_state, gamma, blocks, centred, shared, eps, scale)[0])


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_any_layout_gives_the_contiguous_result(device, layout):
    x = torch.randn(2, 5, 12, 11, device=device)
    if layout == "channels_last":
        strided = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        strided = x.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        strided = torch.randn(2, 5, 12, 22, device=device)[..., ::2]
        x = strided.contiguous()
    expected = F.drop_block2d(x, 0.3, 3, generator=seeded(device, 1))
    y = F.drop_block2d(strided, 0.3, 3, generator=seeded(device, 1))
    assert_identical(y, expected)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    _, state, kept = ops.drop_block(x, 0.1, [3, 3], generator=seeded(device, 2))
    assert_identical(
        ops.drop_block_backward(grad.contiguous(memory_format=torch.channels_last), state, kept, 0.1, [3, 3]),
        ops.drop_block_backward(grad, state, kept, 0.1, [3, 3]),
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("scale", ["input", "float", "none"])
def test_scale_is_rounded_as_torchvision_and_timm_round_it(dtype, scale):
    """numel / (eps + kept) for every kept count up to 2^17 (and some near 2^24): the kept
    elements of a ones gradient carry the scale itself."""
    x = torch.ones(1, 1, 1, 300, dtype=dtype)
    _, state, _ = ops.drop_block(x, 0.0, [1, 1])  # gamma 0: nothing dropped
    numel = 300
    counts = list(range(0, 1 << 17, 7)) + [(1 << 24) - 3, 1 << 24, (1 << 24) + 5, 123456789]
    for kept in counts:
        grad = ops.drop_block_backward(x, state, torch.tensor(kept), 0.0, [1, 1], False, False, 1e-6, scale)
        if scale == "float":
            expected = (numel / torch.tensor(float(kept)).add(1e-6)).to(dtype)
        elif scale == "input":
            expected = numel / (1e-6 + torch.tensor(kept).to(dtype))
        else:
            expected = torch.tensor(1.0)
        assert_identical(grad[0, 0, 0, 0], expected.to(dtype))


def expected_drop_fraction(shape, block, gamma):
    """The exact expected fraction of dropped elements: 1 - (1 - gamma)^(seeds covering it), averaged."""
    sizes = shape[2:]
    covers = torch.ones(())
    for size in sizes:
        counts = torch.tensor(
            [min(x, size - block) - max(0, x - block + 1) + 1 for x in range(size)], dtype=torch.double
        )
        covers = covers.unsqueeze(-1) * counts if covers.dim() else counts
    return float((1 - (1 - gamma) ** covers).mean())


@pytest.mark.parametrize("p,block", [(0.1, 3), (0.3, 7), (0.05, 5)])
def test_realised_drop_fraction(device, p, block):
    """Per-plane drop fractions are independent: their mean is within 5 standard errors of
    the exact expectation (false failure rate 6e-7 per case)."""
    shape = (32, 64, 28, 28)
    y = F.drop_block2d(torch.ones(shape, device=device), p, block, generator=seeded(device, 9))
    fractions = (y == 0).double().mean(dim=(2, 3)).flatten()
    gamma = p * 28 * 28 / (block**2 * (28 - block + 1) ** 2)
    expected = expected_drop_fraction(shape, block, gamma)
    error = fractions.std() / math.sqrt(fractions.numel())
    assert abs(float(fractions.mean()) - expected) < 5 * float(error)


def test_blocks_are_whole_squares_at_the_seeds(device):
    """With few seeds, every dropped element lies in a block_size square of drops that
    starts at a seed the contract drew (torchvision's placement)."""
    block = 4
    x = torch.ones(1, 1, 64, 64, device=device)
    y, state, _ = ops.drop_block(x, 0.002, [block, block], generator=seeded(device, 4))
    seeds = ref.block_seeds(state, (1, 1, 61, 61), 0.002)[0, 0]
    dropped = y[0, 0] == 0
    assert seeds.any()
    covered = torch.zeros_like(dropped)
    for i, j in seeds.nonzero().tolist():
        assert dropped[i : i + block, j : j + block].all()
        covered[i : i + block, j : j + block] = True
    assert torch.equal(covered, dropped)


def test_eval_and_zero_p_return_the_input_itself(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    assert F.drop_block2d(x, 0.5, 3, training=False) is x
    assert F.drop_block2d(x, 0.0, 3) is x
    assert F.drop_block3d(x.unsqueeze(2), 0.5, 3, training=False).shape == (2, 3, 1, 8, 8)


def test_errors():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="drop probability has to be between 0 and 1, but got 1.5"):
        F.drop_block2d(x, 1.5, 3)
    with pytest.raises(ValueError, match="input should be 4 dimensional. Got 3 dimensions."):
        F.drop_block2d(x[0], 0.1, 3)
    with pytest.raises(ValueError, match="input should be 5 dimensional. Got 4 dimensions."):
        F.drop_block3d(x, 0.1, 3)
    with pytest.raises(ValueError, match="block_size must be positive"):
        F.drop_block2d(x, 0.1, 0)
    with pytest.raises(RuntimeError, match="floating-point"):
        F.drop_block2d(torch.ones(2, 3, 8, 8, dtype=torch.int64), 0.1, 3)
    with pytest.raises(ValueError, match="4-D"):
        ops.drop_block(x[0], 0.1, [3])
    with pytest.raises(ValueError, match="one size per spatial dim"):
        ops.drop_block(x, 0.1, [3])
    with pytest.raises(ValueError, match="scale must be 'input', 'float' or 'none'"):
        ops.drop_block(x, 0.1, [3, 3], scale="fp32")
    with pytest.raises(RuntimeError, match="kept must be the 0-dim int64 tensor"):
        _, state, _ = ops.drop_block(x, 0.1, [3, 3])
        ops.drop_block_backward(x, state, torch.tensor([1]), 0.1, [3, 3])
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        F.drop_block2d(x.clone().requires_grad_(), 0.1, 3, inplace=True)


def test_inplace_writes_the_input_and_its_gradient(device):
    base = torch.randn(2, 3, 10, 10, device=device, requires_grad=True)
    x = base * 1
    y = F.drop_block2d(x, 0.2, 3, inplace=True, generator=seeded(device, 3))
    expected = F.drop_block2d(base.detach(), 0.2, 3, generator=seeded(device, 3))
    assert y is x
    assert_identical(x.detach(), expected)
    y.sum().backward()
    assert_identical(base.grad, F.drop_block2d(torch.ones_like(base), 0.2, 3, generator=seeded(device, 3)))


def test_no_mask_is_saved():
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    saved = fastdrop.bench.measure.saved_bytes(lambda t: F.drop_block2d(t, 0.1, 3), (x,))
    assert saved <= 64  # rng_state and the kept count


def test_gradcheck_with_forward_ad_and_double_backward():
    x = torch.randn(2, 2, 6, 7, dtype=torch.double, requires_grad=True)

    def drop(t):
        return F.drop_block2d(t, 0.2, 3, generator=torch.Generator().manual_seed(1))

    torch.autograd.gradcheck(drop, (x,), check_forward_ad=True, check_backward_ad=True)
    torch.autograd.gradgradcheck(drop, (x,))


@pytest.mark.traces
def test_opcheck():
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    torch.library.opcheck(ops.drop_block.default, (x, 0.1, [3, 3], True, True, 1e-6, "float", None))
    _, state, kept = ops.drop_block(x, 0.1, [3, 3])
    torch.library.opcheck(ops.drop_block_backward.default, (x.detach(), state, kept, 0.1, [3, 3]))


@pytest.mark.traces
def test_compile_fullgraph_matches_eager():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), fastdrop.nn.DropBlock2d(0.2, 3))
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    y = compiled(x)
    y.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    torch.manual_seed(3)
    expected = module(x)
    expected.sum().backward()
    assert_identical(y, expected)
    assert_identical(grad, x.grad)


def _vmapped(device, form, randomness):
    """x, a gradient, and drop_block of the form with its vjp under vmap from seed 0: (x, grad, y, grads, drop)."""
    centred, shared, eps, scale = FORMS[form]
    x = torch.randn(3, 2, 4, 9, 9, device=device)
    grad = torch.randn_like(x)

    def drop(t):
        return ops.drop_block(t, 0.05, [3, 3], centred, shared, eps, scale)[0]

    torch.manual_seed(0)
    y = torch.vmap(drop, randomness=randomness)(x)
    torch.manual_seed(0)
    grads = torch.vmap(lambda t, g: torch.func.vjp(drop, t)[1](g)[0], randomness=randomness)(x, grad)
    return x, grad, y, grads, drop


@pytest.mark.parametrize("form", ["torchvision", "timm", "timm_unscaled"])
def test_vmap_same_gives_every_slice_the_unbatched_mask(device, form):
    x, grad, y, grads, drop = _vmapped(device, form, "same")
    for b in range(3):
        torch.manual_seed(0)
        assert_identical(y[b], drop(x[b]))
        torch.manual_seed(0)
        assert_identical(grads[b], drop(grad[b]))


@pytest.mark.parametrize("form", ["torchvision", "timm", "timm_unscaled"])
def test_vmap_different_draws_the_stacked_call_and_scales_each_slice(device, form):
    centred, shared, eps, scale = FORMS[form]
    x, grad, y, grads, _ = _vmapped(device, form, "different")
    torch.manual_seed(0)
    _, state, _ = ops.drop_block(torch.ones(6, 4, 9, 9, device=device), 0.05, [3, 3], centred, shared, eps, "none")
    noise = ref.drop_block(torch.ones(6, 4, 9, 9, device=device), state, 0.05, [3, 3], centred, shared, eps, "none")[1]
    noise = noise.view(3, 2, 1 if shared else 4, 9, 9)
    for b in range(3):
        for tensor, expected_of in ((y, x), (grads, grad)):
            if scale == "none":
                expected = expected_of[b] * noise[b]
            elif scale == "input":
                expected = expected_of[b] * noise[b] * (noise[b].numel() / (eps + noise[b].sum()))
            else:
                factor = (noise[b].numel() / noise[b].float().sum().add(eps)).to(x.dtype)
                expected = expected_of[b] * (noise[b] * factor)
            assert_identical(tensor[b], expected)
    assert not torch.equal(y[0] == 0, y[1] == 0)


def test_vmap_error_randomness_raises():
    with pytest.raises(RuntimeError, match="randomness error mode"):
        torch.vmap(lambda t: F.drop_block2d(t, 0.3, 3))(torch.randn(2, 2, 3, 8, 8))


def test_modules_match_torchvisions_and_timms_interfaces():
    module = fastdrop.nn.DropBlock2d(0.1, 5, inplace=True)
    assert repr(module) == "DropBlock2d(p=0.1, block_size=5, inplace=True)"
    assert (module.p, module.block_size, module.inplace, module.eps) == (0.1, 5, True, 1e-6)
    assert repr(fastdrop.nn.DropBlock3d(0.2, 3)) == "DropBlock3d(p=0.2, block_size=3, inplace=False)"
    x = torch.randn(2, 3, 8, 8)
    assert module.eval()(x) is x
    timm_like = fastdrop.nn.TimmDropBlock2d(0.1, 5, couple_channels=False, scale_by_keep=False, batchwise=True)
    assert (timm_like.couple_channels, timm_like.scale_by_keep) == (False, False)
    assert timm_like.eval()(x) is x
    with pytest.raises(NotImplementedError, match="with_noise"):
        fastdrop.nn.TimmDropBlock2d(0.1, 5, with_noise=True)
    with pytest.warns(UserWarning, match="unexpected keyword"):
        fastdrop.nn.TimmDropBlock2d(0.1, 5, speed=2)


def test_timm_module_matches_the_reference():
    x = torch.randn(2, 3, 11, 6)
    for couple, scale_by_keep, form in [
        (True, True, "timm"),
        (False, True, "timm_per_channel"),
        (True, False, "timm_unscaled"),
    ]:
        module = fastdrop.nn.TimmDropBlock2d(0.2, 5, couple_channels=couple, scale_by_keep=scale_by_keep)
        torch.manual_seed(8)
        y = module(x)
        centred, shared, eps, scale = FORMS[form]
        gamma = float(0.2 * 11 * 6) / float(5 * 5) / float(7 * 2)  # timm's, the block 5 x 5 (W = 6)
        torch.manual_seed(8)
        _, state, _ = ops.drop_block(x, gamma, [5, 5], centred, shared, eps, scale)
        assert_identical(y, ref.drop_block(x, state, gamma, [5, 5], centred, shared, eps, scale)[0])
    # A block larger than W is clipped to W alone (timm's kh, kw).
    module = fastdrop.nn.TimmDropBlock2d(0.2, 8)
    torch.manual_seed(8)
    y = module(x)
    gamma = float(0.2 * 11 * 6) / float(8 * 6) / float(4 * 1)
    torch.manual_seed(8)
    _, state, _ = ops.drop_block(x, gamma, [8, 6], True, True, 1e-7, "float")
    assert_identical(y, ref.drop_block(x, state, gamma, [8, 6], True, True, 1e-7, "float")[0])


def _peer(name, **attributes):
    module = type(name, (torch.nn.Module,), {"forward": lambda self, x: x})()
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def test_replace_dropout_swaps_torchvision_and_timm_dropblocks():
    model = torch.nn.Sequential(
        _peer("DropBlock2d", p=0.1, block_size=3, inplace=False, eps=1e-6),
        _peer("DropBlock3d", p=0.2, block_size=5, inplace=True, eps=1e-5),
        _peer(
            "DropBlock2d",
            drop_prob=0.1,
            block_size=7,
            gamma_scale=0.5,
            with_noise=False,
            inplace=False,
            couple_channels=False,
            scale_by_keep=True,
        ),
        _peer(
            "DropBlock2d",
            drop_prob=0.1,
            block_size=7,
            gamma_scale=1.0,
            with_noise=True,
            inplace=False,
            couple_channels=True,
            scale_by_keep=True,
        ),
        # timm before 1.0.23 (fast, batchwise): another DropBlock, left as it is.
        _peer("DropBlock2d", drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False, inplace=False, fast=True),
    )
    fastdrop.replace_dropout(model)
    assert type(model[0]) is fastdrop.nn.DropBlock2d and (model[0].p, model[0].block_size) == (0.1, 3)
    assert type(model[1]) is fastdrop.nn.DropBlock3d and (model[1].inplace, model[1].eps) == (True, 1e-5)
    assert type(model[2]) is fastdrop.nn.TimmDropBlock2d
    assert (model[2].gamma_scale, model[2].couple_channels, model[2].scale_by_keep) == (0.5, False, True)
    assert type(model[3]).__name__ == "DropBlock2d" and model[3].with_noise  # not supported: left as it was
    assert type(model[4]).__module__ != "fastdrop.nn"


def _torchvision_ops():
    try:
        import torchvision.ops

        return torchvision.ops
    except Exception as error:  # noqa: BLE001  (a torchvision built for another torch fails on import)
        if os.environ.get("FASTDROP_REQUIRE_TORCHVISION"):
            raise
        pytest.skip(f"torchvision does not import here ({type(error).__name__}: {error})")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("spatial", [2, 3])
def test_torchvision_itself_with_the_same_seeds(dtype, spatial, monkeypatch):
    """torchvision.ops.drop_block2d/3d run with their bernoulli_ replaced by the seeds
    fastdrop drew: the same output and gradient, bit for bit."""
    tv = _torchvision_ops()
    shape = (2, 3, 9, 10) if spatial == 2 else (2, 2, 6, 7, 8)
    x = torch.randn(shape).to(dtype).requires_grad_()
    function = F.drop_block2d if spatial == 2 else F.drop_block3d
    peer = tv.drop_block2d if spatial == 2 else tv.drop_block3d
    torch.manual_seed(2)
    y = function(x, 0.3, 3)
    torch.manual_seed(2)
    sizes = shape[2:]
    gamma = 0.3 * math.prod(sizes) / (3**spatial * math.prod(s - 2 for s in sizes))
    _, state, _ = ops.drop_block(x.detach(), gamma, [3] * spatial)
    seeds = ref.block_seeds(state, (*shape[:2], *(s - 2 for s in sizes)), gamma)
    monkeypatch.setattr(torch.Tensor, "bernoulli_", lambda self, p: self.copy_(seeds))
    x_peer = x.detach().clone().requires_grad_()
    expected = peer(x_peer, 0.3, 3)
    assert_identical(y.detach(), expected.detach())
    grad = torch.randn(shape).to(dtype)
    y.backward(grad)
    expected.backward(grad)
    assert_identical(x.grad, x_peer.grad)


def _timm_layers():
    try:
        import timm.layers

        return timm.layers
    except Exception as error:  # noqa: BLE001  (timm is optional; CI installs it beside torchvision)
        if os.environ.get("FASTDROP_REQUIRE_TIMM"):
            raise
        pytest.skip(f"timm does not import here ({type(error).__name__}: {error})")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize(
    "couple_channels, scale_by_keep, width", [(True, True, 12), (False, True, 4), (True, False, 12)]
)
def test_timm_itself_with_the_same_seeds(dtype, couple_channels, scale_by_keep, width, monkeypatch):
    """timm.layers.DropBlock2d run with its bernoulli_ replaced by the seeds fastdrop drew:
    the same output and gradient as fastdrop.nn.TimmDropBlock2d, bit for bit."""
    layers = _timm_layers()
    if "couple_channels" not in layers.DropBlock2d.__init__.__code__.co_varnames:
        pytest.skip("timm before 1.0.23: another DropBlock, which replace_dropout leaves alone")
    shape = (2, 3, 11, width)
    x = torch.randn(shape).to(dtype).requires_grad_()
    arguments = {"couple_channels": couple_channels, "scale_by_keep": scale_by_keep}
    ours = fastdrop.nn.TimmDropBlock2d(0.2, 5, **arguments)
    peer = layers.DropBlock2d(0.2, 5, **arguments)
    torch.manual_seed(4)
    y = ours(x)
    kw = min(5, width)
    gamma = float(0.2 * 11 * width) / float(5 * kw) / float(7 * (width - kw + 1))
    torch.manual_seed(4)
    scale = "float" if scale_by_keep else "none"
    _, state, _ = ops.drop_block(x.detach(), gamma, [5, kw], True, couple_channels, 1e-7, scale)
    seeds = ref.block_seeds(state, (2, 1 if couple_channels else 3, 11, width), gamma)
    monkeypatch.setattr(torch.Tensor, "bernoulli_", lambda self, p: self.copy_(seeds))
    x_peer = x.detach().clone().requires_grad_()
    expected = peer(x_peer)
    monkeypatch.undo()
    assert_identical(y.detach(), expected.detach())
    grad = torch.randn(shape).to(dtype)
    y.backward(grad)
    expected.backward(grad)
    assert_identical(x.grad, x_peer.grad)
