// The emulated CUDA device: fastdrop's CUDA operators (compiled from the same
// .cu sources by the host compiler) registered as torch.ops.fastdrop_emulated
// on CPU tensors, the serial grid runner, and the settings tests turn.
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../../operators.h"
#include "runtime.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace fastdrop::cuda::emulation {

Settings& settings() {
  static Settings instance;
  return instance;
}

void run_grid(dim3 grid, dim3 block, void (*thread_body)(void*), void* context) {
  Settings& s = settings();
  if (s.blocks != 0) grid = dim3(s.blocks);
  if (s.threads != 0) block = dim3(s.threads);
  // CUDA's launch limits: a launch beyond them fails on a GPU.
  TORCH_CHECK(block.x >= 1 && block.y >= 1 && block.z >= 1 && uint64_t(block.x) * block.y * block.z <= 1024,
              "emulated CUDA launch: invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(grid.x >= 1 && grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535,
              "emulated CUDA launch: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(grid.y == 1 && grid.z == 1 && block.y == 1 && block.z == 1,
              "emulated CUDA launch: fastdrop's kernels are one-dimensional");
  std::vector<uint64_t> order(uint64_t(grid.x) * block.x);
  std::iota(order.begin(), order.end(), uint64_t(0));
  if (s.order == Order::kReverse) std::reverse(order.begin(), order.end());
  if (s.order == Order::kShuffled) std::shuffle(order.begin(), order.end(), std::mt19937_64(s.shuffle_seed++));
  gridDim = grid;
  blockDim = block;
  for (const uint64_t thread : order) {
    blockIdx = {static_cast<unsigned int>(thread / block.x), 0, 0};
    threadIdx = {static_cast<unsigned int>(thread % block.x), 0, 0};
    thread_body(context);
  }
  ++s.launches;
}

namespace {

void configure(int64_t blocks, int64_t threads, const std::string& order, int64_t shuffle_seed, int64_t multiprocessors,
               int64_t philox_offset, bool graph_capture, int64_t max_kernel_index) {
  TORCH_CHECK(blocks >= 0 && threads >= 0 && multiprocessors >= 1 && philox_offset >= 0 && max_kernel_index >= 64 &&
                  max_kernel_index <= INT32_MAX,
              "fastdrop_emulated.configure: sizes and offsets are non-negative, max_kernel_index in [64, 2^31)");
  Settings& s = settings();
  s.blocks = static_cast<unsigned int>(blocks);
  s.threads = static_cast<unsigned int>(threads);
  TORCH_CHECK(order == "forward" || order == "reverse" || order == "shuffled",
              "fastdrop_emulated.configure: order is forward, reverse or shuffled, not ", order);
  s.order = order == "forward" ? Order::kForward : order == "reverse" ? Order::kReverse : Order::kShuffled;
  s.shuffle_seed = static_cast<uint64_t>(shuffle_seed);
  s.multiprocessors = static_cast<int>(multiprocessors);
  s.philox_offset = static_cast<uint64_t>(philox_offset);
  s.graph_capture = graph_capture;
  s.max_kernel_index = max_kernel_index;
}

int64_t launches() { return settings().launches; }

}  // namespace
}  // namespace fastdrop::cuda::emulation

TORCH_LIBRARY(fastdrop_emulated, m) {
  fastdrop::define_operators(m);
  m.def(
      "configure(int blocks=0, int threads=0, str order='forward', int shuffle_seed=0, int multiprocessors=132, "
      "int philox_offset=0, bool graph_capture=False, int max_kernel_index=2147483647) -> ()",
      &fastdrop::cuda::emulation::configure);
  m.def("launches() -> int", &fastdrop::cuda::emulation::launches);
}

// The kernels themselves register with fastdrop_emulated in the .cu files.
