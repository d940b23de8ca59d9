// The memory of one SAB layer call (SPEC section 1 step 8, section 8; docs/CONTRACT.md "Streaming memory
// across calls"): which slot a step writes, how many slots a step reads, and where a slot's value lies.
// Shared by the CPU and CUDA sweeps, so both number the slots the same way.
//
// A call's memory is cat(carried, new slots). Slots 0 .. S0-1 are carried in: `memory` [B, S0, H] of
// earlier calls, or h0 read as [B, 1, H] (S0 = 1) for a fresh sequence. Slot S0 + i is the i-th slot this
// call writes: after the steps t with (step0 + t + 1) % k_att == 0, step0 (>= 0) being the global index of
// the call's step 0. The slot values are not copied: a written slot is read from the state of its step, y
// (final slots) or hhat (provisional), [T, B, H]. A fresh call (S0 = 1, step0 = 0): slot j >= 1 holds the
// state of step j * k_att - 1.
#pragma once

#include <stdint.h>

#include "fastrnn/hd.h"

namespace fastrnn {

// Which slots exist when, in one call.
struct SlotGrid {
  int64_t S0;     // slots carried in
  int64_t step0;  // global index of the call's step 0
  int64_t k_att;
  int64_t first;  // the first step of the call that writes a slot (may be >= T: none)

  FASTRNN_HD SlotGrid(int64_t S0_, int64_t step0_, int64_t k_att_)
      : S0(S0_), step0(step0_), k_att(k_att_), first((step0_ / k_att_ + 1) * k_att_ - 1 - step0_) {}

  // The slots step t scores, |M| of SPEC step 4: the carried ones and those written before step t.
  // n_mem(T) is the call's S = S0 + S1 (the extent of the slot keys).
  FASTRNN_HD int64_t n_mem(int64_t t) const { return S0 + (step0 + t) / k_att - step0 / k_att; }
  // The slot written after step t (SPEC step 8), or -1 if none.
  FASTRNN_HD int64_t written(int64_t t) const { return (step0 + t + 1) % k_att == 0 ? n_mem(t) : -1; }
  // The step of the call that wrote slot j >= S0.
  FASTRNN_HD int64_t step_of(int64_t j) const { return first + (j - S0) * k_att; }
};

// The value m_j of slot j for batch row b ([H] elements): carried[b, j] for j < S0 (`carried` is the
// memory [B, S0, H], or h0 [B, H] when S0 = 1 and no memory is given), else the final (y) or provisional
// (hhat) state of the step that wrote it.
template <class T>
FASTRNN_HD inline const T* slot_value(const SlotGrid& grid, int64_t j, int64_t b, const T* carried, const T* y,
                                      const T* hhat, bool provisional, int64_t B, int64_t H) {
  if (j < grid.S0) return carried + (b * grid.S0 + j) * H;
  return (provisional ? hhat : y) + (grid.step_of(j) * B + b) * H;
}

}  // namespace fastrnn
