// DropBlock on CUDA, in three kernels with no shared memory or atomics (so the
// emulated device runs them as they are): the seed rows, each dilated along
// the row into mask words (one thread a word, drawing the 32 + block - 1 seeds
// it looks at); the mask, one thread a row, OR-ing the dilated seed rows whose
// blocks cover it and counting what it drops (the counts summed by torch, on
// the device: no host sync); then the scaled mask applied to the input, 32
// consecutive elements of a row (a mask word) per thread, any strides (block_mask.h has the mask's
// arithmetic). The backward rebuilds the mask from rng_state.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../block_mask.h"
#include "../decisions.h"
#include "index_map.cuh"
#include "op_helpers.cuh"
#include "pack.cuh"

namespace fastdrop::cuda {
namespace {

constexpr int kThreads = 256;

// 64 seed bits of a seed row from `column` on (bit j: column + j; zero outside
// the row): the contract's decisions of the row's seed indices, a Philox block per 8.
__device__ __forceinline__ uint64_t drawn_seed_bits(RngState rng, const DropThreshold& threshold, uint64_t row_index,
                                                    int64_t columns, int64_t column) {
  uint64_t bits = 0;
  uint64_t cached = ~uint64_t(0);
  PhiloxBlock block{};
  for (int j = 0; j < 64; ++j) {
    const int64_t c = column + j;
    if (c < 0 || c >= columns) continue;
    const uint64_t index = row_index + static_cast<uint64_t>(c);
    if (index / kElementsPerBlock != cached) {
      cached = index / kElementsPerBlock;
      block = contract_block(rng.seed, rng.offset, cached);
    }
    const uint32_t value = element_bits(block, static_cast<int>(index % kElementsPerBlock));
    bits |= static_cast<uint64_t>(!keeps(value, threshold, rng.seed, rng.offset, index)) << j;
  }
  return bits;
}

// Word k of each seed row dilated along the row: item (plane, seed row, k).
__global__ void __launch_bounds__(kThreads) drop_block_seeds_kernel(KernelRng rng_source, DropThreshold threshold,
                                                                    BlockGeometry g, uint32_t* dilated, int64_t items) {
  const RngState rng = rng_source.load();
  for (int64_t item = first_pack(); item < items; item += pack_stride()) {
    const int64_t k = item % g.words, row = item / g.words;
    const int64_t plane = row / g.seed_rows(), seed_row = row % g.seed_rows();
    const uint64_t row_index = g.seed_index(plane, seed_row / g.seeds[1], seed_row % g.seeds[1], 0);
    const auto fetch = [&](int64_t column) { return drawn_seed_bits(rng, threshold, row_index, g.seeds[2], column); };
    dilated[item] = dilated_word(fetch, first_seed_column(g, k), g.block[2]);
  }
}

// Mask row (plane, x0, x1): the OR of the dilated seed rows whose blocks cover
// it, and (where dropped is given) how many of its elements it drops.
__global__ void __launch_bounds__(kThreads)
    drop_block_mask_kernel(BlockGeometry g, const uint32_t* dilated, uint32_t* mask, int32_t* dropped, int64_t rows) {
  for (int64_t row = first_pack(); row < rows; row += pack_stride()) {
    const int64_t plane = row / g.rows(), x0 = (row % g.rows()) / g.size[1], x1 = row % g.size[1];
    int64_t first0, last0, first1, last1;
    g.covering(0, x0, first0, last0);
    g.covering(1, x1, first1, last1);
    const uint32_t* seeds = dilated + plane * g.seed_rows() * g.words;
    int32_t count = 0;
    for (int64_t k = 0; k < g.words; ++k) {
      uint32_t word = 0;
      for (int64_t s0 = first0; s0 <= last0; ++s0) {
        for (int64_t s1 = first1; s1 <= last1; ++s1) word |= seeds[(s0 * g.seeds[1] + s1) * g.words + k];
      }
      word &= g.valid_bits(k);
      mask[row * g.words + k] = word;
      count += __popc(word);
    }
    if (dropped != nullptr) dropped[row] = count;
  }
}

// Where rows (n, c, x0, x1) of a piece of samples live: 32-bit divisors of the
// row index and each operand's strides (D's zero for a 2-D block).
struct BlockRows {
  FastDivisor<uint32_t> words_per_row, size1, size0, channels;
  int64_t in_strides[5], out_strides[5];
};

// output = input * keep * scale over `items` runs of 32 consecutive elements of
// a row (one mask word each: the row's position is found once per 32), any
// strides; the scale computed from kept by every thread.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    drop_block_strided_kernel(const scalar_t* in, scalar_t* out, const uint32_t* mask, const int64_t* kept,
                              BlockGeometry g, BlockRows rows, int32_t items, int64_t numel, double eps,
                              BlockScale mode) {
  const at::opmath_type<scalar_t> scale = block_scale<scalar_t>(*kept, numel, eps, mode);
  const uint32_t width = static_cast<uint32_t>(g.size[2]);
  for (int32_t item = static_cast<int32_t>(first_pack()); item < items; item += static_cast<int32_t>(pack_stride())) {
    const uint32_t row = rows.words_per_row.quotient(static_cast<uint32_t>(item));
    const uint32_t k = static_cast<uint32_t>(item) - row * rows.words_per_row.divisor;
    const uint32_t r1 = rows.size1.quotient(row), x1 = row - r1 * rows.size1.divisor;
    const uint32_t plane = rows.size0.quotient(r1), x0 = r1 - plane * rows.size0.divisor;
    const uint32_t n = rows.channels.quotient(plane), c = plane - n * rows.channels.divisor;
    const int64_t mask_plane = g.shared ? static_cast<int64_t>(n) : static_cast<int64_t>(plane);
    const uint32_t word = mask[(mask_plane * g.rows() + static_cast<int64_t>(x0) * g.size[1] + x1) * g.words + k];
    const uint32_t w0 = k * kMaskWordBits;
    const scalar_t* x = in + n * rows.in_strides[0] + c * rows.in_strides[1] + x0 * rows.in_strides[2] +
                        x1 * rows.in_strides[3] + w0 * rows.in_strides[4];
    scalar_t* y = out + n * rows.out_strides[0] + c * rows.out_strides[1] + x0 * rows.out_strides[2] +
                  x1 * rows.out_strides[3] + w0 * rows.out_strides[4];
#pragma unroll
    for (int lane = 0; lane < kMaskWordBits; ++lane) {
      if (w0 + lane < width) *y = apply_block(*x, !((word >> lane) & 1u), scale);
      x += rows.in_strides[4];
      y += rows.out_strides[4];
    }
  }
}

// The mask of the call keyed by rng, scaled, applied to input (block.inc).
auto block_kernel(at::IntArrayRef block_size, bool centred, bool share_channels, double gamma, double eps,
                  BlockScale scale) {
  return [=](const at::Tensor& input, at::Tensor& output, KernelRng rng, const at::Tensor& kept, bool count) {
    const BlockGeometry g = block_geometry(input.sizes(), block_size, centred, share_channels);
    const auto words = input.options().dtype(at::kInt);
    at::Tensor dilated = at::empty({g.planes * g.seed_rows() * g.words}, words);
    at::Tensor mask = at::empty({g.planes * g.rows() * g.words}, words);
    auto* dilated_words = reinterpret_cast<uint32_t*>(dilated.data_ptr<int32_t>());
    auto* mask_words = reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>());
    FASTDROP_LAUNCH(grid_size(dilated.numel(), kThreads), kThreads, current_stream(), drop_block_seeds_kernel)(
        rng, drop_threshold(gamma), g, dilated_words, dilated.numel());
    check_launch();
    const int64_t mask_rows = g.planes * g.rows(), numel = g.planes * g.plane_elements();
    at::Tensor dropped = count ? at::empty({mask_rows}, words) : at::Tensor();
    FASTDROP_LAUNCH(grid_size(mask_rows, kThreads), kThreads, current_stream(), drop_block_mask_kernel)(
        g, dilated_words, mask_words, count ? dropped.data_ptr<int32_t>() : nullptr, mask_rows);
    check_launch();
    if (count) kept.copy_(at::rsub(at::sum(dropped, at::kLong), numel));
    if (input.numel() == 0) return;

    // Pieces of whole samples whose runs of 32 32-bit indices reach.
    const int64_t batch = input.size(0);
    const int64_t sample_items = g.channels * g.rows() * g.words;
    TORCH_CHECK(sample_items <= max_kernel_index(), "fastdrop.drop_block: a sample of ", input[0].numel(),
                " elements is more than one CUDA launch indexes");
    BlockRows rows{FastDivisor<uint32_t>(g.words),
                   FastDivisor<uint32_t>(g.size[1]),
                   FastDivisor<uint32_t>(g.size[0]),
                   FastDivisor<uint32_t>(g.channels),
                   {},
                   {}};
    const int pad = 5 - static_cast<int>(input.dim());
    for (int d = 0, source = 0; d < 5; ++d) {
      const bool padded = d == 2 && pad == 1;
      rows.in_strides[d] = padded ? 0 : input.stride(source);
      rows.out_strides[d] = padded ? 0 : output.stride(source);
      if (!padded) ++source;
    }
    const int64_t samples_per_piece = std::max<int64_t>(1, max_kernel_index() / sample_items);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "drop_block", [&] {
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      scalar_t* out = output.data_ptr<scalar_t>();
      for (int64_t first = 0; first < batch; first += samples_per_piece) {
        const int64_t items = std::min(samples_per_piece, batch - first) * sample_items;
        const int64_t mask_offset = (g.shared ? first : first * g.channels) * g.rows() * g.words;
        FASTDROP_LAUNCH(grid_size(items, kThreads), kThreads, current_stream(), drop_block_strided_kernel<scalar_t>)(
            in + first * rows.in_strides[0], out + first * rows.out_strides[0], mask_words + mask_offset,
            kept.const_data_ptr<int64_t>(), g, rows, static_cast<int32_t>(items), numel, eps, scale);
        check_launch();
      }
    });
  };
}

}  // namespace

#include "../entry_points/block.inc"

}  // namespace fastdrop::cuda

// A CUDA build registers the kernels for CUDA tensors; the emulated device's
// build for its own operators on CPU tensors.
#if defined(FASTDROP_EMULATE_CUDA)
TORCH_LIBRARY_IMPL(fastdrop_emulated, CPU, m) { fastdrop::cuda::register_block_kernels(m); }
#else
TORCH_LIBRARY_IMPL(fastdrop, CUDA, m) { fastdrop::cuda::register_block_kernels(m); }
#endif
