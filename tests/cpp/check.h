// A minimal check macro for the C++ tests: count failures, print the first few.
#pragma once

#include <cstdio>

namespace fastdrop_test {
inline int failures = 0;
}

#define EXPECT(condition, ...)                                                              \
  do {                                                                                      \
    if (!(condition)) {                                                                     \
      if (++fastdrop_test::failures <= 20) {                                                \
        std::fprintf(stderr, "%s:%d: EXPECT(%s) failed: ", __FILE__, __LINE__, #condition); \
        std::fprintf(stderr, __VA_ARGS__);                                                  \
        std::fprintf(stderr, "\n");                                                         \
      }                                                                                     \
    }                                                                                       \
  } while (0)

#define TEST_RESULT(name, checks)                                                    \
  (std::printf("%s: %d checks, %d failed\n", name, checks, fastdrop_test::failures), \
   fastdrop_test::failures == 0 && (checks) > 0 ? 0 : 1)
