"""The random-number contract: keep(i) = f(seed, offset, logical index i, p), nothing else.

Statistical assertions use |z| < 5.6 (a two-sided false-failure rate of about
2e-8 per assertion) or exact binomial p-values above 1e-7 (a false-failure
rate of 1e-7 per assertion), so a fixed seed is not what makes them pass.
"""

import math
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

import fastdrop
import oracle
from conftest import assert_identical, requires_cuda
from oracle import (
    drop_threshold,
    element_bits,
    extension_word,
    kat_vectors,
    keep_mask,
    keeps,
    philox4x32_10,
    ties,
)

ops = torch.ops.fastdrop
Z_LIMIT = 5.6


def test_reference_philox_matches_every_known_answer_vector():
    path, vectors = kat_vectors()
    assert len(vectors) >= 3, f"no known-answer vectors read from {path}"
    for counter, key, expected in vectors:
        assert [int(w) for w in philox4x32_10(counter, key)] == expected


def test_contract_is_curand_layout():
    # Block b of a call at generator offset o uses counter {o / 4, b}: check the
    # counter words directly against the reference engine.
    seed, offset, block = 0x0123456789ABCDEF, 4 * 0x1_0000_0003, 0x2_0000_0005
    words = philox4x32_10((3, 1, 5, 2), (0x89ABCDEF, 0x01234567))
    bits = element_bits(seed, offset, np.arange(8 * block, 8 * block + 8, dtype=np.uint64))
    expected = [(int(w) >> s) & 0xFFFF for w in words for s in (0, 16)]
    assert bits.tolist() == expected


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 63, 1000, 4097, 2**16 + 3, 300_007])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_mask_and_values_match_the_contract(device, dtype, numel, p):
    x = torch.randn(numel, device=device).to(dtype)
    y, rng_state = ops.dropout(x, p)
    mask = keep_mask(rng_state, x.shape, p)
    assert_identical(y, oracle.dropout(x, mask, p))


EXTREME_PS = [
    5e-324,
    1e-300,
    2.0**-60,
    1e-12,
    1e-6,
    5e-6,
    1e-5,
    2.0**-16,
    1e-3,
    0.1,
    0.5,
    0.999,
    0.99999,
    0.999995,
    1 - 2.0**-40,
    1 - 2.0**-53,
]


@pytest.mark.parametrize("p", EXTREME_PS)
def test_the_contract_drops_with_probability_exactly_p(p):
    # P(U < p) = high / 2^16 + P(tie) * P(rest of U < rest of p) = (high + remainder) / 2^16,
    # in exact rational arithmetic: the realized probability is p for every double.
    high, remainder = drop_threshold(p)
    assert Fraction(high) + Fraction(remainder) == Fraction(p) * 65536
    assert 0 <= remainder < 1


def test_drop_threshold_of_zero_and_one():
    assert drop_threshold(0.0) == (0, 0.0)
    assert drop_threshold(1.0) == (65536, 0.0)


def tie_cases():
    """(label, decisions, call): call(x, p, generator) -> (y, rng_state) on ones of shape (decisions, 1);
    y is positive where the decision kept."""

    def forward(name):
        return lambda x, p, g: getattr(ops, name)(x, p, g)

    def inplace(name):
        return lambda x, p, g: (x, getattr(ops, name + "_")(x, p, g))

    def backward(name):
        def call(x, p, g):
            state = getattr(ops, name)(x, p, g)[1]
            return getattr(ops, name + "_backward")(x, state, p), state

        return call

    def drop_path_backward(x, p, g):
        state = ops.drop_path(x, p, True, True, g)[1]
        return ops.drop_path_backward(x, state, p, True, True), state

    def feature(call):  # one decision per (n, c): channels of length 1
        return lambda x, p, g: call(x.view(1, -1, 1), p, g)

    def channels_last(call):  # the CPU's tiled walk: each channel's run of bits, transposed into pixels
        return lambda x, p, g: call(x.view(16, 64, 32, -1).contiguous(memory_format=torch.channels_last), p, g)

    def small_maps(call):  # groups of whole 8-channel 1x2 planes, transposed plane by plane
        return lambda x, p, g: call(x.view(-1, 8, 1, 2).contiguous(memory_format=torch.channels_last), p, g)

    zeros = torch.zeros_like
    return [
        ("dropout", forward("dropout")),
        ("dropout_", inplace("dropout")),
        ("dropout_backward", backward("dropout")),
        ("alpha_dropout", forward("alpha_dropout")),
        ("alpha_dropout_", inplace("alpha_dropout")),
        ("dropout_channels_last", channels_last(forward("dropout"))),
        ("dropout__channels_last", channels_last(inplace("dropout"))),
        ("dropout_backward_channels_last", channels_last(backward("dropout"))),
        ("alpha_dropout_channels_last", channels_last(forward("alpha_dropout"))),
        ("dropout_small_maps", small_maps(forward("dropout"))),
        ("dropout_backward_small_maps", small_maps(backward("dropout"))),
        ("feature_dropout", feature(forward("feature_dropout"))),
        ("feature_dropout_", feature(inplace("feature_dropout"))),
        ("feature_dropout_backward", feature(backward("feature_dropout"))),
        ("feature_alpha_dropout", feature(forward("feature_alpha_dropout"))),
        ("drop_path", lambda x, p, g: ops.drop_path(x, p, True, True, g)),
        ("drop_path_backward", drop_path_backward),
        ("drop_path_add", lambda x, p, g: ops.drop_path_add(zeros(x), x, p, True, g)),
        ("dropout_add", lambda x, p, g: ops.dropout_add(zeros(x), x, p, g)),
        ("bias_dropout_add", lambda x, p, g: ops.bias_dropout_add(x, zeros(x[0]), zeros(x), p, g)),
    ]


@pytest.mark.parametrize("label, call", tie_cases(), ids=[label for label, _ in tie_cases()])
@pytest.mark.parametrize("p", [1e-6, 0.3, 0.99999, 1 - 2.0**-53])
def test_ties_on_the_first_16_bits_follow_the_extension_words(device, label, call, p):
    # 2^20 decisions tie about 16 times on their first 16 bits; each is
    # decided by the extension words, as the reference decides it.
    decisions = 1 << 20
    generator = torch.Generator(device).manual_seed(1234)
    y, rng_state = call(torch.ones(decisions, 1, device=device), p, generator)
    assert ties(rng_state, decisions, p) > 0
    assert torch.equal((y > 0).flatten().cpu(), keep_mask(rng_state, (decisions,), p))


@pytest.mark.parametrize("op", ["dropout", "feature_dropout"])
def test_a_tie_past_the_first_extension_word(device, op):
    # A p chosen so that index 1000's first 16 bits and first extension word
    # both equal p's: its decision rests on the second extension word.
    seed, offset, index = 0x5EED5EED5EED5EED, 8, 1000
    high = int(element_bits(seed, offset, np.array([index], dtype=np.uint64))[0])
    word = extension_word(seed, offset, index, 0)
    rng_state = torch.tensor([seed, offset], device=device)
    outcomes = set()
    for eighths in range(1, 32):  # p = (high * 2^32 + word + eighths / 32) / 2^48: 53 bits, exact
        p = (high * 2**32 + word + eighths / 32) / 2**48
        if op == "dropout":
            y = ops.dropout_backward(torch.ones(2048, device=device), rng_state, p)
        else:
            y = ops.feature_dropout_backward(torch.ones(1, 2048, device=device), rng_state, p)
        kept = bool(y.flatten()[index] != 0)
        assert kept == bool(keeps(seed, offset, [index], p)[0])
        assert kept == (extension_word(seed, offset, index, 1) >= eighths * 2**27)
        outcomes.add(kept)
    assert outcomes == {True, False}


@pytest.mark.parametrize("p", [1e-6, 1e-5, 1e-3, 0.1, 0.5, 0.999, 0.99999])
def test_realized_drop_rate_is_p_at_every_scale(device, p):
    # 2^26 decisions (2^24 for p in (1e-3, 0.999)): enough that a drop rate off by
    # 1% of p or of 1 - p, or a rounding of p to 16 bits, fails. The exact
    # two-sided binomial p-value must exceed 1e-7 (false-failure rate 1e-7).
    stats = pytest.importorskip("scipy.stats")
    n = 1 << (26 if min(p, 1 - p) < 1e-2 else 24)
    x = torch.ones(n, dtype=torch.bfloat16, device=device)
    y, rng_state = ops.dropout(x, p)
    dropped = int((y == 0).sum())
    assert stats.binomtest(dropped, n, p).pvalue > 1e-7, f"{dropped} of {n} dropped at p={p}"
    # With the exact probability, the scale 1 / (1 - p) keeps the mean: E[y] = 1.
    kept = n - dropped
    mean = kept * float(torch.tensor(1 / (1 - p), dtype=torch.bfloat16).float()) / n if kept else 0.0
    assert y.float().mean().item() == pytest.approx(mean, rel=1e-2)


@pytest.mark.parametrize("p", [1e-5, 0.99999])
def test_realized_channel_drop_rate_is_p_at_the_extremes(device, p):
    stats = pytest.importorskip("scipy.stats")
    groups = 1 << 24
    y, _ = ops.feature_dropout(torch.ones(1 << 12, groups >> 12, 1, dtype=torch.bfloat16, device=device), p)
    dropped = int((y == 0).sum())
    assert stats.binomtest(dropped, groups, p).pvalue > 1e-7


def test_consecutive_masks_are_independent(device):
    n, p = 1 << 20, 0.5
    torch.manual_seed(1)
    x = torch.ones(n, device=device)
    first = (ops.dropout(x, p)[0] != 0).double()
    second = (ops.dropout(x, p)[0] != 0).double()
    correlation = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    # Under independence, correlation * sqrt(n) is close to a standard normal.
    assert abs(correlation * math.sqrt(n)) < Z_LIMIT
    assert not torch.equal(first, second)


def test_successive_calls_take_distinct_rng_states(device):
    x = torch.ones(100, device=device)
    states = {tuple(ops.dropout(x, 0.5)[1].tolist()) for _ in range(50)}
    assert len(states) == 50


def test_manual_seed_reproduces(device):
    x = torch.randn(10_000, device=device)
    torch.manual_seed(123)
    first = fastdrop.functional.dropout(x, 0.3)
    torch.manual_seed(123)
    assert_identical(fastdrop.functional.dropout(x, 0.3), first)


def test_explicit_generator_reproduces_and_leaves_default_alone(device):
    x = torch.randn(10_000, device=device)
    default_state = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    a = fastdrop.functional.dropout(x, 0.3, generator=torch.Generator(device).manual_seed(7))
    b = fastdrop.functional.dropout(x, 0.3, generator=torch.Generator(device).manual_seed(7))
    c = fastdrop.functional.dropout(x, 0.3, generator=torch.Generator(device).manual_seed(8))
    assert_identical(a, b)
    assert not torch.equal(a, c)
    after = torch.random.get_rng_state() if device == "cpu" else torch.cuda.get_rng_state()
    assert torch.equal(default_state, after)


@requires_cuda
def test_generator_on_the_wrong_device_is_refused():
    with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator"):
        fastdrop.functional.dropout(torch.ones(4), 0.5, generator=torch.Generator("cuda"))
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
        fastdrop.functional.dropout(torch.ones(4, device="cuda"), 0.5, generator=torch.Generator("cpu"))


def layouts(device):
    base = torch.randn(4, 6, 10, 12, device=device)
    return {
        "permuted": base.permute(2, 0, 3, 1),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": base[:, ::2, 1:, :7],
        "transposed": base.transpose(0, 3),
        "expanded_rows": torch.randn(10, 1, 12, device=device).expand(10, 5, 12),
        "misaligned": torch.randn(1001, device=device)[1:],
        "scalar": torch.tensor(3.0, device=device),
    }


@pytest.mark.parametrize("layout", list(layouts("cpu")))
def test_mask_ignores_memory_layout(device, layout):
    x = layouts(device)[layout]
    torch.manual_seed(5)
    y = fastdrop.functional.dropout(x, 0.4)
    torch.manual_seed(5)
    y_contiguous = fastdrop.functional.dropout(x.contiguous(), 0.4)
    assert_identical(y.contiguous(), y_contiguous)
    assert y.stride() == torch.empty_like(x).stride()


def memory_ordered(shape, order, dtype, generator):
    """Values of `shape` laid out in memory in dim order `order` (outermost first)."""
    values = torch.randn([shape[d] for d in order], generator=generator).to(dtype)
    return values.permute([order.index(d) for d in range(len(shape))])


@pytest.mark.parametrize(
    "shape, order",
    [
        ((3, 64, 24, 40), (0, 2, 3, 1)),  # channels_last: whole 8x8 transposes, several tiles a plane
        ((2, 130, 9, 37), (0, 2, 3, 1)),  # more channels than a tile takes (128 and 2), rows not adjacent
        ((5, 3, 61, 67), (0, 2, 3, 1)),  # an RGB image: three columns, long runs
        ((300, 517), (1, 0)),  # a transposed matrix
        ((70, 6, 50), (1, 2, 0)),  # a dim between the contiguous one and the innermost
        # Planes of a few elements, walked a group of whole planes at a time: 1x2 RGB maps (groups
        # of 682), 2x2 maps of 64 channels (16 a group, the last of 5), 1x2 maps of 300 channels,
        # 2x5 maps of 200 channels (8x8 transposes and edges, two planes a group)
        ((4096, 3, 1, 2), (0, 2, 3, 1)),
        ((37, 64, 2, 2), (0, 2, 3, 1)),
        ((8, 300, 1, 2), (0, 2, 3, 1)),
        ((5, 200, 2, 5), (0, 2, 3, 1)),
    ],
    ids=[
        "channels_last",
        "wide_channels",
        "rgb",
        "transposed",
        "middle_dim",
        "tiny_maps",
        "small_maps",
        "wide_tiny_maps",
        "wide_small_maps",
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op", ["dropout", "alpha_dropout"])
def test_memory_ordered_walk_gives_the_logical_walks_mask(shape, order, dtype, op):
    # On the CPU, inputs whose innermost logical dim is not innermost in memory are walked in tiles
    # (csrc/cpu/element_walk.h); the result must be the contiguous input's, forward and backward,
    # over thread splits, tile edges and runs that start anywhere in a Philox block.
    generator = torch.Generator().manual_seed(3)
    x = memory_ordered(shape, order, dtype, generator)
    grad = memory_ordered(shape, order, dtype, generator)
    assert not x.is_contiguous()
    y, rng_state = getattr(ops, op)(x, 0.3, torch.Generator().manual_seed(11))
    y_contiguous, rng_state_contiguous = getattr(ops, op)(x.contiguous(), 0.3, torch.Generator().manual_seed(11))
    assert_identical(rng_state, rng_state_contiguous)
    assert_identical(y, y_contiguous)
    assert y.stride() == x.stride()
    backward = getattr(ops, op + "_backward")
    assert_identical(backward(grad, rng_state, 0.3), backward(grad.contiguous(), rng_state, 0.3))


@pytest.mark.parametrize("step", [(2, 1), (1, 2)], ids=["batch_sliced", "groups_apart"])
def test_plane_groups_under_an_outer_dim(step):
    # channels_last planes of 3 x 2 under two batch dims that do not merge (the outer one sliced): the
    # planes group along the inner batch dim under each outer index; sliced the other way, planes are
    # not one after another and the walk takes tiles.
    generator = torch.Generator().manual_seed(8)
    x = memory_ordered((8, 6, 3, 1, 2), (0, 1, 3, 4, 2), torch.float32, generator)[:: step[0], :: step[1]]
    y, rng_state = ops.dropout(x, 0.3, torch.Generator().manual_seed(2))
    y_contiguous, _ = ops.dropout(x.contiguous(), 0.3, torch.Generator().manual_seed(2))
    assert_identical(y, y_contiguous)
    grad = torch.randn(x.shape, generator=generator)
    assert_identical(
        ops.dropout_backward(grad, rng_state, 0.3), ops.dropout_backward(grad.contiguous(), rng_state, 0.3)
    )


@pytest.mark.parametrize(
    "branch_dtype, residual_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16)],
    ids=str,
)
def test_memory_ordered_walk_of_dropout_add(branch_dtype, residual_dtype):
    # residual + dropout(x) on channels_last operands: three operands through the tiled walk.
    generator = torch.Generator().manual_seed(4)
    order, shape = (0, 2, 3, 1), (3, 72, 20, 30)
    residual = memory_ordered(shape, order, residual_dtype, generator)
    x = memory_ordered(shape, order, branch_dtype, generator)
    y, rng_state = ops.dropout_add(residual, x, 0.3, torch.Generator().manual_seed(6))
    y_contiguous, _ = ops.dropout_add(residual.contiguous(), x.contiguous(), 0.3, torch.Generator().manual_seed(6))
    assert_identical(y, y_contiguous)
    assert y.stride() == residual.stride()


def test_sliced_channels_last_input_walks_rows_apart():
    # A channels_last input sliced along W: its pixels are 2 * C apart, the output's C apart.
    x = torch.randn(2, 64, 10, 24).contiguous(memory_format=torch.channels_last)[..., ::2]
    y = fastdrop.functional.dropout(x, 0.4, generator=torch.Generator().manual_seed(2))
    assert_identical(y, fastdrop.functional.dropout(x.contiguous(), 0.4, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_mask_ignores_thread_count(layout):
    x = torch.randn(16, 64, 32, 32)  # 2^20 elements: many tiles or chunks per thread
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(9)
            results.append(fastdrop.functional.dropout(x, 0.5))
    finally:
        torch.set_num_threads(threads)
    assert_identical(results[0], results[1])


def test_dropout_with_seed_replays_a_call(device):
    x = torch.randn(5000, device=device)
    y, rng_state = ops.dropout(x, 0.25)
    seed, offset = rng_state.tolist()
    assert_identical(fastdrop.functional.dropout_with_seed(x, 0.25, seed % 2**64, offset), y)


def test_python_threads_draw_different_masks(device):
    x = torch.ones(1 << 18, device=device)
    results = [None] * 4
    barrier = threading.Barrier(len(results))

    def work(slot):
        barrier.wait()
        results[slot] = ops.dropout(x, 0.5)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({tuple(state.tolist()) for _, state in results}) == len(results)
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            assert not torch.equal(results[i][0], results[j][0])


@requires_cuda
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_cpu_and_cuda_agree_bit_for_bit(dtype, p):
    x = torch.randn(3, 1001, 17, device="cuda").to(dtype)
    y, rng_state = ops.dropout(x, p)
    y_cpu = ops.dropout_backward(x.cpu(), rng_state.cpu(), p)
    assert_identical(y.cpu(), y_cpu)
    g = torch.Generator("cuda").manual_seed(11)
    seed, offset = g.initial_seed(), g.get_offset()
    y = fastdrop.functional.dropout(x, p if p < 1 else 0.5, generator=g)
    assert_identical(y.cpu(), fastdrop.functional.dropout_with_seed(x.cpu(), p if p < 1 else 0.5, seed, offset))


@requires_cuda
def test_cuda_graph_replays_draw_fresh_masks():
    x = torch.randn(1 << 16, device="cuda")
    static_out = torch.empty_like(x)
    static_state = torch.empty(2, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, state = ops.dropout(x, 0.5)
        static_out.copy_(y)
        static_state.copy_(state)
    outputs = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        outputs.append((static_out.clone(), static_state.clone()))
    assert len({tuple(state.tolist()) for _, state in outputs}) == 3
    for out, state in outputs:
        assert_identical(out, oracle.dropout(x, keep_mask(state, x.shape, 0.5), 0.5))


@requires_cuda
def test_64_bit_indexing_past_2_to_the_31():
    # 2^31 + 17 elements: the contiguous kernels index in 64 bits, the grouped
    # ones run in 32-bit pieces; the last elements' decisions are the contract's,
    # and the CPU kernels regenerate the same values.
    numel = 2**31 + 17
    if torch.cuda.get_device_properties(0).total_memory < 4 * numel * 2 + (1 << 30):
        pytest.skip("not enough GPU memory")
    x = torch.ones(numel, dtype=torch.bfloat16, device="cuda")
    y, rng_state = ops.dropout(x, 0.5)
    tail = torch.arange(numel - 4096, numel, dtype=torch.int64)
    expected = torch.from_numpy(keeps(*(int(v) % 2**64 for v in rng_state.tolist()), tail.numpy(), 0.5))
    assert torch.equal((y[-4096:] != 0).cpu(), expected)
    del y
    # Channels of 8 elements: 2^28 + 2 channels, split into pieces; the last 512 channels checked on the CPU.
    channels = x.view(-1)[: (numel // 8) * 8].view(1, -1, 8)
    z, channel_state = ops.feature_dropout(channels, 0.5)
    keep = torch.from_numpy(
        keeps(
            *(int(v) % 2**64 for v in channel_state.tolist()),
            np.arange(channels.shape[1] - 512, channels.shape[1]),
            0.5,
        )
    )
    assert torch.equal((z[0, -512:, 0] != 0).cpu(), keep)
    del x, z
    torch.cuda.empty_cache()


def test_backward_regenerates_the_forward_mask(device):
    x = torch.randn(2, 3000, device=device, requires_grad=True)
    y = fastdrop.functional.dropout(x, 0.3)
    grad = torch.randn_like(y)
    y.backward(grad)
    mask = y.detach() != 0
    assert_identical(x.grad, oracle.dropout(grad, mask, 0.3))
