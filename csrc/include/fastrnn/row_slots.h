// Per-row slot tables of a SAB layer call with per-row arguments (docs/SPEC.md section 9, docs/CONTRACT.md
// "Per-row resets"): row b's table is its S0 carried entries (valid from its slot offset; or h0), then the
// slots it appends in time order: a fresh slot (zeros) at each reset, then each slot it writes. The walk over
// one row's steps and where a table entry's value lies, shared by the CPU (csrc/cpu/sab_rows.h RowSlots, a
// loop over rows) and CUDA (csrc/cuda/sab_rows.cu, one thread per row), so both number the slots the same
// way; fastrnn/ops/streaming.py's reset_plan is the same walk, vectorised (tests/test_shared_math.py checks
// one against the other).
#pragma once

#include <stdint.h>

#include "fastrnn/hd.h"
#include "fastrnn/memory_slots.h"

namespace fastrnn {

// Where a row's walk stands before a step.
struct RowWalk {
  int64_t n;        // entries of the row's table so far (the S0 carried ones first)
  int64_t first;    // the first slot of the row's current piece: its last reset's fresh slot, or its offset
  int64_t counter;  // the row's step counter (restarts at 0 at a reset)
};

// One step of a row's table.
struct RowStep {
  int64_t lo, hi;  // the slots the step scores, [lo, hi): its piece, up to the entries appended before its write
  int64_t fresh;   // the reset's fresh slot appended before the step, or -1
  int64_t wr;      // the slot written after the step, or -1
};

// One step of the walk (SPEC section 9): at a reset the row appends its fresh slot, its piece starts there and
// its counter restarts at 0; the step scores [lo, hi) and writes a slot when (counter + 1) % k_att == 0.
FASTRNN_HD inline RowStep row_step(RowWalk& w, bool reset, int64_t k_att) {
  RowStep s;
  s.fresh = -1;
  if (reset) {
    s.fresh = w.n++;
    w.first = s.fresh;
    w.counter = 0;
  }
  s.lo = w.first;
  s.hi = w.n;
  s.wr = (w.counter + 1) % k_att == 0 ? w.n++ : -1;
  ++w.counter;
  return s;
}

// Row b's whole walk over T steps: reset [T, B] step-major (nullptr: no resets), the S0 carried entries valid
// from `offset`, the counter starting at `counter0`. Writes lo, hi, wr [T, B] at t * B + b (each may be
// nullptr) and, unless src is nullptr, the row's appended slots into src[0 .. appended): the step whose state
// appended slot i (table entry S0 + i) holds, -1 for a fresh slot. Returns how many slots the row appends.
FASTRNN_HD inline int64_t row_slot_walk(const bool* reset, int64_t T, int64_t B, int64_t b, int64_t S0,
                                        int64_t offset, int64_t counter0, int64_t k_att, int64_t* lo, int64_t* hi,
                                        int64_t* wr, int64_t* src) {
  RowWalk w{S0, offset, counter0};
  for (int64_t t = 0; t < T; ++t) {
    const int64_t r = t * B + b;
    const RowStep s = row_step(w, reset != nullptr && reset[r], k_att);
    if (lo) lo[r] = s.lo;
    if (hi) hi[r] = s.hi;
    if (wr) wr[r] = s.wr;
    if (src) {
      if (s.fresh >= 0) src[s.fresh - S0] = -1;
      if (s.wr >= 0) src[s.wr - S0] = t;
    }
  }
  return w.n - S0;
}

// The value m_j of entry j of row b's table ([H] elements): a carried slot as slot_value reads it, else the
// final (y) or provisional (hhat) state of the step that wrote it, or `zeros` for a reset's fresh slot (and
// padding). src [B, S1] is the walk's, row after row; src == nullptr: no per-row tables, every row on `grid`
// (slot_value).
template <class T>
FASTRNN_HD inline const T* row_slot_value(const SlotGrid& grid, const int64_t* src, int64_t S1, int64_t j, int64_t b,
                                          const T* carried, const T* y, const T* hhat, bool provisional, int64_t B,
                                          int64_t H, const T* zeros) {
  if (src == nullptr || j < grid.S0) return slot_value(grid, j, b, carried, y, hhat, provisional, B, H);
  const int64_t t = src[b * S1 + j - grid.S0];
  return t < 0 ? zeros : (provisional ? hhat : y) + (t * B + b) * H;
}

}  // namespace fastrnn
