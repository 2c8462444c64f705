// DropBlock's mask, shared by the CPU and CUDA kernels: seeds drawn on a grid
// (one contract decision per seed, dropped with probability gamma), each
// dropping a block of `block` elements along every spatial dim; an element is
// dropped when any seed's block covers it. The mask is a separable dilation of
// the seeds, computed 32 columns at a time as bit words: along a row from the
// seed bits (dilated_word), then across rows by OR-ing those row words.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "dropout_math.h"

namespace fastdrop {

constexpr int kMaskWordBits = 32;

// Spatial dims are (D, H, W); a 2-D block has D = 1 and a block of 1 along it.
struct BlockGeometry {
  int64_t planes;    // mask planes: one per (n, c), or per n when a sample's channels share one
  int64_t channels;  // C: with a shared mask, plane (n, c) reads mask plane n
  bool shared;       // one mask for all of a sample's channels (timm's couple_channels)
  int64_t size[3];   // the spatial sizes
  int64_t seeds[3];  // the seed grid's sizes
  int64_t shift[3];  // seed s drops [s + shift, s + shift + block - 1]
  int64_t block[3];
  int64_t words;  // mask words per row: ceil(W / 32)

  FASTDROP_HOST_DEVICE int64_t rows() const { return size[0] * size[1]; }
  FASTDROP_HOST_DEVICE int64_t seed_rows() const { return seeds[0] * seeds[1]; }
  FASTDROP_HOST_DEVICE int64_t plane_elements() const { return size[0] * size[1] * size[2]; }
  FASTDROP_HOST_DEVICE int64_t mask_plane_of(int64_t plane) const { return shared ? plane / channels : plane; }
  // The seed index of (plane, s0, s1, s2), row-major over (planes, seeds).
  FASTDROP_HOST_DEVICE uint64_t seed_index(int64_t plane, int64_t s0, int64_t s1, int64_t s2) const {
    return static_cast<uint64_t>(((plane * seeds[0] + s0) * seeds[1] + s1) * seeds[2] + s2);
  }
  // The seeds whose block covers position x of spatial dim d: [first, last], empty when first > last.
  FASTDROP_HOST_DEVICE void covering(int d, int64_t x, int64_t& first, int64_t& last) const {
    first = x - shift[d] - block[d] + 1;
    first = first < 0 ? 0 : first;
    last = x - shift[d];
    last = last > seeds[d] - 1 ? seeds[d] - 1 : last;
  }
  // The columns of mask word k that exist (the last word of a row may be partial).
  FASTDROP_HOST_DEVICE uint32_t valid_bits(int64_t k) const {
    const int64_t left = size[2] - k * kMaskWordBits;
    return left >= kMaskWordBits ? 0xFFFFFFFFu : (uint32_t(1) << left) - 1u;
  }
};

// 64 bits of a bit row of `count` words from column `column` on (bit j: column
// + j), zero outside the row.
FASTDROP_HOST_DEVICE uint64_t row_bits(const uint32_t* words, int64_t count, int64_t column) {
  const int64_t word = column >= 0 ? column / kMaskWordBits : -((-column + kMaskWordBits - 1) / kMaskWordBits);
  const int shift = static_cast<int>(column - word * kMaskWordBits);
  auto at = [&](int64_t w) -> uint64_t { return w >= 0 && w < count ? words[w] : 0u; };
  const uint64_t low = at(word) | (at(word + 1) << 32);
  return shift == 0 ? low : (low >> shift) | (at(word + 2) << (64 - shift));
}

// Word bit i: whether any of columns lo + i ... lo + i + block - 1 has a seed,
// given fetch(column), 64 seed bits from that column on. A block of any
// length, 32 columns of it per fetch; each dilated by doubling (log2 steps).
template <typename Fetch>
FASTDROP_HOST_DEVICE uint32_t dilated_word(const Fetch& fetch, int64_t lo, int64_t block) {
  uint32_t word = 0;
  for (int64_t t = 0; t < block; t += kMaskWordBits) {
    const int span = static_cast<int>(block - t < kMaskWordBits ? block - t : kMaskWordBits);
    uint64_t run = fetch(lo + t);
    int covered = 1;  // run's bit j: any of bits j ... j + covered - 1
    while (2 * covered <= span) {
      run |= run >> covered;
      covered *= 2;
    }
    if (covered < span) run |= run >> (span - covered);
    word |= static_cast<uint32_t>(run);
  }
  return word;
}

// The first column of seeds mask word k's column 0 looks at.
FASTDROP_HOST_DEVICE int64_t first_seed_column(const BlockGeometry& g, int64_t k) {
  return k * kMaskWordBits - g.shift[2] - g.block[2] + 1;
}

// How the kept elements are scaled: by numel / (eps + kept) computed as
// torchvision computes it, in the input's dtype (the sum rounded to it, then
// each op); as timm does, in float32 and then rounded to the input's dtype; or
// not at all (timm's scale_by_keep=False).
enum class BlockScale { kInput, kFloat, kNone };

// That scale for a mask with `kept` of its `numel` elements kept. Python's
// numel / t is t.reciprocal() * numel.
template <typename scalar_t>
FASTDROP_HOST_DEVICE at::opmath_type<scalar_t> block_scale(int64_t kept, int64_t numel, double eps, BlockScale mode) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (mode == BlockScale::kNone) return opmath_t(1);
  if (mode == BlockScale::kFloat) {
    const float shifted = add_rounded(static_cast<float>(kept), static_cast<float>(eps));
    const float reciprocal = 1.0f / shifted;
    return static_cast<opmath_t>(static_cast<scalar_t>(mul_rounded(reciprocal, static_cast<float>(numel))));
  }
  auto rounded = [](opmath_t value) { return static_cast<opmath_t>(static_cast<scalar_t>(value)); };
  const opmath_t total = rounded(static_cast<opmath_t>(kept));
  const opmath_t shifted = rounded(add_rounded(total, static_cast<opmath_t>(eps)));
  const opmath_t reciprocal = rounded(opmath_t(1) / shifted);
  return rounded(mul_rounded(reciprocal, static_cast<opmath_t>(numel)));
}

// input * noise * scale, rounded as torch rounds it: the noise product (x or
// x * 0, exact) rounded, then times the scale; an infinite scale (a half-precision
// scale overflowing when almost nothing is kept) makes the dropped elements NaN, as in torch.
template <typename scalar_t>
FASTDROP_HOST_DEVICE scalar_t apply_block(scalar_t x, bool kept, at::opmath_type<scalar_t> scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t noised = kept ? static_cast<opmath_t>(x) : mul_rounded(static_cast<opmath_t>(x), opmath_t(0));
  return static_cast<scalar_t>(mul_rounded(noised, scale));
}

}  // namespace fastdrop
