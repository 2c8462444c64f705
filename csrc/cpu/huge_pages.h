// Outputs the CPU kernels write, backed by transparent huge pages where the
// kernel allows it on request (THP "madvise", the common default).
//
// A large output is fresh memory (glibc maps anything past 32 MiB anew on
// every call, and trims and regrows its heap around a few MiB), so the kernel
// faults in and zeroes each 4 KiB page on first touch: for a 64 MiB output that
// is 16384 faults, about twice the time the pass itself takes. Asked for huge
// pages, it takes one fault per 2 MiB. torch offers the same through
// THP_MEM_ALLOC_ENABLE=1 for every allocation; this asks only for the outputs
// of this extension's ops, where the whole range is written at once.
//
// Not by default in a virtual machine whose kernel reports free memory to its
// host (virtio free page reporting, in 2 MiB blocks): a freed huge page is a
// reported block, which the host must back again before the guest can clear
// it. On the CI machine that made a process's first 64 MiB calls 63-97 ms, and
// the first calls after any idle spell of a few seconds up to 3x slower than
// small pages (25 ms), against 10-12 ms steady: worse than torch where it
// matters most to a user that an op is never slower.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastdrop::cpu {

// From this size up an output holds at least seven aligned huge pages. Below
// it, glibc mostly hands back heap memory still mapped from an earlier call
// (no faults to save), and the advice would split the heap's mapping for
// little.
constexpr int64_t kHugePageAdviceBytes = int64_t{16} << 20;

// Whether the kernel has reported free pages to a hypervisor since boot.
inline bool reports_free_pages() {
  std::ifstream reported("/sys/module/page_reporting/parameters/reported_kib");
  long long kib = 0;
  return static_cast<bool>(reported >> kib) && kib > 0;
}

// FASTDROP_HUGE_PAGES=1 asks for huge pages, =0 never; unset, they are asked
// for unless the kernel reports free pages. Read once per process.
inline bool huge_page_advice_enabled() {
  static const bool enabled = [] {
    const char* raw = std::getenv("FASTDROP_HUGE_PAGES");
    const std::string setting = raw != nullptr ? raw : "";
    return setting == "1" || (setting != "0" && !reports_free_pages());
  }();
  return enabled;
}

// Advises huge pages over the 2 MiB-aligned range inside the tensor's memory
// (the ends stay in small pages). Advice only: nothing changes if refused.
inline void advise_huge_pages(const at::Tensor& tensor) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = static_cast<int64_t>(tensor.storage().nbytes());
  if (bytes < kHugePageAdviceBytes || !huge_page_advice_enabled()) return;
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const auto begin = reinterpret_cast<uintptr_t>(tensor.storage().data());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)tensor;
#endif
}

// at::empty_like(like) for an output the kernel is about to write in full.
inline at::Tensor empty_output_like(const at::Tensor& like) {
  at::Tensor output = at::empty_like(like);
  advise_huge_pages(output);
  return output;
}

}  // namespace fastdrop::cpu
