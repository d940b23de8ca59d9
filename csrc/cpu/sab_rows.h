// CPU only, shared by the SAB forward (sab_forward.cpp) and backward (sab_backward.cpp): at::vec row
// kernels (dot, axpy, the mlp scores of a row's slots and the backward of one slot's, on attention_score.h's
// per-element math) and the layout of the memory slots and their keys.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fastrnn/attention_score.h"  // the scorers' per-element math, shared with CUDA
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
// Memory layout shared by forward and backward.
//   slot j >= 1 is written at the end of step j * k_att - 1; slot 0 is h0.
//   slot_keys, the scorer's projection of each slot, computed once when the slot is written (row-major per
//   batch row, so one row's scan is contiguous):
//     mlp     [B, S, A] = att_wm @ m_j
//     linear  [B, S]    = att_wm · m_j (the slot's part of the score; it never changes)
inline int64_t num_slots(int64_t T, int64_t k_att) { return 1 + T / k_att; }
inline int64_t slot_step(int64_t j, int64_t k_att) { return j * k_att - 1; }

// The value m_j of slot j for batch row b: h0, or the final (y) / provisional (ĥ) state of its step.
template <typename T>
inline const T* slot_value(int64_t j, int64_t b, const T* h0, const T* y, const T* hhat, bool provisional,
                           int64_t k_att, int64_t B, int64_t H) {
  if (j == 0) return h0 + b * H;
  const T* base = provisional ? hhat : y;
  return base + (slot_step(j, k_att) * B + b) * H;
}

// The SAB part of one layer call (the LSTM part is lstm_step.h's LstmLayer): sizes, options, the scorer's
// parameters, the states the slots hold, their keys and the attention record, [T, B, .] step-major. The
// forward writes y, hhat, the keys and the record; the backward only reads them.
template <typename T>
struct SabLayer {
  int64_t steps, B, H, A, S, k_top, k_att;  // A = 0 for the linear scorer
  bool mlp, provisional;
  const T *att_wh, *att_wm, *att_vb;  // mlp: [A, H], [A, H], att_v [A]; linear: [H], [H], att_b [1]
  const T* h0;                        // [B, H]: slot 0
  T *y, *hhat;                        // [T, B, H]: h_t (final states) and ĥ_t (the cell's outputs)
  T* slot_keys;                       // mlp [B, S, A], linear [B, S]
  int64_t* idx;                       // [T, B, k_top]: the selected slots, ascending, -1 padding
  T* w;                               // [T, B, k_top]: their weights, 0 padding
  int64_t* thr;                       // [T, B]: the slot that receives dL/dtau
  T* denom;                           // [T, B]: Σ ã + eps

  // The value m_j of slot j for batch row b.
  const T* slot(int64_t j, int64_t b) const { return slot_value(j, b, h0, y, hhat, provisional, k_att, B, H); }
};

// The SabLayer of contiguous tensors of the dtype T (checked by the op: csrc/checks.h).
template <typename T>
inline SabLayer<T> sab_layer(const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_vb,
                             const at::Tensor& h0, const at::Tensor& y, const at::Tensor& hhat,
                             const at::Tensor& slot_keys, const at::Tensor& idx, const at::Tensor& w,
                             const at::Tensor& thr, const at::Tensor& denom, int64_t k_att, bool mlp,
                             bool provisional) {
  const int64_t steps = y.size(0);
  return {steps, y.size(1), y.size(2), mlp ? att_wh.size(0) : 0, num_slots(steps, k_att), idx.size(2), k_att,
          mlp, provisional,
          att_wh.const_data_ptr<T>(), att_wm.const_data_ptr<T>(), att_vb.const_data_ptr<T>(), h0.const_data_ptr<T>(),
          y.data_ptr<T>(), hhat.data_ptr<T>(), slot_keys.data_ptr<T>(), idx.data_ptr<int64_t>(), w.data_ptr<T>(),
          thr.data_ptr<int64_t>(), denom.data_ptr<T>()};
}

}  // namespace cpu
}  // namespace fastrnn

