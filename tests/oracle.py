"""The tests' oracle: what fastdrop must compute, stated independently of its kernels.

Two parts:

- The random-number contract in NumPy, written from the specification
  (Random123's Philox4x32-10 and the counter layout in csrc/philox.h), not from
  the kernels, so that the kernels are tested against it rather than against
  themselves: philox4x32_10, keeps, keep_mask.
- torch's own arithmetic for each dropout variant given a keep mask: each
  reference replays the ops torch runs (aten's _dropout_impl, or the fused
  kernel's backward for element-wise dropout) with the mask fastdrop drew, so
  fastdrop's outputs must match them bit for bit: dropout, alpha_dropout, ...
"""

import math
from pathlib import Path

import numpy as np
import torch

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """counter: 4 arrays (or scalars) of uint32 values; key: 2 ints. Returns 4 uint32 arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = int(key[0]), int(key[1])
    for _ in range(10):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p1 & MASK32,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & MASK32,
        )
        k0 = (k0 + W0) & 0xFFFFFFFF
        k1 = (k1 + W1) & 0xFFFFFFFF
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


def element_bits(seed, offset, indices):
    """The 16 bits the contract assigns to each logical index."""
    indices = np.asarray(indices, dtype=np.uint64)
    block = indices // np.uint64(8)
    lane = indices % np.uint64(8)
    column = offset // 4
    words = philox4x32_10(
        (
            np.full_like(block, column & 0xFFFFFFFF),
            np.full_like(block, column >> 32),
            block & MASK32,
            block >> np.uint64(32),
        ),
        (seed & 0xFFFFFFFF, seed >> 32),
    )
    stacked = np.stack(words).astype(np.uint64)  # (4, n)
    word = np.take_along_axis(stacked, (lane // np.uint64(2)).astype(np.int64)[None, :], axis=0)[0]
    return ((word >> ((lane % np.uint64(2)) * np.uint64(16))) & np.uint64(0xFFFF)).astype(np.uint32)


def drop_threshold(p):
    """p's first 16 bits (65536 for p == 1) and the rest, as the contract splits them."""
    if p >= 1.0:
        return 65536, 0.0
    scaled = p * 65536.0
    high = int(scaled)
    return high, scaled - high


def extension_word(seed, offset, index, w):
    """Bits 17 + 32 w ... 48 + 32 w of index's uniform: word w % 4 of block 2^63 + 16 index + w // 4."""
    block = (1 << 63) | (index << 4) | (w >> 2)
    column = offset // 4
    words = philox4x32_10(
        (column & 0xFFFFFFFF, column >> 32, block & 0xFFFFFFFF, block >> 32), (seed & 0xFFFFFFFF, seed >> 32)
    )
    return int(words[w & 3])


def keeps_on_tie(seed, offset, index, remainder):
    """U >= p for an index whose first 16 bits equal p's: the next bits, 32 at a time."""
    w = 0
    while remainder != 0.0:
        scaled = remainder * 4294967296.0
        digit = int(scaled)
        bits = extension_word(seed, offset, index, w)
        if bits != digit:
            return bits > digit
        remainder = scaled - digit
        w += 1
    return True


def keeps(seed, offset, indices, p):
    """The contract's decision (True: kept) for each index: U < p drops, exactly."""
    indices = np.asarray(indices, dtype=np.uint64)
    bits = element_bits(seed, offset, indices)
    high, remainder = drop_threshold(p)
    kept = bits > high
    for position in np.flatnonzero(bits == high):
        kept[position] = keeps_on_tie(seed, offset, int(indices[position]), remainder)
    return kept


def ties(rng_state, numel, p):
    """How many of the first numel indices tie on their first 16 bits (and need extension words)."""
    seed, offset = (int(v) & (2**64 - 1) for v in rng_state.cpu().tolist())
    return int((element_bits(seed, offset, np.arange(numel, dtype=np.uint64)) == drop_threshold(p)[0]).sum())


def keep_mask(rng_state, shape, p):
    """Boolean keep mask (torch, CPU) for a tensor of `shape` keyed by rng_state."""
    seed, offset = (int(v) & (2**64 - 1) for v in rng_state.cpu().tolist())
    numel = int(np.prod(shape, dtype=np.int64))
    return torch.from_numpy(keeps(seed, offset, np.arange(numel, dtype=np.uint64), p)).reshape(shape)


def kat_vectors():
    """Random123's Philox4x32-10 known-answer vectors (tests/data, a copy of Random123's kat_vectors)."""
    path = Path(__file__).with_name("data") / "philox4x32_10_kat.txt"
    vectors = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        assert fields[0] == "philox4x32" and fields[1] == "10", line
        values = [int(f, 16) for f in fields[2:]]
        vectors.append((values[0:4], values[4:6], values[6:10]))
    return path, vectors


# --- torch's arithmetic, given a mask ---


SELU_ALPHA = 1.7580993408473766


def dropout(x, mask, p):
    """Element-wise: torch's fused CUDA kernel, x * mask * (1 / (1 - p)) rounded once."""
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.ops.aten.native_dropout_backward(x, mask.to(x.device), 1.0 / (1.0 - p))


def _noise(x, mask, p, alpha):
    """torch's noise (and shift) tensors, in x's dtype, as aten's _dropout_impl builds them.

    One step is spelled out: torch's CUDA kernels add a Python scalar in
    op-math precision (float for half types), torch's CPU kernels round it to
    the tensor's dtype first. fastdrop (on both devices) follows the CUDA
    rounding, written here so that it is the same on either device.
    """
    noise = mask.to(device=x.device, dtype=x.dtype)
    if alpha:
        a = 1.0 / math.sqrt((SELU_ALPHA * SELU_ALPHA * p + 1) * (1 - p))
        opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
        shift = noise.add(-1).mul_(SELU_ALPHA * a).to(opmath).add_(SELU_ALPHA * a * p).to(x.dtype)
        noise.mul_(a)
        return noise, shift
    return noise.div_(1 - p), None


def unfused(x, mask, p, alpha):
    """Feature and alpha variants: x * noise (+ shift); x * 0 for p == 1."""
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype, device=x.device)
    noise, shift = _noise(x, mask, p, alpha)
    out = x.mul(noise)
    return out.add_(shift) if alpha else out


def unfused_grad(grad, mask, p, alpha):
    """The gradient torch's autograd gives x * noise (+ shift): grad * noise."""
    if p == 1.0:
        return grad * torch.zeros((), dtype=grad.dtype, device=grad.device)
    return grad * _noise(grad, mask, p, alpha)[0]


# name -> (per (n, c) row?, alpha?)
VARIANTS = {
    "dropout": (False, False),
    "alpha_dropout": (False, True),
    "feature_dropout": (True, False),
    "feature_alpha_dropout": (True, True),
}


def variant_mask(name, rng_state, shape, p):
    """The keep mask of variant `name` for a tensor of `shape`, broadcastable to it."""
    per_row, _ = VARIANTS[name]
    if not per_row:
        return keep_mask(rng_state, shape, p)
    rows = keep_mask(rng_state, (shape[0] * shape[1],), p)
    return rows.reshape(shape[0], shape[1], *([1] * (len(shape) - 2)))


def forward(name, x, mask, p):
    per_row, alpha = VARIANTS[name]
    if name == "dropout":
        return dropout(x, mask.expand(x.shape), p)
    return unfused(x, mask, p, alpha)


def backward(name, grad, mask, p):
    per_row, alpha = VARIANTS[name]
    if name == "dropout":
        return dropout(grad, mask.expand(grad.shape), p)
    return unfused_grad(grad, mask, p, alpha)


def sample_mask(rng_state, batch, p):
    """Per-sample keep decisions (drop path row mode): the contract's index is the sample."""
    return keep_mask(rng_state, (batch,), p)


def timm_drop_path(x, sample_keep, drop_prob, scale_by_keep=True):
    """timm.layers.drop_path with the random tensor replaced by the given decisions."""
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = sample_keep.to(device=x.device, dtype=x.dtype).reshape(shape)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def torchvision_stochastic_depth(x, keep, p, mode):
    """torchvision.ops.stochastic_depth with the noise replaced by the given decisions."""
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = keep.to(device=x.device, dtype=x.dtype).reshape(size)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return x * noise


def every_half_value(shape, device, shift=0, dtype=torch.float16):
    """All 65536 bit patterns of a 16-bit float type (subnormals, infinities, NaNs) in `shape`,
    rolled by `shift`."""
    bits = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).roll(shift)
    return bits.view(dtype).reshape(shape).to(device)


def residual_and_branch(device, shape, branch_dtype, residual_dtype, layout="contiguous"):
    """A residual and a branch of `shape` (leaves requiring grad) in one of the layouts the residual
    forms' tests take: contiguous, channels_last, "branch_transposed" (dims 0 and 1 swapped in
    memory), "branch_permuted" (channels_last-like), "residual_sample_inner" (samples not outermost)."""
    residual = torch.randn(shape, device=device, dtype=torch.float64).to(residual_dtype)
    branch = torch.randn(shape, device=device).to(branch_dtype)
    if layout == "channels_last":
        residual, branch = (t.contiguous(memory_format=torch.channels_last) for t in (residual, branch))
    elif layout == "branch_transposed":
        branch = branch.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "branch_permuted":
        branch = branch.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    elif layout == "residual_sample_inner":
        residual = residual.transpose(0, 1).contiguous().transpose(0, 1)
    return residual.requires_grad_(), branch.requires_grad_()


def block_seeds(rng_state, seed_shape, gamma):
    """DropBlock's seeds (True: a seed) over seed_shape, keyed by rng_state: the contract's drops at rate gamma."""
    return ~keep_mask(rng_state, seed_shape, gamma)


def block_cover(seeds, sizes, blocks, centred):
    """1.0 where some seed's block covers an element, over `sizes`: seed s covers s + shift ...
    s + shift + block - 1 along each spatial dim (shift -(block // 2) when centred, else 0);
    max pooling of the seed grid padded so that each output sees its seeds."""
    pads = []
    for d in reversed(range(len(sizes))):
        left = blocks[d] - 1 - (blocks[d] // 2 if centred else 0)
        pads += [left, sizes[d] - seeds.shape[2 + d] - left + blocks[d] - 1]
    pool = torch.nn.functional.max_pool2d if len(sizes) == 2 else torch.nn.functional.max_pool3d
    return pool(torch.nn.functional.pad(seeds.double(), pads), kernel_size=tuple(blocks), stride=1)


def drop_block(x, rng_state, gamma, block_size, centred=False, share_channels=False, eps=1e-6, scale="input"):
    """DropBlock of x from the seeds rng_state draws, in torch ops: torchvision's arithmetic
    (scale "input": noise and scale in x's dtype), timm's ("float": the scale in float32, then
    x's dtype, multiplied into the noise) or no scale ("none"). block_size: one per spatial dim,
    each clipped to its dim. (output, noise): noise is the 0/1 keep mask (one plane per sample
    with share_channels)."""
    sizes = list(x.shape[2:])
    blocks = [min(block, size) for block, size in zip(block_size, sizes)]
    seed_sizes = sizes if centred else [size - block + 1 for size, block in zip(sizes, blocks)]
    planes = [x.shape[0], 1 if share_channels else x.shape[1]]
    seeds = block_seeds(rng_state, planes + seed_sizes, gamma)
    noise = (1 - block_cover(seeds, sizes, blocks, centred)).to(x.device, x.dtype)
    if scale == "input":
        return x * noise * (noise.numel() / (eps + noise.sum())), noise
    if scale == "float":
        factor = noise.numel() / noise.to(torch.float32).sum().add(eps)
        return x * (noise * factor.to(x.dtype)), noise
    return x * noise, noise
