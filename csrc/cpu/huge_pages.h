// CPU only: allocation of the large per-call buffers (saved activations, gradient buffers).
//
// A buffer of T*B*4H floats (655 MB at T = 10000, B = 32, H = 128) is fresh mmap'd memory on every call,
// and touching it the first time costs a page fault per 4 KiB page: measured here 130 ms to first-write
// 655 MB against 25 ms to write it again, a large part of why the time per token grows with T. These
// machines run transparent huge pages in "madvise" mode, so ask for 2 MiB pages on the buffer's aligned
// interior: 512 times fewer faults. It is advice only: where it is refused nothing changes.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastrnn {
namespace cpu {

inline at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() >= 2 * kHuge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + t.nbytes()) & ~(kHuge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace cpu
}  // namespace fastrnn
