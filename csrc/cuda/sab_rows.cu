// The per-row slot tables of a SAB call with per-row arguments (docs/SPEC.md section 9, docs/CONTRACT.md
// "Per-row resets") on the GPU: fastrnn/row_slots.h's walk, the CPU's (csrc/cpu/sab_rows.h RowSlots), one
// thread per row over the T steps, once per call (launchers.h fastrnn_sab_row_slots: a first launch fills
// the [T, B] windows and each row's count, a second the [B, S1] sources). No host synchronisation here; the
// binding reads S1 = max(appended) once between the two.
#include "cuda/common.cuh"
#include "cuda/launchers.h"
#include "fastrnn/row_slots.h"

namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    sab_row_slots_kernel(const bool* reset, const int64_t* slot_offset, const int64_t* row_step0, int64_t step0,
                         int64_t T, int64_t B, int64_t S0, int64_t k_att, int64_t* lo, int64_t* hi, int64_t* wr,
                         int64_t* appended, int64_t* src, int64_t S1) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t n = fastrnn::row_slot_walk(reset, T, B, b, S0, slot_offset ? slot_offset[b] : 0,
                                           row_step0 ? row_step0[b] : step0, k_att, lo, hi, wr,
                                           src ? src + b * S1 : nullptr);
  if (appended) appended[b] = n;
}

}  // namespace

extern "C" {

int fastrnn_sab_row_slots(const bool* reset, const int64_t* slot_offset, const int64_t* row_step0, int64_t step0,
                          int64_t T, int64_t B, int64_t S0, int64_t k_att, int64_t* lo, int64_t* hi, int64_t* wr,
                          int64_t* appended, int64_t* src, int64_t S1, void* stream) {
  if (B == 0) return 0;
  const int64_t blocks = fastrnn::cuda::ceil_div(B, kThreads);
  if (blocks > 2147483647) return static_cast<int>(cudaErrorInvalidValue);
  sab_row_slots_kernel<<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      reset, slot_offset, row_step0, step0, T, B, S0, k_att, lo, hi, wr, appended, src, S1);
  return fastrnn::cuda::last_error();
}

}  // extern "C"
