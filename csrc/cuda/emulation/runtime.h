// The emulated twin of cuda/runtime.cuh: the same names, running launches on
// the CPU. The seed comes from the CPU generator, as the CPU operators take it
// (so an emulated forward and a CPU forward from the same torch.manual_seed
// agree bit for bit); the Philox offset, the graph-capture form of the state,
// the SM count and the launch geometry and order are settings, so tests can
// reach what a real GPU would make them wait for.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include "../device_rng.cuh"

namespace fastdrop::cuda::emulation {

enum class Order { kForward, kReverse, kShuffled };

struct Settings {
  unsigned int blocks = 0;   // 0: the grid the launch site asks for
  unsigned int threads = 0;  // 0: the block size the launch site asks for
  Order order = Order::kForward;
  uint64_t shuffle_seed = 0;
  int multiprocessors = 132;  // an H100 / H200
  uint64_t philox_offset = 0;
  bool graph_capture = false;            // the state in the form a captured graph passes it
  int64_t max_kernel_index = INT32_MAX;  // lower: small tensors take big ones' paths (pieces, copies)
  int64_t launches = 0;                  // kernels run so far
};

Settings& settings();

// Runs thread_body once per (block, thread) of the grid the settings give.
void run_grid(dim3 grid, dim3 block, void (*thread_body)(void*), void* context);

// A launch site's kernel call, run once per thread of the grid.
template <typename Body>
struct Launch {
  dim3 grid, block;
  Body body;

  template <typename... Args>
  void operator()(const Args&... args) const {
    auto call = std::make_tuple(body, args...);
    using Call = decltype(call);
    run_grid(
        grid, block,
        [](void* context) {
          std::apply([](const auto& kernel, const auto&... a) { kernel(a...); }, *static_cast<Call*>(context));
        },
        &call);
  }
};

template <typename Body>
Launch<Body> launch(dim3 grid, dim3 block, Body body) {
  return {grid, block, body};
}

}  // namespace fastdrop::cuda::emulation

// kernel<<<grid, block, 0, stream>>>(args...): the kernel's template arguments
// are deduced from args at the call, as nvcc deduces them.
#define FASTDROP_LAUNCH(grid, block, stream, ...) \
  ::fastdrop::cuda::emulation::launch(grid, block, [&](const auto&... args) { __VA_ARGS__(args...); })

namespace fastdrop::cuda {

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

inline int64_t max_kernel_index() { return emulation::settings().max_kernel_index; }

inline cudaStream_t current_stream() { return nullptr; }

inline void check_launch() {}

// The generator's state for one call, as CUDAGeneratorImpl::philox_cuda_state
// would give it: by value, or (graph capture) through pointers to the seed and
// the offset at capture plus the offset within the graph.
inline KernelRng draw_rng(const at::Tensor& like, const std::optional<at::Generator>& generator,
                          at::Tensor& rng_state) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }
  rng_state = at::empty({2}, like.options().dtype(at::kLong));
  const emulation::Settings& s = emulation::settings();
  if (!s.graph_capture) return {at::PhiloxCudaState(seed, s.philox_offset), rng_state.data_ptr<int64_t>(), nullptr};
  // Captured: offset = *offset_extragraph + offset_intragraph, read in the kernel.
  static thread_local int64_t captured[2];
  const uint64_t intragraph = s.philox_offset % 64;
  captured[0] = static_cast<int64_t>(seed);
  captured[1] = static_cast<int64_t>(s.philox_offset - intragraph);
  return {at::PhiloxCudaState(&captured[0], &captured[1], intragraph), rng_state.data_ptr<int64_t>(), nullptr};
}

inline int grid_size(int64_t work_items, int threads_per_block) {
  const int64_t resident = static_cast<int64_t>(emulation::settings().multiprocessors) * (2048 / threads_per_block);
  const int64_t needed = (work_items + threads_per_block - 1) / threads_per_block;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

}  // namespace fastdrop::cuda
