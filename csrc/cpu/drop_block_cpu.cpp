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

#include <vector>

#include "../block_mask.h"
#include "../decisions.h"
#include "element_walk.h"
#include "op_helpers.h"

namespace fastdrop::cpu {
namespace {

// Scratch of one thread, reused across its planes.
struct PlaneScratch {
  std::vector<uint16_t> bits;        // the seeds' contract bits
  std::vector<uint32_t> seed_words;  // seed bit rows
  std::vector<uint32_t> dilated;     // seed rows dilated along the row, in mask words
};

// Mask plane `plane`'s words (rows x words, bit set: dropped); returns how many are dropped.
int64_t build_plane(const BlockGeometry& g, int64_t plane, RngState rng, const DropThreshold& threshold, uint32_t* mask,
                    PlaneScratch& scratch) {
  const int64_t seed_columns = g.seeds[2], seed_rows = g.seed_rows(), seeds = seed_rows * seed_columns;
  const int64_t seed_words = (seed_columns + kMaskWordBits - 1) / kMaskWordBits;
  scratch.seed_words.assign(seed_rows * seed_words, 0u);
  if (seeds > 0) {
    const uint64_t first = g.seed_index(plane, 0, 0, 0);
    const int64_t lead = static_cast<int64_t>(first % kElementsPerBlock);
    const int64_t blocks = (lead + seeds + kElementsPerBlock - 1) / kElementsPerBlock;
    scratch.bits.resize(blocks * kElementsPerBlock);
    fill_element_bits(rng.seed, rng.offset / 4, first / kElementsPerBlock, blocks, scratch.bits.data());
    const uint16_t* bits = scratch.bits.data() + lead;
    resolve_ties(scratch.bits.data() + lead, seeds, first, threshold, rng);
    const uint32_t compare = compare_bits(threshold);
    for (int64_t r = 0; r < seed_rows; ++r) {
      uint32_t* row = scratch.seed_words.data() + r * seed_words;
      for (int64_t s = 0; s < seed_columns; ++s) {
        row[s / kMaskWordBits] |= static_cast<uint32_t>(!is_kept(bits[r * seed_columns + s], compare))
                                  << (s % kMaskWordBits);
      }
    }
  }
  scratch.dilated.resize(seed_rows * g.words);
  for (int64_t r = 0; r < seed_rows; ++r) {
    const uint32_t* row = scratch.seed_words.data() + r * seed_words;
    const auto fetch = [&](int64_t column) { return row_bits(row, seed_words, column); };
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
        dropped += __builtin_popcount(word);
      }
    }
  }
  return dropped;
}

// Every mask plane's words; returns the dropped count.
int64_t build_mask(const BlockGeometry& g, RngState rng, double gamma, std::vector<uint32_t>& mask) {
  const int64_t plane_words = g.rows() * g.words;
  mask.resize(g.planes * plane_words);
  const DropThreshold threshold = drop_threshold(gamma);
  std::vector<int64_t> dropped(g.planes, 0);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, g.plane_elements()));
  at::parallel_for(0, g.planes, grain, [&](int64_t begin, int64_t end) {
    PlaneScratch scratch;
    for (int64_t plane = begin; plane < end; ++plane) {
      dropped[plane] = build_plane(g, plane, rng, threshold, mask.data() + plane * plane_words, scratch);
    }
  });
  int64_t total = 0;
  for (const int64_t d : dropped) total += d;
  return total;
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
          if (in_inner == 1 && out_inner == 1) {
            for (int64_t w = 0; w < width; ++w) {
              const bool kept = !((words[w / kMaskWordBits] >> (w % kMaskWordBits)) & 1u);
              y[w] = apply_block(x[w], kept, scale);
            }
          } else {
            for (int64_t w = 0; w < width; ++w) {
              const bool kept = !((words[w / kMaskWordBits] >> (w % kMaskWordBits)) & 1u);
              y[w * out_inner] = apply_block(x[w * in_inner], kept, scale);
            }
          }
        }
      });
}

auto block_kernel(int64_t block_size, bool centred, bool batchwise, double gamma, double eps, bool float_scale) {
  return [=](const at::Tensor& input, at::Tensor& output, RngState rng, at::Tensor& kept, bool count) {
    const BlockGeometry g = block_geometry(input.sizes(), block_size, centred, batchwise);
    std::vector<uint32_t> mask;
    const int64_t dropped = build_mask(g, rng, gamma, mask);
    const int64_t numel = g.planes * g.plane_elements();
    if (count) kept.fill_(numel - dropped);
    const int64_t kept_count = kept.item<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "drop_block", [&] {
      apply_mask<scalar_t>(input, output, g, mask.data(), block_scale<scalar_t>(kept_count, numel, eps, float_scale));
    });
  };
}

}  // namespace

#include "../entry_points/block.inc"

}  // namespace fastdrop::cpu

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) { fastdrop::cpu::register_block_kernels(m); }
