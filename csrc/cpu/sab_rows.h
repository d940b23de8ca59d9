// CPU only, shared by the SAB forward (sab_forward.cpp) and backward (sab_backward.cpp): at::vec row
// kernels (dot, axpy, the mlp scores of a row's slots and the backward of one slot's, on attention_score.h's
// per-element math) and the layout of the memory slots and their keys.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "fastrnn/attention_score.h"  // the scorers' per-element math, shared with CUDA
#include "fastrnn/memory_slots.h"     // SlotGrid, slot_value: the slot layout, shared with CUDA
#include "fastrnn/row_slots.h"        // row_slot_walk, row_slot_value: the per-row tables, shared with CUDA
#include "vec_tanh.h"                 // the float tanh of the mlp scorer, the tile's sums

namespace fastrnn {
namespace cpu {

using at::vec::Vectorized;

// ---------------------------------------------------------------------------------------------
// Row kernels. Tails use the partial load (zero fill) and partial store of at::vec.

template <typename T>
inline T hsum(const Vectorized<T>& v) {
  // Fixed order, so results are bit-identical from run to run.
  T buf[Vectorized<T>::size()];
  v.store(buf);
  T s = T(0);
  for (int i = 0; i < Vectorized<T>::size(); ++i) s += buf[i];
  return s;
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) acc = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), acc);
  if (i < n) acc = at::vec::fmadd(V::loadu(a + i, n - i), V::loadu(b + i, n - i), acc);
  return hsum(acc);
}

// y += alpha * x
template <typename T>
inline void axpy(T* y, T alpha, const T* x, int64_t n) {
  using V = Vectorized<T>;
  const V va(alpha);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) at::vec::fmadd(va, V::loadu(x + i), V::loadu(y + i)).store(y + i);
  if (i < n) at::vec::fmadd(va, V::loadu(x + i, n - i), V::loadu(y + i, n - i)).store(y + i, n - i);
}

// out = a + b (out may alias a or b)
template <typename T>
inline void add(T* out, const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) (V::loadu(a + i) + V::loadu(b + i)).store(out + i);
  if (i < n) (V::loadu(a + i, n - i) + V::loadu(b + i, n - i)).store(out + i, n - i);
}

// tanh of the mlp scorer. float: vec_tanh.h's rational (a few ulp, one division), several times the
// throughput of Sleef's tanhf (u10): the scorer's tanh over all slots is the mlp forward's hot loop.
// double: at::vec's tanh, exact enough for the 1e-9 tests.
template <typename T>
inline Vectorized<T> score_tanh(const Vectorized<T>& a) {
  return a.tanh();
}

template <>
inline Vectorized<float> score_tanh<float>(const Vectorized<float>& a) {
  return tanh_rational(a);
}

// The CPU's math policy of attention_score.h: at::vec lanes, the fast tanh above.
struct VecScoreMath {
  template <typename T>
  static Vectorized<T> tanh(const Vectorized<T>& x) { return score_tanh(x); }
  template <typename T>
  static Vectorized<T> fma(const Vectorized<T>& a, const Vectorized<T>& b, const Vectorized<T>& c) {
    return at::vec::fmadd(a, b, c);
  }
};

// mlp score a = v · tanh(q + p) over A (q: the query, p: the slot's key, v: att_v). The hot loop of the mlp
// forward: O(T·|M|·B·A) tanh. The zero-filled tail gives tanh(0) * 0 = 0.
template <typename T>
inline T mlp_score(const T* q, const T* p, const T* v, int64_t A) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= A; i += V::size())
    acc = mlp_score_term<VecScoreMath>(V::loadu(q + i), V::loadu(p + i), V::loadu(v + i), acc);
  if (i < A)
    acc = mlp_score_term<VecScoreMath>(V::loadu(q + i, A - i), V::loadu(p + i, A - i), V::loadu(v + i, A - i), acc);
  return hsum(acc);
}

// The mlp scores a_j = v · tanh(q + p_j) of slots [0, n) of one row, handed to out(j, a_j) in slot order;
// p: the n slots' keys, [n, A] contiguous. The mlp forward's hot loop. float: a tile of kScoreTile slots at
// a time, each slot's terms (attention_score.h's mlp_score_term, with the tanh's constants held in
// registers) in its own accumulator, the keys read in memory order, slot after slot (so the hardware
// prefetcher streams them from L3 or DRAM at long T: column by column across the tile it did not), then
// the tile's accumulators summed together (vec_tanh.h's tile_sums) instead of a horizontal sum per slot.
// A slot's score does not depend on the tile it falls in. double: mlp_score slot by slot, as before.
template <typename T, typename Out>
inline void mlp_scores(const T* q, const T* p, const T* v, int64_t A, int64_t n, Out&& out) {
  if constexpr (std::is_same_v<T, float>) {
    using V = Vectorized<float>;
    const TanhRational tanh;
    V acc[kScoreTile];
    float sums[kScoreTile];
    for (int64_t j0 = 0; j0 < n; j0 += kScoreTile) {
      const int J = int(std::min<int64_t>(kScoreTile, n - j0));
      for (int j = 0; j < kScoreTile; ++j) {
        V a(0.0f);
        if (j < J) {
          const float* pj = p + (j0 + j) * A;
          int64_t i = 0;
          for (; i + V::size() <= A; i += V::size())
            a = at::vec::fmadd(V::loadu(v + i), tanh(V::loadu(q + i) + V::loadu(pj + i)), a);
          if (i < A)
            a = at::vec::fmadd(V::loadu(v + i, A - i), tanh(V::loadu(q + i, A - i) + V::loadu(pj + i, A - i)), a);
        }
        acc[j] = a;
      }
      tile_sums(acc, sums);
      for (int j = 0; j < J; ++j) out(j0 + j, sums[j]);
    }
  } else {
    for (int64_t j = 0; j < n; ++j) out(j, mlp_score(q, p + j * A, v, A));
  }
}

// Backward of a = v · tanh(q + p) for one slot given da: dv += da u, dq += du, dp += du (attention_score.h).
template <typename T>
inline void mlp_score_backward(const T* q, const T* p, const T* v, T da, T* dv, T* dq, T* dp, int64_t A) {
  using V = Vectorized<T>;
  const V vda(da);
  auto body = [&](int64_t i, int64_t len) {
    V dvi = V::loadu(dv + i, len), dqi = V::loadu(dq + i, len), dpi = V::loadu(dp + i, len);
    mlp_score_term_backward<VecScoreMath>(V::loadu(q + i, len), V::loadu(p + i, len), V::loadu(v + i, len), vda,
                                          dvi, dqi, dpi);
    dvi.store(dv + i, len);
    dqi.store(dq + i, len);
    dpi.store(dp + i, len);
  };
  int64_t i = 0;
  for (; i + V::size() <= A; i += V::size()) body(i, V::size());
  if (i < A) body(i, A - i);
}

// ---------------------------------------------------------------------------------------------
// Memory layout shared by forward and backward (docs/SPEC.md sections 1 and 8).
//   The call's memory is cat(carried, new slots). Slots 0 .. S0-1 are carried in: `memory` [B, S0, H] of
//   earlier calls, or h0 read as [B, 1, H] (S0 = 1) for a fresh sequence. Slot S0 + i is the i-th slot this
//   call writes: after the steps t with (step0 + t + 1) % k_att == 0, step0 being the global index of step 0.
//   slot_keys, the scorer's projection of each slot (row-major per batch row, so one row's scan is
//   contiguous); a carried slot's key is computed at the start of the call, a new slot's when it is written:
//     mlp     [B, S, A] = att_wm @ m_j
//     linear  [B, S]    = att_wm · m_j (the slot's part of the score; it never changes)
//   The slot numbering (SlotGrid) and slot_value are fastrnn/memory_slots.h's, shared with CUDA.

// Per-row slot tables of a call with resets (docs/SPEC.md section 9, docs/CONTRACT.md "Per-row resets"):
// row b's table is its S0 carried entries (valid from offset[b]; or h0), then the slots it appends in time
// order: a fresh slot (zeros) at each reset, then each slot it writes. Built once per call in O(T * B) from
// reset [T, B], slot_offset [B], row_step0 [B] (each may be absent) by fastrnn/row_slots.h's walk, the one
// the CUDA op runs (and the same walk as ops/streaming.py's reset_plan).
struct RowSlots {
  int64_t T = 0, B = 0, S0 = 1, S1 = 0;  // S1: the most slots one row appends
  std::vector<int64_t> lo, hi, wr;       // [T, B]: slots [lo, hi) scored at step t; the slot written after t, or -1
  std::vector<int64_t> src;              // [B, S1]: appended slot -> the step whose state it holds; -1 zeros
  std::vector<uint8_t> reset;            // [T, B]
  std::vector<int64_t> offset;           // [B]: the first valid carried slot

  RowSlots(const bool* reset_p, const int64_t* offset, const int64_t* row_step0, int64_t step0, int64_t T,
           int64_t B, int64_t S0, int64_t k_att)
      : T(T), B(B), S0(S0), lo(T * B), hi(T * B), wr(T * B), reset(T * B, 0), offset(B, 0) {
    if (offset)
      for (int64_t b = 0; b < B; ++b) this->offset[b] = offset[b];
    if (reset_p)
      for (int64_t i = 0; i < T * B; ++i) reset[i] = reset_p[i];
    auto walk = [&](int64_t b, int64_t* lo_p, int64_t* hi_p, int64_t* wr_p, int64_t* src_p) {
      return row_slot_walk(reset_p, T, B, b, S0, this->offset[b], row_step0 ? row_step0[b] : step0, k_att, lo_p,
                           hi_p, wr_p, src_p);
    };
    for (int64_t b = 0; b < B; ++b) S1 = std::max(S1, walk(b, lo.data(), hi.data(), wr.data(), nullptr));
    src.assign(B * S1, -1);  // padding: zeros
    if (S1 > 0)
      for (int64_t b = 0; b < B; ++b) walk(b, nullptr, nullptr, nullptr, src.data() + b * S1);
  }
  bool any_reset(int64_t t, int64_t b0, int64_t nb) const {
    for (int64_t b = b0; b < b0 + nb; ++b)
      if (reset[t * B + b]) return true;
    return false;
  }
};

// The SAB part of one layer call (the LSTM part is lstm_step.h's LstmLayer): sizes, options, the scorer's
// parameters, the states the slots hold, their keys and the attention record, [T, B, .] step-major. The
// forward writes y, hhat, the keys and the record; the backward only reads them.
template <typename T>
struct SabLayer {
  int64_t steps, B, H, A, S, k_top;  // A = 0 for the linear scorer; S = S0 + S1 slots
  SlotGrid grid;
  bool mlp, provisional;
  const T *att_wh, *att_wm, *att_vb;  // mlp: [A, H], [A, H], att_v [A]; linear: [H], [H], att_b [1]
  const T* carried;                   // [B, S0, H]: slots 0 .. S0-1 (memory, or h0)
  T *y, *hhat;                        // [T, B, H]: h_t (final states) and ĥ_t (the cell's outputs)
  T* slot_keys;                       // mlp [B, S, A], linear [B, S]
  int64_t* idx;                       // [T, B, k_top]: the selected slots, ascending, -1 padding
  T* w;                               // [T, B, k_top]: their weights, 0 padding
  int64_t* thr;                       // [T, B]: the slot that receives dL/dtau
  T* denom;                           // [T, B]: Σ ã + eps
  const RowSlots* rows = nullptr;     // per-row tables (resets), or nullptr: every row on `grid`
  const T* zeros = nullptr;           // [H] zeros: a reset's fresh slot (rows only)

  // The value m_j of slot j for batch row b: carried in, or the final (y) / provisional (ĥ) state of the
  // step that wrote it (per row: a reset's fresh slot, zeros).
  const T* slot(int64_t j, int64_t b) const {
    return row_slot_value(grid, rows ? rows->src.data() : nullptr, rows ? rows->S1 : 0, j, b, carried, y, hhat,
                          provisional, B, H, zeros);
  }
  // The slots step t of row b scores, [first_slot, n_slots) (SPEC step 4; per row: its current piece).
  int64_t first_slot(int64_t t, int64_t b) const { return rows ? rows->lo[t * B + b] : 0; }
  int64_t n_slots(int64_t t, int64_t b) const { return rows ? rows->hi[t * B + b] : grid.n_mem(t); }
  // The slot row b writes after step t (SPEC step 8), or -1.
  int64_t written(int64_t t, int64_t b) const { return rows ? rows->wr[t * B + b] : grid.written(t); }
};

// The SabLayer of contiguous tensors of the dtype T (checked by the op: csrc/checks.h). `carried`: the
// memory [B, S0, H], or h0 [B, H] (S0 = 1).
template <typename T>
inline SabLayer<T> sab_layer(const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_vb,
                             const at::Tensor& carried, const SlotGrid& grid, const at::Tensor& y,
                             const at::Tensor& hhat, const at::Tensor& slot_keys, const at::Tensor& idx,
                             const at::Tensor& w, const at::Tensor& thr, const at::Tensor& denom, bool mlp,
                             bool provisional, const RowSlots* rows = nullptr, const at::Tensor* zeros = nullptr) {
  const int64_t steps = y.size(0);
  return {steps, y.size(1), y.size(2), mlp ? att_wh.size(0) : 0, rows ? rows->S0 + rows->S1 : grid.n_mem(steps),
          idx.size(2), grid, mlp, provisional,
          att_wh.const_data_ptr<T>(), att_wm.const_data_ptr<T>(), att_vb.const_data_ptr<T>(),
          carried.const_data_ptr<T>(), y.data_ptr<T>(), hhat.data_ptr<T>(), slot_keys.data_ptr<T>(),
          idx.data_ptr<int64_t>(), w.data_ptr<T>(), thr.data_ptr<int64_t>(), denom.data_ptr<T>(), rows,
          zeros ? zeros->const_data_ptr<T>() : nullptr};
}

// Per-row resets, the LSTM part (docs/CONTRACT.md "Per-row resets"): h_{t-1}, c_{t-1} of a row reset at
// step t are zeros. lstm_step.h reads them from [T, B, H] buffers (h0, c0 at t = 0), so the caller zeroes
// those rows around the step and puts them back (ResetRows), and passes h0, c0 with the rows reset at
// step 0 zeroed (zero_reset_rows). Rows are private to the thread sweeping their block.
template <typename T>
struct ResetRows {
  std::vector<T> saved;  // the rows put aside
  std::vector<int64_t> which;
  explicit ResetRows(int64_t nb, int64_t H) : saved(2 * nb * H) { which.reserve(nb); }
  // Zero the rows b of h, c ([B, H] views of step t-1) that are reset at step t; remembers them.
  void zero(const RowSlots& rows, int64_t t, int64_t b0, int64_t nb, T* h, T* c, int64_t H) {
    which.clear();
    for (int64_t b = b0; b < b0 + nb; ++b) {
      if (!rows.reset[t * rows.B + b]) continue;
      T* keep = saved.data() + which.size() * 2 * H;
      if (h) std::copy_n(h + b * H, H, keep);
      std::copy_n(c + b * H, H, keep + H);
      if (h) std::fill_n(h + b * H, H, T(0));
      std::fill_n(c + b * H, H, T(0));
      which.push_back(b);
    }
  }
  void restore(T* h, T* c, int64_t H) {
    for (size_t i = 0; i < which.size(); ++i) {
      const T* keep = saved.data() + i * 2 * H;
      if (h) std::copy_n(keep, H, h + which[i] * H);
      std::copy_n(keep + H, H, c + which[i] * H);
    }
    which.clear();
  }
};

// The per-row tables of a call (checked arguments: csrc/checks.h ArgChecker::rows), none without per-row
// arguments.
inline std::optional<RowSlots> row_slots(bool per_row, const std::optional<at::Tensor>& reset,
                                         const std::optional<at::Tensor>& slot_offset,
                                         const std::optional<at::Tensor>& row_step0, int64_t step0, int64_t T,
                                         int64_t B, int64_t S0, int64_t k_att) {
  if (!per_row) return std::nullopt;
  return RowSlots(reset ? reset->const_data_ptr<bool>() : nullptr,
                  slot_offset ? slot_offset->const_data_ptr<int64_t>() : nullptr,
                  row_step0 ? row_step0->const_data_ptr<int64_t>() : nullptr, step0, T, B, S0, k_att);
}

// `state` [B, H] with the rows reset at step 0 zeroed (a copy; the state itself when no row is).
inline at::Tensor zero_reset_rows(const at::Tensor& state, const std::optional<at::Tensor>& reset) {
  if (!reset.has_value() || reset->size(0) == 0) return state;
  const at::Tensor r0 = reset->select(0, 0).unsqueeze(1);
  return at::where(r0, at::zeros({}, state.options()), state).contiguous();
}

// The keys of the S0 carried slots into slot_keys[:, :S0]: one GEMM over all B * S0 of them (mlp), or one
// matrix-vector product (linear). Recomputed at every call: cached keys would be stale after an optimiser
// step (docs/CONTRACT.md).
inline void carried_keys(const at::Tensor& carried, int64_t S0, const at::Tensor& att_wm, bool mlp,
                         at::Tensor& slot_keys) {
  const at::Tensor m = carried.view({slot_keys.size(0), S0, att_wm.size(-1)});
  slot_keys.narrow(1, 0, S0).copy_(mlp ? at::matmul(m, att_wm.t()) : at::matmul(m, att_wm));
}

}  // namespace cpu
}  // namespace fastrnn

