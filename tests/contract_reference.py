"""An independent NumPy statement of fastdrop's random-number contract.

Written from the specification (Random123's Philox4x32-10 and the counter
layout in csrc/philox.h), not from the kernels, so the kernels are tested
against it rather than against themselves.
"""

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
    """Random123's Philox4x32-10 known-answer vectors: the shared copy where present."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "kat" / "philox4x32_10.txt"
    path = shared if shared.exists() else Path(__file__).with_name("data") / "philox4x32_10_kat.txt"
    vectors = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        assert fields[0] == "philox4x32" and fields[1] == "10", line
        values = [int(f, 16) for f in fields[2:]]
        vectors.append((values[0:4], values[4:6], values[6:10]))
    return path, vectors
