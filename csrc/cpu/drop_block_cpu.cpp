// DropBlock on the CPU. Each mask plane (an (n, c), or a c when the batch
// shares one mask) is built whole by one thread: its seeds' contract bits in
// one vectorized fill (the plane's seed indices are consecutive), packed into
// bit rows, dilated along the row 32 columns at a time, then across rows by
// OR-ing those words (block_mask.h). The forward keeps the mask words of
// every plane (1 bit per element) until the kept count, and with it the
// scale, is known; the backward rebuilds them from rng_state.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FASTDROP_X86_SEEDS 1
#else
#define FASTDROP_X86_SEEDS 0
#endif

#include "../block_mask.h"
#include "../decisions.h"
#include "element_walk.h"
#include "op_helpers.h"

namespace fastdrop::cpu {
namespace {

constexpr int64_t kSeedsPerFill = 16384;  // seeds whose contract bits one fill draws (several planes' worth)

// Scratch of one thread, reused across its planes.
struct PlaneScratch {
  std::vector<uint16_t> bits;        // contract bits of a run of planes' seeds
  std::vector<uint32_t> seed_words;  // those seeds as a bit stream (set: a seed)
  std::vector<uint32_t> dilated;     // seed rows dilated along the row, in mask words
};

// Set bits of a word (SWAR: the build targets no particular CPU, so no popcnt instruction).
inline int set_bits(uint32_t word) {
  word = word - ((word >> 1) & 0x55555555u);
  word = (word & 0x33333333u) + ((word >> 2) & 0x33333333u);
  return static_cast<int>((((word + (word >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24);
}

// Seed bit words of a row of `count` resolved contract bits: bit j of word k
// set where value 32 k + j is below compare (a seed: dropped at rate gamma).
void pack_seeds_scalar(const uint16_t* values, int64_t count, uint32_t compare, uint32_t* words) {
  for (int64_t first = 0; first < count; first += kMaskWordBits) {
    const int64_t n = std::min<int64_t>(kMaskWordBits, count - first);
    uint32_t word = 0;
    for (int64_t j = 0; j < n; ++j) word |= static_cast<uint32_t>(!is_kept(values[first + j], compare)) << j;
    words[first / kMaskWordBits] = word;
  }
}

#if FASTDROP_X86_SEEDS
// The same, 32 values per compare (AVX-512BW's unsigned 16-bit compare gives the word itself).
__attribute__((target("avx512bw"))) void pack_seeds_avx512(const uint16_t* values, int64_t count, uint32_t compare,
                                                           uint32_t* words) {
  // compare is at most 65536 (p == 1): every 16-bit value is below it.
  const __m512i threshold = _mm512_set1_epi16(static_cast<int16_t>(std::min<uint32_t>(compare, 0xFFFFu)));
  const bool all = compare > 0xFFFFu;
  int64_t first = 0;
  for (; first + kMaskWordBits <= count; first += kMaskWordBits) {
    const __m512i v = _mm512_loadu_si512(values + first);
    words[first / kMaskWordBits] = all ? 0xFFFFFFFFu : static_cast<uint32_t>(_mm512_cmplt_epu16_mask(v, threshold));
  }
  if (first < count) pack_seeds_scalar(values + first, count - first, compare, words + first / kMaskWordBits);
}
#endif

void pack_seeds(const uint16_t* values, int64_t count, uint32_t compare, uint32_t* words) {
#if FASTDROP_X86_SEEDS
  static const bool avx512 = __builtin_cpu_supports("avx512bw");
  if (avx512) return pack_seeds_avx512(values, count, compare, words);
#endif
  pack_seeds_scalar(values, count, compare, words);
}

// Mask plane words (rows x words, bit set: dropped) from the plane's seed
// bits, which start at bit `first` of the bit stream `seeds` (`count` words);
// returns how many elements are dropped.
int64_t build_plane(const BlockGeometry& g, const uint32_t* seeds, int64_t count, int64_t first, uint32_t* mask,
                    PlaneScratch& scratch) {
  const int64_t seed_columns = g.seeds[2], seed_rows = g.seed_rows();
  scratch.dilated.resize(seed_rows * g.words);
  for (int64_t r = 0; r < seed_rows; ++r) {
    const int64_t row = first + r * seed_columns;
    // 64 seed bits of this row from `column` on, zero outside the row.
    const auto fetch = [&](int64_t column) {
      const int64_t low = std::max<int64_t>(0, -column), high = std::min<int64_t>(64, seed_columns - column);
      if (high <= low) return uint64_t(0);
      const uint64_t inside = (high == 64 ? ~uint64_t(0) : (uint64_t(1) << high) - 1) & ~((uint64_t(1) << low) - 1);
      return row_bits(seeds, count, row + column) & inside;
    };
    for (int64_t k = 0; k < g.words; ++k) {
      scratch.dilated[r * g.words + k] = dilated_word(fetch, first_seed_column(g, k), g.block[2]);
    }
  }
  int64_t dropped = 0;
  for (int64_t x0 = 0; x0 < g.size[0]; ++x0) {
    int64_t first0, last0;
    g.covering(0, x0, first0, last0);
    for (int64_t x1 = 0; x1 < g.size[1]; ++x1) {
      int64_t first1, last1;
      g.covering(1, x1, first1, last1);
      uint32_t* out = mask + (x0 * g.size[1] + x1) * g.words;
      for (int64_t k = 0; k < g.words; ++k) {
        uint32_t word = 0;
        for (int64_t s0 = first0; s0 <= last0; ++s0) {
          for (int64_t s1 = first1; s1 <= last1; ++s1) word |= scratch.dilated[(s0 * g.seeds[1] + s1) * g.words + k];
        }
        word &= g.valid_bits(k);
        out[k] = word;
        dropped += set_bits(word);
      }
    }
  }
  return dropped;
}

// Every mask plane's words; returns the dropped count. A thread draws the
// contract bits of a run of consecutive planes in one fill (their seed
// indices are consecutive), so the SIMD Philox runs on long ranges.
int64_t build_mask(const BlockGeometry& g, RngState rng, double gamma, std::vector<uint32_t>& mask) {
  const int64_t plane_words = g.rows() * g.words, plane_seeds = g.seed_rows() * g.seeds[2];
  mask.resize(g.planes * plane_words);
  const DropThreshold threshold = drop_threshold(gamma);
  const uint32_t compare = compare_bits(threshold);
  std::vector<int64_t> dropped(g.planes, 0);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.plane_elements()));
  const int64_t planes_per_fill = std::max<int64_t>(1, kSeedsPerFill / std::max<int64_t>(1, plane_seeds));
  at::parallel_for(0, g.planes, grain, [&](int64_t begin, int64_t end) {
    PlaneScratch scratch;
    for (int64_t first_plane = begin; first_plane < end; first_plane += planes_per_fill) {
      const int64_t planes = std::min(planes_per_fill, end - first_plane), seeds = planes * plane_seeds;
      const uint64_t first = g.seed_index(first_plane, 0, 0, 0);
      const int64_t lead = static_cast<int64_t>(first % kElementsPerBlock);
      const int64_t blocks = (lead + seeds + kElementsPerBlock - 1) / kElementsPerBlock;
      scratch.bits.resize(blocks * kElementsPerBlock);
      fill_element_bits(rng.seed, rng.offset / 4, first / kElementsPerBlock, blocks, scratch.bits.data());
      uint16_t* bits = scratch.bits.data() + lead;
      resolve_ties(bits, seeds, first, threshold, rng);
      const int64_t words = (seeds + kMaskWordBits - 1) / kMaskWordBits;
      scratch.seed_words.resize(words);
      pack_seeds(bits, seeds, compare, scratch.seed_words.data());
      for (int64_t i = 0; i < planes; ++i) {
        const int64_t plane = first_plane + i;
        dropped[plane] = build_plane(g, scratch.seed_words.data(), words, i * plane_seeds,
                                     mask.data() + plane * plane_words, scratch);
      }
    }
  });
  int64_t total = 0;
  for (const int64_t d : dropped) total += d;
  return total;
}

// One row's elements: y[w] = x[w] * keep * scale, 32 (a mask word) at a time;
// a word with no drop (most of them) is a plain scaled copy, any other one product with a per-lane factor.
template <bool kUnitStrides, typename scalar_t>
inline void apply_row(const scalar_t* x, scalar_t* y, int64_t in_stride, int64_t out_stride, int64_t width,
                      const uint32_t* words, at::opmath_type<scalar_t> scale) {
  if constexpr (kUnitStrides) in_stride = out_stride = 1;
  for (int64_t first = 0; first < width; first += kMaskWordBits) {
    const int64_t count = std::min<int64_t>(kMaskWordBits, width - first);
    const uint32_t word = words[first / kMaskWordBits];
    const scalar_t* in = x + first * in_stride;
    scalar_t* out = y + first * out_stride;
    if (word == 0) {
      for (int64_t j = 0; j < count; ++j) out[j * out_stride] = apply_block(in[j * in_stride], true, scale);
    } else if (std::isfinite(scale)) {
      // (x * 0) * scale is x * 0 for a finite scale: one product with a per-lane factor, which vectorizes.
      using opmath_t = at::opmath_type<scalar_t>;
      opmath_t factor[kMaskWordBits];
      for (int j = 0; j < kMaskWordBits; ++j) factor[j] = (word >> j) & 1u ? opmath_t(0) : scale;
      for (int64_t j = 0; j < count; ++j) {
        out[j * out_stride] = static_cast<scalar_t>(mul_rounded(static_cast<opmath_t>(in[j * in_stride]), factor[j]));
      }
    } else {
      for (int64_t j = 0; j < count; ++j) {
        out[j * out_stride] = apply_block(in[j * in_stride], !((word >> j) & 1u), scale);
      }
    }
  }
}

// output = input * keep * scale, row by row ((n, c, d, h)), any strides.
template <typename scalar_t>
void apply_mask(const at::Tensor& input, at::Tensor& output, const BlockGeometry& g, const uint32_t* mask,
                at::opmath_type<scalar_t> scale) {
  const int64_t pad = 5 - input.dim();  // a 2-D block's missing D
  int64_t in_strides[5], out_strides[5];
  for (int d = 0, source = 0; d < 5; ++d) {
    const bool padded = d == 2 && pad == 1;
    in_strides[d] = padded ? 0 : input.stride(source);
    out_strides[d] = padded ? 0 : output.stride(source);
    if (!padded) ++source;
  }
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t batch = input.size(0), rows = batch * g.channels * g.rows(), width = g.size[2];
  const int64_t in_inner = in_strides[4], out_inner = out_strides[4];
  at::parallel_for(
      0, rows, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, width)), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t x1 = row % g.size[1], x0 = (row / g.size[1]) % g.size[0];
          const int64_t plane = row / g.rows(), c = plane % g.channels, n = plane / g.channels;
          const uint32_t* words = mask + (g.mask_plane_of(plane) * g.rows() + x0 * g.size[1] + x1) * g.words;
          const scalar_t* x = in + n * in_strides[0] + c * in_strides[1] + x0 * in_strides[2] + x1 * in_strides[3];
          scalar_t* y = out + n * out_strides[0] + c * out_strides[1] + x0 * out_strides[2] + x1 * out_strides[3];
          if (in_inner == 1 && out_inner == 1) {  // unit strides: the loops vectorize
            apply_row<true>(x, y, 1, 1, width, words, scale);
          } else {
            apply_row<false>(x, y, in_inner, out_inner, width, words, scale);
          }
        }
      });
}

auto block_kernel(at::IntArrayRef block_size, bool centred, bool share_channels, double gamma, double eps,
                  BlockScale scale) {
  return [=](const at::Tensor& input, at::Tensor& output, RngState rng, const at::Tensor& kept, bool count) {
    const BlockGeometry g = block_geometry(input.sizes(), block_size, centred, share_channels);
    std::vector<uint32_t> mask;
    const int64_t dropped = build_mask(g, rng, gamma, mask);
    const int64_t numel = g.planes * g.plane_elements();
    if (count) kept.fill_(numel - dropped);
    const int64_t kept_count = count ? numel - dropped : kept.item<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "drop_block", [&] {
      apply_mask<scalar_t>(input, output, g, mask.data(), block_scale<scalar_t>(kept_count, numel, eps, scale));
    });
  };
}

}  // namespace

#include "../entry_points/block.inc"

}  // namespace fastdrop::cpu

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) { fastdrop::cpu::register_block_kernels(m); }
