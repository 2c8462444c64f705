"""The CUDA kernels, run on the emulated device (tests/emulated_cuda.py), against
the CPU kernels bit for bit: every operator, forward, in place and backward;
every dtype (the residual forms beside a wider residual too); empty, tails,
misaligned, channels_last, permuted, sliced and more-than-8-dim layouts; the
production grid, one block of 32 threads, and reversed and shuffled thread
orders; large Philox offsets and the state as a captured CUDA graph passes it.

Bit for bit means the same bits, or NaN on both sides: where a NaN meets a NaN
(a NaN residual plus a dropped inf's NaN product), which operand's payload and
sign survive depends on how the compiler ordered the add, and a GPU returns
the canonical NaN anyway.
"""

import pytest
import torch

import emulated_cuda
import oracle as ref
from oracle import keep_mask

pytestmark = pytest.mark.cuda_emulated

cpu_ops = torch.ops.fastdrop
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_OF = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
STATE = torch.tensor([0x0123456789ABCDEF, 4 * 1001])


@pytest.fixture(scope="module")
def emulated():
    return emulated_cuda.ops()


def assert_bitwise(actual, expected):
    """Same dtype, shape and strides; the same bits wherever not both NaN."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.stride() == expected.stride()
    if actual.dtype == torch.int64:
        assert torch.equal(actual, expected)
        return
    bits_equal = actual.view(INT_OF[actual.dtype]) == expected.view(INT_OF[expected.dtype])
    both_nan = actual.isnan() & expected.isnan()
    mismatches = (~(bits_equal | both_nan)).sum().item()
    assert mismatches == 0, f"{mismatches} of {actual.numel()} elements differ"


def with_specials(x):
    """Some inf, -inf, NaN and -0.0 among the values (where dropped, inf * 0 is NaN)."""
    flat = x.view(-1) if x.is_contiguous() else None
    if flat is not None and flat.numel() >= 16:
        flat[3::97] = float("inf")
        flat[5::89] = float("-inf")
        flat[7::83] = float("nan")
        flat[11::79] = -0.0
    return x


def same_layout_copy(x):
    """A copy of x with x's sizes, strides and storage offset (so the same alignment)."""
    base = torch.empty(x.untyped_storage().nbytes() // x.element_size(), dtype=x.dtype)
    copy = base.as_strided(x.size(), x.stride(), x.storage_offset())
    copy.copy_(x)
    return copy


def layouts(dtype):
    """(label, make(shape) -> a tensor of that shape in the layout)."""

    def contiguous(shape):
        return with_specials(torch.randn(shape).to(dtype))

    def misaligned(shape):
        numel = torch.Size(shape).numel()
        return with_specials(torch.randn(numel + 1).to(dtype))[1:].view(shape)

    def channels_last(shape):
        x = contiguous(shape)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def permuted(shape):
        return contiguous(tuple(reversed(shape))).permute(*reversed(range(len(shape))))

    def sliced(shape):
        wide = contiguous((*shape[:-1], 2 * shape[-1] + 1))
        return wide[..., 1::2]

    return [
        ("contiguous", contiguous),
        ("misaligned", misaligned),
        ("channels_last", channels_last),
        ("permuted", permuted),
        ("sliced", sliced),
    ]


# Sizes that end anywhere in a pack, rows of whole packs (the bias read a pack
# at a time) and not, channels_last channel counts that are multiples of 8
# (the channels kernel, odd and even pixel counts) and not, NCHW rows of whole
# packs (the rows kernel) and not.
SHAPES = [(0, 3), (1,), (7,), (9,), (3, 1001), (4, 6, 5, 7), (2, 3, 4, 17), (5, 16), (3, 4, 24), (2, 16, 3, 5)]
GROUPED_SHAPES = [
    (0, 3),
    (2, 3),
    (3, 5, 7),
    (4, 6, 5, 7),
    (2, 3, 4, 17),
    (16, 8),
    (9, 4, 6),
    (4, 6, 4, 4),
    (2, 16, 3, 5),
    (3, 8, 2, 2),
    (2, 24, 1, 1),
]


def many_dims(dtype):
    """Ten dims that no merging reduces to eight: the copy fallback."""
    return with_specials(torch.randn([2] * 10).to(dtype)).permute(9, 1, 8, 3, 6, 5, 4, 7, 2, 0)


# Each operator as (label, grouped?, call(ops, operands, p, generator) -> tensors to compare).
# operands: x (the dropped input / gradient), residual and bias of x's shape (bias: x's last dim).
def _inplace(name):
    def call(ops, o, p, g):
        x = same_layout_copy(o["x"])
        state = getattr(ops, name)(x, p, g)
        return x, state

    return call


def widened(x):
    """x in the next wider float dtype (float for 16 bits, double for float), in x's layout,
    nudged off the narrow dtype's values: a residual stream kept wider than its branch
    (whose values a kernel that read it as the branch's type would round)."""
    wide = torch.float32 if x.element_size() == 2 else torch.float64
    base = torch.empty(x.untyped_storage().nbytes() // x.element_size(), dtype=wide)
    copy = base.as_strided(x.size(), x.stride(), x.storage_offset())
    copy.copy_(x)
    copy.mul_(1 + (2**-20 if wide == torch.float32 else 2**-40))
    return copy


def _subset(branch_of, wider=False):
    """drop_path_add_subset with every other sample kept; branch_of(x, kept) gives branch_kept."""

    def call(ops, o, p, g):
        x = o["x"]
        kept = torch.arange(0, x.shape[0], 2)
        residual = widened(o["residual"]) if wider else o["residual"]
        return (ops.drop_path_add_subset(residual, branch_of(x, kept), kept, p, True),)

    return call


def _subset_backward(wider=False):
    """drop_path_add_subset's gradient of branch_kept, every other sample kept, x the gradient."""

    def call(ops, o, p, g):
        x = o["x"]
        kept = torch.arange(0, x.shape[0], 2)
        grad = widened(x) if wider else x
        return (ops.drop_path_add_subset_backward(grad, kept, p, True, x.dtype),)

    return call


def _drop_block(block, centred=False, share_channels=False, scale="input", backward=False):
    """drop_block of x as (N, C, H, W) (fewer dims get leading ones; more than 5 are
    flattened into the last), or its backward with x the gradient: output, rng_state, kept."""

    def call(ops, o, p, g):
        x = o["x"]
        while x.dim() < 4:
            x = x.unsqueeze(0)
        x = x.flatten(4) if x.dim() > 5 else x
        blocks = [block] * (x.dim() - 2)
        forward = ops.drop_block(x, p, blocks, centred, share_channels, 1e-6, scale, g)
        if not backward:
            return forward
        _, state, kept = forward
        return (ops.drop_block_backward(x, state, kept, p, blocks, centred, share_channels, 1e-6, scale),)

    return call


def _row_major(shape):
    strides, stride = [0] * len(shape), 1
    for d in reversed(range(len(shape))):
        strides[d], stride = stride, stride * shape[d]
    return strides


# indexed_dropout's decision index: (variant, strides of a shape, base).
INDEXED = {
    # vmap's "same" (batch stride 0), the base off a Philox block boundary
    "same": ("dropout", lambda shape: [0, *_row_major(shape[1:])], 5),
    # a vmap level over channels: groups (n, c), based past whole blocks and not
    "channels": ("feature_dropout", lambda shape: [shape[1], 1] + [0] * (len(shape) - 2), 16),
    "channels_unaligned": ("alpha_dropout", lambda shape: [shape[1], 1] + [0] * (len(shape) - 2), 3),
    # indices in the reverse order of the dims (column-major)
    "transposed": ("dropout", lambda shape: list(reversed(_row_major(list(reversed(shape))))), 0),
    # an inner step so long that 32-bit pieces hold a few elements each
    "long_steps": ("unscaled", lambda shape: [*_row_major(shape[:-1]), 2**27 + 3], 2**40),
}


def _indexed(label, inplace=False, backward=False):
    variant, strides_of, base = INDEXED[label]

    def call(ops, o, p, g):
        strides = strides_of(o["x"].shape)
        if backward:
            return (ops.indexed_dropout_backward(o["x"], STATE, p, variant, strides, base),)
        if inplace:
            x = same_layout_copy(o["x"])
            return x, ops.indexed_dropout_(x, p, variant, strides, base, g)
        return ops.indexed_dropout(o["x"], p, variant, strides, base, g)

    return call


OPERATORS = [
    ("dropout", False, lambda ops, o, p, g: ops.dropout(o["x"], p, g)),
    ("alpha_dropout", False, lambda ops, o, p, g: ops.alpha_dropout(o["x"], p, g)),
    ("feature_dropout", True, lambda ops, o, p, g: ops.feature_dropout(o["x"], p, g)),
    ("feature_alpha_dropout", True, lambda ops, o, p, g: ops.feature_alpha_dropout(o["x"], p, g)),
    ("dropout_", False, _inplace("dropout_")),
    ("alpha_dropout_", False, _inplace("alpha_dropout_")),
    ("feature_dropout_", True, _inplace("feature_dropout_")),
    ("feature_alpha_dropout_", True, _inplace("feature_alpha_dropout_")),
    ("dropout_backward", False, lambda ops, o, p, g: (ops.dropout_backward(o["x"], STATE, p),)),
    ("alpha_dropout_backward", False, lambda ops, o, p, g: (ops.alpha_dropout_backward(o["x"], STATE, p),)),
    ("feature_dropout_backward", True, lambda ops, o, p, g: (ops.feature_dropout_backward(o["x"], STATE, p),)),
    (
        "feature_alpha_dropout_backward",
        True,
        lambda ops, o, p, g: (ops.feature_alpha_dropout_backward(o["x"], STATE, p),),
    ),
    ("drop_path", True, lambda ops, o, p, g: ops.drop_path(o["x"], p, True, True, g)),
    ("drop_path_batch_unscaled", True, lambda ops, o, p, g: ops.drop_path(o["x"], p, False, False, g)),
    ("drop_path_backward", True, lambda ops, o, p, g: (ops.drop_path_backward(o["x"], STATE, p, True, True),)),
    ("drop_path_add", True, lambda ops, o, p, g: ops.drop_path_add(o["residual"], o["x"], p, True, g)),
    ("dropout_add", False, lambda ops, o, p, g: ops.dropout_add(o["residual"], o["x"], p, g)),
    ("bias_dropout_add", False, lambda ops, o, p, g: ops.bias_dropout_add(o["x"], o["bias"], o["residual"], p, g)),
    ("drop_path_add_wider", True, lambda ops, o, p, g: ops.drop_path_add(widened(o["residual"]), o["x"], p, True, g)),
    ("dropout_add_wider", False, lambda ops, o, p, g: ops.dropout_add(widened(o["residual"]), o["x"], p, g)),
    (
        "bias_dropout_add_wider",
        False,
        lambda ops, o, p, g: ops.bias_dropout_add(o["x"], o["bias"], widened(o["residual"]), p, g),
    ),
    ("drop_path_add_subset", True, _subset(lambda x, kept: x.index_select(0, kept))),
    ("drop_path_add_subset_strided_branch", True, _subset(lambda x, kept: x[::2])),
    ("drop_path_add_subset_wider", True, _subset(lambda x, kept: x.index_select(0, kept), wider=True)),
    ("drop_path_add_subset_backward", True, _subset_backward()),
    ("drop_path_add_subset_backward_wider", True, _subset_backward(wider=True)),
    ("drop_block", True, _drop_block(3)),
    ("drop_block_centred_even", True, _drop_block(2, centred=True, scale="float")),
    ("drop_block_shared_long", True, _drop_block(40, centred=True, share_channels=True, scale="none")),
    ("drop_block_backward", True, _drop_block(3, backward=True)),
    *[(f"indexed_dropout_{label}", True, _indexed(label)) for label in INDEXED],
    ("indexed_dropout__same", True, _indexed("same", inplace=True)),
    ("indexed_dropout_backward_channels_unaligned", True, _indexed("channels_unaligned", backward=True)),
    ("indexed_dropout_backward_long_steps", True, _indexed("long_steps", backward=True)),
]

CONFIGS = {
    "production_grid": {},
    "one_block_of_32": {"blocks": 1, "threads": 32},
    "reversed": {"order": "reverse"},
    "shuffled": {"order": "shuffled", "shuffle_seed": 7},
    "few_multiprocessors": {"multiprocessors": 1},
    # Kernels index a launch in 32 bits: past that, tensors run in pieces or on
    # contiguous copies. A low limit sends these small tensors down those paths.
    "small_pieces": {"max_kernel_index": 100},
}


def operand_sets(dtype, grouped):
    """Operand dicts over every layout and shape (residual and bias in other layouts too)."""
    for label, make in layouts(dtype):
        for shape in GROUPED_SHAPES if grouped else SHAPES:
            x = make(shape)
            residual = make(shape) if label != "sliced" else torch.randn(shape).to(dtype)
            bias_source = torch.randn(2 * shape[-1] + 1).to(dtype)
            bias = bias_source[1::2] if label == "sliced" else bias_source[: shape[-1]]
            yield f"{label}{list(shape)}", {"x": x, "residual": residual, "bias": bias}
    x = many_dims(dtype)
    yield "ten_dims", {"x": x, "residual": many_dims(dtype), "bias": torch.randn(x.shape[-1]).to(dtype)}
    # A contiguous input beside a strided residual (a slice, so the output, which takes the
    # residual's memory format, is contiguous) and an aligned or a misaligned bias: no fast
    # path may take the residual for contiguous.
    shape = (4, 16, 3, 8)
    residual = with_specials(torch.randn(4, 16, 3, 16).to(dtype))[..., ::2]
    for bias_label, bias in (
        ("", torch.randn(shape[-1]).to(dtype)),
        ("_misaligned_bias", torch.randn(9).to(dtype)[1:]),
    ):
        yield (
            f"strided_residual{bias_label}",
            {"x": with_specials(torch.randn(shape).to(dtype)), "residual": residual, "bias": bias},
        )


def run_both(emulated, call, operands, p, seed=0):
    cpu = call(cpu_ops, operands, p, torch.Generator().manual_seed(seed))
    emu = call(emulated, operands, p, torch.Generator().manual_seed(seed))
    return cpu, emu


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("label, grouped, call", OPERATORS, ids=[op[0] for op in OPERATORS])
def test_cuda_kernels_match_the_cpu_kernels_bit_for_bit(emulated, config, dtype, label, grouped, call):
    launches = emulated.launches()
    with emulated_cuda.settings(**CONFIGS[config]):
        for case, operands in operand_sets(dtype, grouped):
            cpu, emu = run_both(emulated, call, operands, 0.3, seed=len(case))
            for cpu_tensor, emu_tensor in zip(cpu, emu):
                try:
                    assert_bitwise(emu_tensor, cpu_tensor)
                except AssertionError as error:
                    raise AssertionError(f"{label} on {case}: {error}") from None
    assert emulated.launches() > launches


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.99999, 1.0])
@pytest.mark.parametrize("label, grouped, call", OPERATORS, ids=[op[0] for op in OPERATORS])
def test_every_probability_regime(emulated, p, label, grouped, call):
    # p = 1e-6 and 0.99999 tie on the first 16 bits now and then: the extension words.
    for dtype in (torch.float32, torch.float16):
        operands = {
            "x": with_specials(torch.randn(33, 257).to(dtype)),
            "residual": torch.randn(33, 257).to(dtype),
            "bias": torch.randn(257).to(dtype),
        }
        cpu, emu = run_both(emulated, call, operands, p)
        for cpu_tensor, emu_tensor in zip(cpu, emu):
            assert_bitwise(emu_tensor, cpu_tensor)


LARGE_OFFSET = 4 * (2**41 + 12345)


@pytest.mark.parametrize("graph_capture", [False, True], ids=["by_value", "graph_capture"])
@pytest.mark.parametrize("name", ["dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout"])
def test_large_offsets_and_the_graph_capture_state(emulated, graph_capture, name):
    # The forward reads (seed, offset) through at::cuda::philox::unpack, by value
    # or through the pointers a captured graph passes, and records both.
    x = torch.randn(4, 6, 33)
    with emulated_cuda.settings(philox_offset=LARGE_OFFSET, graph_capture=graph_capture):
        y, state = getattr(emulated, name)(x, 0.4)
    assert state[1].item() == LARGE_OFFSET
    mask = ref.variant_mask(name, state, x.shape, 0.4)
    assert_bitwise(y, ref.forward(name, x, mask, 0.4))
    # The backward kernels regenerate the same mask from the recorded state, on either device.
    grad = torch.randn_like(x)
    backward = name + "_backward"
    assert_bitwise(getattr(emulated, backward)(grad, state, 0.4), getattr(cpu_ops, backward)(grad, state, 0.4))


@pytest.mark.parametrize("graph_capture", [False, True], ids=["by_value", "graph_capture"])
def test_large_offsets_in_the_fused_forms(emulated, graph_capture):
    x, residual, bias = torch.randn(12, 40), torch.randn(12, 40), torch.randn(40)
    with emulated_cuda.settings(philox_offset=LARGE_OFFSET, graph_capture=graph_capture):
        y, state = emulated.bias_dropout_add(x, bias, residual, 0.3)
        z, path_state = emulated.drop_path_add(residual, x, 0.5)
    assert state[1].item() == path_state[1].item() == LARGE_OFFSET
    assert_bitwise(y, residual + ref.dropout(x + bias, keep_mask(state, x.shape, 0.3), 0.3))
    keep = ref.sample_mask(path_state, 12, 0.5)
    assert_bitwise(z, torch.where(keep[:, None], residual + ref.timm_drop_path(x, keep, 0.5), residual))


def test_an_empty_forward_still_records_its_state(emulated):
    with emulated_cuda.settings(philox_offset=LARGE_OFFSET):
        y, state = emulated.dropout(torch.empty(0, 5), 0.5)
    assert y.shape == (0, 5) and state[1].item() == LARGE_OFFSET


def test_launch_limits_are_cudas(emulated):
    with emulated_cuda.settings(threads=2048):
        with pytest.raises(RuntimeError, match="invalid block"):
            emulated.dropout(torch.ones(100), 0.5)


def test_every_call_launches_a_kernel_on_the_emulated_device(emulated):
    before = emulated.launches()
    emulated.dropout(torch.ones(10), 0.5)
    emulated.dropout_backward(torch.ones(10), STATE, 0.5)
    assert emulated.launches() == before + 2
