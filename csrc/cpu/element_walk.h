// Splitting a tensor's elements over threads and walking them as runs, for
// kernels that take any strides: along the innermost (merged) dim, or in tiles
// where another dim is the one contiguous in memory (parallel_runs_with_bits).
#pragma once

#include <ATen/Parallel.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <optional>

#include "../checks.h"
#include "../layout_builder.h"
#include "../rng_state.h"
#include "philox_cpu.h"

namespace fastdrop::cpu {

constexpr int64_t kGrainElements = 32768;
constexpr int64_t kBitsChunk = 2048;  // contract values per buffer fill in the grouped kernels
// Elements per bits fill in the element-wise walk: one step of the widest
// fill (philox_cpu.cpp: 4 vectors of 16 blocks), so a whole fill has no scalar
// tail. Short fills interleave the Philox arithmetic with the transform's
// loads closely enough that the hardware prefetchers keep the input and
// output streams going through both; 2048 at a time measured 10-30% slower
// at 2^20 to 2^22 elements (fp32, 2 threads).
constexpr int64_t kRunChunk = 512;
static_assert(kRunChunk % kElementsPerBlock == 0, "a fill covers whole Philox blocks");

// Calls run(offsets, count, index) for consecutive runs covering [begin, end)
// of the layout's index space, starting at the cursor's position; operand k's
// run starts at offsets[k] with stride layout.inner_stride(k).
template <int kOperands, typename Run>
void walk_runs(const StridedLayout<kOperands>& layout, LogicalCursor<kOperands>& cursor, int64_t begin, int64_t end,
               const Run& run) {
  for (int64_t index = begin; index < end;) {
    const int64_t count = std::min(cursor.left_in_row(layout), end - index);
    run(cursor.offset, count, index);
    cursor.advance_in_row(layout, count);
    index += count;
  }
}

// Replaces each tie (a value equal to the threshold's first 16 bits) among the contract bits
// bits[0 ... count - 1], bits[i] that of logical index index_of(i), by its resolved decision, so that
// is_kept(bits[i], compare_bits(threshold)) decides every element. Ties are rare (2^-16 per
// element): the scan is what costs.
template <typename IndexOf>
void resolve_ties_of(uint16_t* bits, int64_t count, const DropThreshold& threshold, RngState rng,
                     const IndexOf& index_of) {
  if (threshold.high > 0xFFFFu) return;  // p == 1: nothing ties
  const uint16_t high = static_cast<uint16_t>(threshold.high);
  for (int64_t i = find_value(bits, count, high); i < count;
       i = i + 1 + find_value(bits + i + 1, count - i - 1, high)) {
    bits[i] =
        static_cast<uint16_t>(resolved_tie_bits(keeps_on_tie(rng.seed, rng.offset, index_of(i), threshold.remainder)));
  }
}

// The bits of indices first_index ... first_index + count - 1.
inline void resolve_ties(uint16_t* bits, int64_t count, uint64_t first_index, const DropThreshold& threshold,
                         RngState rng) {
  resolve_ties_of(bits, count, threshold, rng, [&](int64_t i) { return first_index + static_cast<uint64_t>(i); });
}

// All elements in logical order, in parallel, with each element's 16 contract
// bits, ties resolved: run(offsets, strides, count, bits). Threads split at
// Philox block boundaries so no block is computed twice.
template <int kOperands, typename Run>
void parallel_logical_runs_with_bits(const StridedLayout<kOperands>& layout, int64_t numel, RngState rng,
                                     const DropThreshold& threshold, const Run& run) {
  int64_t strides[kOperands];
  for (int k = 0; k < kOperands; ++k) strides[k] = layout.inner_stride(k);
  const int64_t num_blocks = (numel + kElementsPerBlock - 1) / kElementsPerBlock;
  at::parallel_for(0, num_blocks, kGrainElements / kElementsPerBlock, [&](int64_t first_block, int64_t last_block) {
    alignas(64) uint16_t bits[kRunChunk];
    LogicalCursor<kOperands> cursor;
    cursor.seek(layout, first_block * kElementsPerBlock);
    for (int64_t block = first_block; block < last_block; block += kRunChunk / kElementsPerBlock) {
      const int64_t blocks = std::min<int64_t>(kRunChunk / kElementsPerBlock, last_block - block);
      fill_element_bits(rng.seed, rng.offset / 4, static_cast<uint64_t>(block), blocks, bits);
      const int64_t begin = block * kElementsPerBlock;
      const int64_t end = std::min(numel, (block + blocks) * kElementsPerBlock);
      resolve_ties(bits, end - begin, static_cast<uint64_t>(begin), threshold, rng);
      walk_runs(layout, cursor, begin, end, [&](const int64_t* offsets, int64_t count, int64_t index) {
        run(offsets, strides, count, bits + (index - begin));
      });
    }
  });
}

// bits[r * columns + c] = column_bits[c][r]: 8x8 blocks through SSE2's interleaves (a third of the
// instructions of a value-by-value copy), the edges value by value.
inline void transpose_bits(const uint16_t* const* column_bits, int64_t columns, int64_t rows, uint16_t* bits) {
  int64_t whole_columns = 0, whole_rows = 0;
#if defined(__SSE2__)
  whole_columns = columns - columns % 8;
  whole_rows = rows - rows % 8;
  for (int64_t c = 0; c < whole_columns; c += 8) {
    for (int64_t r = 0; r < whole_rows; r += 8) {
      __m128i a[8], b[8];
      for (int i = 0; i < 8; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(column_bits[c + i] + r));
      for (int i = 0; i < 8; i += 2) {  // pairs of columns, value by value
        b[i] = _mm_unpacklo_epi16(a[i], a[i + 1]);
        b[i + 1] = _mm_unpackhi_epi16(a[i], a[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {  // quads of columns, two values at a time
        a[i] = _mm_unpacklo_epi32(b[i], b[i + 2]);
        a[i + 1] = _mm_unpackhi_epi32(b[i], b[i + 2]);
        a[i + 2] = _mm_unpacklo_epi32(b[i + 1], b[i + 3]);
        a[i + 3] = _mm_unpackhi_epi32(b[i + 1], b[i + 3]);
      }
      for (int i = 0; i < 4; ++i) {  // all eight columns: rows 2i and 2i + 1
        _mm_storeu_si128(reinterpret_cast<__m128i*>(bits + (r + 2 * i) * columns + c),
                         _mm_unpacklo_epi64(a[i], a[i + 4]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(bits + (r + 2 * i + 1) * columns + c),
                         _mm_unpackhi_epi64(a[i], a[i + 4]));
      }
    }
  }
#endif
  for (int64_t c = 0; c < columns; ++c) {
    const int64_t first_row = c < whole_columns ? whole_rows : 0;
    for (int64_t r = first_row; r < rows; ++r) bits[r * columns + c] = column_bits[c][r];
  }
}

// Tiles for layouts where a dim other than the logical-innermost one is contiguous in every operand
// (a channels_last activation: logical (N, C, H*W), C contiguous; a transposed matrix; a (B, T, H)
// tensor stored as (H, B, T)). Walking logical order there touches a new cache line for every
// element. A tile instead covers `columns` consecutive indices of the dim that
// is contiguous in every operand (column_dim) by `rows` consecutive indices of the logical-innermost
// dim: each column's bits are a run of consecutive logical indices, drawn for all columns in one fill,
// then transposed so that the tile is walked in memory order, row by row.
struct TileShape {
  int column_dim;
  int64_t columns, rows;  // at most, per tile
};

constexpr int64_t kTileElements = 4096;
constexpr int64_t kTileMaxColumns = 128;
// A column's run of rows values starts anywhere in a Philox block: up to 14 more values are drawn
// than used, so runs are kept long (at least 32 values).
static_assert(kTileElements / kTileMaxColumns >= 32, "tiles of long columns");

template <int kOperands>
std::optional<TileShape> memory_order_tiles(const StridedLayout<kOperands>& layout) {
  if (layout.ndim < 2) return std::nullopt;
  const int last = layout.ndim - 1;
  for (int d = last - 1; d >= 0; --d) {
    bool contiguous = true;
    for (int k = 0; k < kOperands; ++k) contiguous &= layout.strides[k][d] == 1;
    if (!contiguous) continue;
    const int64_t columns = std::min(layout.sizes[d], kTileMaxColumns);
    const int64_t rows = std::min(layout.sizes[last], kTileElements / columns);
    return TileShape{d, columns, rows};
  }
  return std::nullopt;
}

// Blocks drawn per column of a tile: its run of `rows` values may start anywhere in a block.
constexpr int64_t tile_column_blocks(int64_t rows) { return (rows + 2 * (kElementsPerBlock - 1)) / kElementsPerBlock; }
// columns * rows <= kTileElements, so a tile draws at most this many blocks.
constexpr int64_t kTileMaxBlocks =
    (kTileElements + 2 * (kElementsPerBlock - 1) * kTileMaxColumns + kElementsPerBlock - 1) / kElementsPerBlock;

// All elements, in parallel, tile by tile, as runs of contiguous elements: run(offsets, strides,
// count, bits) with unit strides, a tile row at a time, or the whole tile where its rows follow each
// other in every operand (a channels_last pixel's channels, the next pixel's).
template <int kOperands, typename Run>
void parallel_tiles_with_bits(const StridedLayout<kOperands>& layout, const TileShape& tile, RngState rng,
                              const DropThreshold& threshold, const Run& run) {
  const int last = layout.ndim - 1, column_dim = tile.column_dim;
  int64_t logical_strides[kMaxLayoutDims];
  int64_t numel = 1;
  for (int d = last; d >= 0; --d) {
    logical_strides[d] = numel;
    numel *= layout.sizes[d];
  }
  const int64_t column_tiles = (layout.sizes[column_dim] + tile.columns - 1) / tile.columns;
  const int64_t row_tiles = (layout.sizes[last] + tile.rows - 1) / tile.rows;
  const int64_t planes = numel / (layout.sizes[column_dim] * layout.sizes[last]);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (tile.columns * tile.rows));
  at::parallel_for(0, planes * column_tiles * row_tiles, grain, [&](int64_t begin, int64_t end) {
    uint64_t blocks[kTileMaxBlocks];
    alignas(64) uint16_t drawn[kTileMaxBlocks * kElementsPerBlock];
    alignas(64) uint16_t bits[kTileElements];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row_tile = item % row_tiles, column_tile = item / row_tiles % column_tiles;
      int64_t plane = item / row_tiles / column_tiles;
      // The plane's other dims, innermost first: where its first element lies and its logical index.
      int64_t offsets[kOperands] = {};
      int64_t base = 0;
      for (int d = last - 1; d >= 0; --d) {
        if (d == column_dim) continue;
        const int64_t coord = plane % layout.sizes[d];
        plane /= layout.sizes[d];
        base += coord * logical_strides[d];
        for (int k = 0; k < kOperands; ++k) offsets[k] += coord * layout.strides[k][d];
      }
      const int64_t first_column = column_tile * tile.columns, first_row = row_tile * tile.rows;
      const int64_t columns = std::min(tile.columns, layout.sizes[column_dim] - first_column);
      const int64_t rows = std::min(tile.rows, layout.sizes[last] - first_row);
      const int64_t column_blocks = tile_column_blocks(rows);
      const uint16_t* column_bits[kTileMaxColumns];  // where each column's run starts in `drawn`
      for (int64_t c = 0; c < columns; ++c) {
        const int64_t start = base + (first_column + c) * logical_strides[column_dim] + first_row;
        for (int64_t b = 0; b < column_blocks; ++b) {
          blocks[c * column_blocks + b] = static_cast<uint64_t>(start / kElementsPerBlock + b);
        }
        column_bits[c] = drawn + c * column_blocks * kElementsPerBlock + start % kElementsPerBlock;
      }
      fill_element_bits_of(rng.seed, rng.offset / 4, blocks, columns * column_blocks, drawn);
      resolve_ties_of(drawn, columns * column_blocks * kElementsPerBlock, threshold, rng, [&](int64_t i) {
        return blocks[i / kElementsPerBlock] * kElementsPerBlock + static_cast<uint64_t>(i % kElementsPerBlock);
      });
      transpose_bits(column_bits, columns, rows, bits);
      int64_t unit[kOperands];
      bool adjacent = true;
      for (int k = 0; k < kOperands; ++k) {
        unit[k] = 1;
        offsets[k] += first_column + first_row * layout.strides[k][last];
        adjacent &= layout.strides[k][last] == columns;
      }
      if (adjacent) {
        run(offsets, unit, columns * rows, bits);
        continue;
      }
      for (int64_t r = 0; r < rows; ++r) {
        int64_t at[kOperands];
        for (int k = 0; k < kOperands; ++k) at[k] = offsets[k] + r * layout.strides[k][last];
        run(at, unit, columns, bits + r * columns);
      }
    }
  });
}

// Planes of a memory-ordered layout small enough that a tile would be a few of its elements (a
// channels_last map of 1x2 or 4x4 pixels: a plane is one sample's C x H*W), when whole planes are
// contiguous in every operand, one after another: the column dim right outside the innermost one,
// rows adjacent (a pixel's channels, then the next pixel's) and the next dim out stepping a plane.
// A group of such planes is then one run of consecutive logical indices in memory order, drawn in
// one fill with nothing wasted. Dropout at 2^20 elements, fp32: (N, 3, 1, 2) channels_last 11.3 ms in
// tiles of 3 x 2 (torch: 8.0 ms), 1.1 ms so; (N, 64, 2, 2) 1.36 and 0.83 ms; (N, 64, 4, 4) 0.53 and
// 0.38 ms (contiguous: 0.23 ms); (N, 512, 2, 2) 2.35 ms in tiles of 128 x 4, 0.91 ms so.
template <int kOperands>
int64_t planes_per_group(const StridedLayout<kOperands>& layout, const TileShape& tile) {
  const int last = layout.ndim - 1, column_dim = tile.column_dim;
  const int64_t plane = layout.sizes[column_dim] * layout.sizes[last];
  if (column_dim != last - 1 || 2 * plane > kTileElements) return 0;
  for (int k = 0; k < kOperands; ++k) {
    if (layout.strides[k][last] != layout.sizes[column_dim]) return 0;
    if (last >= 2 && layout.sizes[last - 2] > 1 && layout.strides[k][last - 2] != plane) return 0;
  }
  return std::min(last >= 2 ? layout.sizes[last - 2] : 1, kTileElements / plane);
}

// All elements, in parallel, in groups of `group` whole planes along the dim outside the column dim
// (planes_per_group): one fill, one transpose per plane, one run per group.
template <int kOperands, typename Run>
void parallel_plane_groups_with_bits(const StridedLayout<kOperands>& layout, int64_t numel, int64_t group, RngState rng,
                                     const DropThreshold& threshold, const Run& run) {
  const int last = layout.ndim - 1;
  const int64_t columns = layout.sizes[last - 1], rows = layout.sizes[last], plane = columns * rows;
  const int64_t along = last >= 2 ? layout.sizes[last - 2] : 1;  // planes along the grouped dim
  const int64_t groups_along = (along + group - 1) / group;
  const int64_t outer = numel / (plane * along);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (group * plane));
  at::parallel_for(0, outer * groups_along, grain, [&](int64_t begin, int64_t end) {
    alignas(64) uint16_t drawn[kTileElements + 2 * kElementsPerBlock];
    alignas(64) uint16_t bits[kTileElements];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t first_plane = item % groups_along * group, planes = std::min(group, along - first_plane);
      int64_t rest = item / groups_along;
      // The first element's logical index and offsets: the grouped dim's coordinate, then the dims outside it.
      int64_t offsets[kOperands];
      for (int k = 0; k < kOperands; ++k) offsets[k] = last >= 2 ? first_plane * layout.strides[k][last - 2] : 0;
      const int64_t first = (rest * along + first_plane) * plane;
      for (int d = last - 3; d >= 0; --d) {
        const int64_t coord = rest % layout.sizes[d];
        rest /= layout.sizes[d];
        for (int k = 0; k < kOperands; ++k) offsets[k] += coord * layout.strides[k][d];
      }
      const int64_t count = planes * plane, first_block = first / kElementsPerBlock;
      const int64_t blocks = (first + count + kElementsPerBlock - 1) / kElementsPerBlock - first_block;
      fill_element_bits(rng.seed, rng.offset / 4, static_cast<uint64_t>(first_block), blocks, drawn);
      uint16_t* logical = drawn + first % kElementsPerBlock;
      resolve_ties(logical, count, static_cast<uint64_t>(first), threshold, rng);
      for (int64_t p = 0; p < planes; ++p) {
        const uint16_t* column_bits[kTileElements / 2];  // a plane's columns: at most half a tile's elements
        for (int64_t c = 0; c < columns; ++c) column_bits[c] = logical + p * plane + c * rows;
        transpose_bits(column_bits, columns, rows, bits + p * plane);
      }
      int64_t unit[kOperands];
      for (int k = 0; k < kOperands; ++k) unit[k] = 1;
      run(offsets, unit, count, bits);
    }
  });
}

// All elements with each element's 16 contract bits, ties resolved: run(offsets, strides, count,
// bits) for runs of operand k's elements offsets[k] + i * strides[k], i < count, in tiles where the
// logical order is not the memory order (memory_order_tiles), else in logical order.
template <int kOperands, typename Run>
void parallel_runs_with_bits(const StridedLayout<kOperands>& layout, int64_t numel, RngState rng,
                             const DropThreshold& threshold, const Run& run) {
  if (const auto tile = memory_order_tiles(layout)) {
    if (const int64_t group = planes_per_group(layout, *tile)) {
      parallel_plane_groups_with_bits(layout, numel, group, rng, threshold, run);
    } else {
      parallel_tiles_with_bits(layout, *tile, rng, threshold, run);
    }
  } else {
    parallel_logical_runs_with_bits(layout, numel, rng, threshold, run);
  }
}

}  // namespace fastdrop::cpu
