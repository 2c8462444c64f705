"""Drop path that skips the dropped samples' compute (DINOv2's stochastic depth):
drop_path_keep_indices and drop_path_add_subset against drop_path_add of the
same draw, bit for bit, forward and backward."""

import pytest
import torch

import fastdrop
import oracle as ref
from conftest import FLOAT_DTYPES, WIDER_RESIDUALS, assert_identical, dtype_pair_id

F = fastdrop.functional
ops = torch.ops.fastdrop

# (branch dtype, residual dtype): each dtype alone, and a wider residual of 16 and 64 bits.
DTYPE_PAIRS = [(d, d) for d in FLOAT_DTYPES] + [WIDER_RESIDUALS[0], WIDER_RESIDUALS[3]]
PAIR_IDS = [dtype_pair_id(pair) for pair in DTYPE_PAIRS]


def seeded(device, seed=0):
    return torch.Generator(device).manual_seed(seed)


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_keep_indices_are_the_samples_drop_path_add_keeps(device, batch, p):
    generator = seeded(device, 3)
    indices = F.drop_path_keep_indices(batch, p, device=device, generator=generator)
    other = seeded(device, 3)
    residual = torch.zeros(batch, 5, device=device)
    y = F.drop_path_add(residual, torch.ones(batch, 5, device=device), p, generator=other)
    kept = (y[:, 0] != 0).nonzero().squeeze(1)
    assert indices.dtype == torch.int64 and indices.device == residual.device
    assert_identical(indices, kept)
    # The generators are left in the same state: later draws stay in step.
    assert torch.equal(generator.get_state(), other.get_state())


def test_keep_indices_match_the_rng_state_decisions(device):
    generator = seeded(device, 11)
    indices = F.drop_path_keep_indices(300, 0.3, device=device, generator=generator)
    _, state = ops.drop_path_add(
        torch.zeros(300, 2, device=device), torch.ones(300, 2, device=device), 0.3, True, seeded(device, 11)
    )
    expected = ref.sample_mask(state, 300, 0.3).nonzero().squeeze(1)
    assert_identical(indices.cpu(), expected)
    assert 0 < indices.numel() < 300


def test_keep_indices_in_eval_mode_draw_nothing(device):
    generator = seeded(device, 5)
    before = generator.get_state()
    assert_identical(
        F.drop_path_keep_indices(6, 0.5, training=False, generator=generator, device=device),
        torch.arange(6, device=device),
    )
    assert_identical(
        F.drop_path_keep_indices(6, 0.0, generator=generator, device=device), torch.arange(6, device=device)
    )
    assert torch.equal(generator.get_state(), before)


@pytest.mark.parametrize("branch_dtype, residual_dtype", DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "branch_permuted", "residual_sample_inner"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_subset_is_drop_path_add_bit_for_bit(device, branch_dtype, residual_dtype, layout, scale_by_keep):
    p, shape = 0.4, (24, 6, 3, 5)
    residual, branch = ref.residual_and_branch(device, shape, branch_dtype, residual_dtype, layout)
    indices = F.drop_path_keep_indices(shape[0], p, device=device, generator=seeded(device))
    assert 0 < indices.numel() < shape[0]
    branch_kept = branch.index_select(0, indices)  # the branch as the kept samples alone would compute it
    y = F.drop_path_add_subset(residual, branch_kept, indices, p, scale_by_keep=scale_by_keep)
    expected = F.drop_path_add(residual, branch, p, scale_by_keep=scale_by_keep, generator=seeded(device))
    assert y.dtype == residual_dtype
    if layout in ("contiguous", "channels_last"):
        assert y.stride() == residual.stride()
    assert_identical(y, expected)
    grad = torch.randn(shape, device=device, dtype=torch.float64).to(residual_dtype)
    grad_residual, grad_branch = torch.autograd.grad(y, [residual, branch], grad)
    expected_residual, expected_branch = torch.autograd.grad(expected, [residual, branch], grad)
    assert_identical(grad_residual, expected_residual)
    assert_identical(grad_branch, expected_branch)  # zero rows where dropped, through index_select's backward


def test_subset_never_reads_beyond_the_kept_rows(device):
    residual = torch.randn(10, 33, device=device)
    indices = torch.tensor([1, 4, 9], device=device)
    branch_kept = torch.randn(3, 33, device=device)
    y = F.drop_path_add_subset(residual, branch_kept, indices, 0.25)
    scale = torch.tensor(1 / 0.75, dtype=torch.float32)
    for s in range(10):
        if s in (1, 4, 9):
            assert_identical(y[s], residual[s] + branch_kept[[1, 4, 9].index(s)] * scale.to(device))
        else:
            assert_identical(y[s], residual[s])


def test_subset_in_eval_mode_and_at_the_extremes(device):
    residual, branch = torch.randn(5, 4, device=device), torch.randn(5, 4, device=device)
    every = torch.arange(5, device=device)
    assert_identical(F.drop_path_add_subset(residual, branch, every, 0.5, training=False), residual + branch)
    assert_identical(F.drop_path_add_subset(residual, branch, every, 0.0), residual + branch)
    none = F.drop_path_keep_indices(5, 1.0, device=device)
    y = F.drop_path_add_subset(residual, branch[none], none, 1.0)
    assert_identical(y, residual)
    assert y.data_ptr() != residual.data_ptr()
    empty = torch.empty(0, 4, device=device)
    assert F.drop_path_add_subset(empty, empty, none[:0], 0.5).shape == (0, 4)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda r, b, i: (r, b[:, :3], i),
            RuntimeError,
            r"branch_kept must be \(kept samples, \*residual.shape\[1:\]\)",
        ),
        (lambda r, b, i: (r, b, i.int()), RuntimeError, "indices must be a 1-D int64 tensor"),
        (lambda r, b, i: (r, b, i[:1]), RuntimeError, "indices must be a 1-D int64 tensor"),
        (lambda r, b, i: (r, b, i + 4), IndexError, "out of bounds"),
        (lambda r, b, i: (r, b, i * 0), RuntimeError, "appears twice"),
        (lambda r, b, i: (r.half(), b.bfloat16(), i), RuntimeError, "wider float dtype"),
        (lambda r, b, i: (r[0, 0], b, i), RuntimeError, "batch dim"),
        (lambda r, b, i: (r[:1], b, i), RuntimeError, "2 kept samples of a batch of 1"),
        (lambda r, b, i: (r.int(), b.int(), i), RuntimeError, "expects a floating-point input"),
    ],
)
def test_subset_errors(make, error, message):
    residual, branch_kept, indices = torch.randn(4, 6), torch.randn(2, 6), torch.tensor([0, 3])
    with pytest.raises(error, match=message):
        F.drop_path_add_subset(*make(residual, branch_kept, indices), 0.5)
    with pytest.raises(ValueError, match="drop probability has to be between 0 and 1"):
        F.drop_path_add_subset(residual, branch_kept, indices, 1.5)


def test_backward_errors():
    grad, indices = torch.randn(4, 6), torch.tensor([0, 3])
    with pytest.raises(IndexError, match="out of bounds"):
        ops.drop_path_add_subset_backward(grad, indices + 1, 0.5, True, torch.float32)
    with pytest.raises(RuntimeError, match="wider float dtype"):
        ops.drop_path_add_subset_backward(grad, indices, 0.5, True, torch.float64)
    with pytest.raises(RuntimeError, match="expects a floating-point input"):
        ops.drop_path_add_subset_backward(grad, indices, 0.5, True, torch.int32)
    with pytest.raises(RuntimeError, match="indices must be a 1-D int64 tensor"):
        ops.drop_path_add_subset_backward(grad, indices.int(), 0.5, True, torch.float32)


def test_gradcheck_and_forward_ad(device):
    kw = dict(dtype=torch.float64, device=device, requires_grad=True)
    residual, branch_kept = torch.randn(6, 5, **kw), torch.randn(3, 5, **kw)
    indices = torch.tensor([0, 2, 5], device=device)

    def fn(r, b):
        return ops.drop_path_add_subset(r, b, indices, 0.4, True)

    assert torch.autograd.gradcheck(fn, (residual, branch_kept), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, (residual, branch_kept), check_fwd_over_rev=True, check_rev_over_rev=True)

    def backward(g):
        return ops.drop_path_add_subset_backward(g, indices, 0.4, True, torch.float64)

    grad = torch.randn(6, 5, **kw)
    assert torch.autograd.gradcheck(backward, (grad,), check_forward_ad=True, check_batched_grad=True)
    tangent = torch.randn(3, 5, dtype=torch.float64, device=device)
    _, jvp = torch.func.jvp(lambda b: fn(residual.detach(), b), (branch_kept.detach(),), (tangent,))
    assert_identical(jvp, fn(torch.zeros(6, 5, dtype=torch.float64, device=device), tangent))


@pytest.mark.traces
def test_opcheck_and_compile(device):
    residual = torch.randn(8, 4, device=device, requires_grad=True)
    branch_kept = torch.randn(3, 4, device=device).to(torch.bfloat16).requires_grad_()
    indices = torch.tensor([1, 2, 6], device=device)
    torch.library.opcheck(ops.drop_path_add_subset.default, (residual, branch_kept, indices, 0.3, True))
    grad = torch.randn(8, 4, device=device, requires_grad=True)
    torch.library.opcheck(ops.drop_path_add_subset_backward.default, (grad, indices, 0.3, True, torch.bfloat16))

    def step(r, b, i):
        return F.drop_path_add_subset(r, b * 2, i, 0.3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager = step(residual, branch_kept, indices)
    out = compiled(residual, branch_kept, indices)
    assert_identical(out, eager)
    for a, e in zip(
        torch.autograd.grad(out.sum(), [residual, branch_kept]),
        torch.autograd.grad(eager.sum(), [residual, branch_kept]),
    ):
        assert_identical(a, e)


def test_vmap(device):
    residual, branch_kept = torch.randn(3, 8, 5, device=device), torch.randn(3, 4, 5, device=device)
    shared = torch.tensor([0, 3, 4, 7], device=device)

    def call(r, b, i):
        return F.drop_path_add_subset(r, b, i, 0.2)

    expected = torch.stack([call(residual[k], branch_kept[k], shared) for k in range(3)])
    assert_identical(torch.vmap(call, in_dims=(0, 0, None))(residual, branch_kept, shared), expected)
    # an unbatched residual beside a branch batched along its dim 1
    expected = torch.stack([call(residual[0], branch_kept[k], shared) for k in range(3)])
    assert_identical(
        torch.vmap(call, in_dims=(None, 1, None))(residual[0], branch_kept.transpose(0, 1), shared), expected
    )
    per_slice = torch.tensor([[0, 3, 4, 7], [1, 2, 3, 4], [1, 2, 5, 6]], device=device)
    expected = torch.stack([call(residual[k], branch_kept[k], per_slice[k]) for k in range(3)])
    assert_identical(torch.vmap(call)(residual, branch_kept, per_slice), expected)
    # per-sample gradients through it: the kept scale
    grads = torch.func.vmap(torch.func.grad(lambda b: call(residual[0], b, shared).sum()))(branch_kept)
    assert_identical(grads, torch.full_like(branch_kept, 1.25))


class CountingBranch(torch.nn.Module):
    """A per-sample branch that records the batch sizes it ran on."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return torch.tanh(self.linear(x))


def test_stochastic_depth_block_skips_the_dropped_samples():
    torch.manual_seed(0)
    branch = CountingBranch()
    skipping = fastdrop.nn.StochasticDepthBlock(branch, 0.5, skip_dropped=True)
    full = fastdrop.nn.StochasticDepthBlock(branch, 0.5)
    assert "skip_dropped=True" in repr(skipping)
    x = torch.randn(32, 6, requires_grad=True)
    for block in (full, skipping):
        torch.manual_seed(7)
        y = block(x)
        grads = torch.autograd.grad(y.sum(), [x, branch.linear.weight])
        if block is full:
            expected, expected_grads = y, grads
    assert branch.batches[0] == 32 and 0 < branch.batches[1] < 32  # the kept samples only
    assert_identical(y, expected)
    assert_identical(grads[0], expected_grads[0])
    # The weight gradient sums over fewer (nonzero) rows: equal up to the sum's order.
    torch.testing.assert_close(grads[1], expected_grads[1])
    skipping.eval()
    assert_identical(skipping(x), x + branch(x))
    assert branch.batches[-1] == 32
