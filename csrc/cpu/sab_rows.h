// CPU only, shared by the SAB forward (sab_forward.cpp) and backward (sab_backward.cpp): at::vec row
// kernels (dot, axpy, the mlp score and its backward over one slot, on attention_score.h's per-element
// math) and the layout of the memory slots and their keys.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "fastrnn/attention_score.h"  // the scorers' per-element math, shared with CUDA
#include "fastrnn/memory_slots.h"     // SlotGrid, slot_value: the slot layout, shared with CUDA

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

// tanh of the mlp scorer. float: a rational approximation (Eigen's generic_fast_tanh_float, a few ulp
// on the clamped range), several times the throughput of Sleef's tanhf (u10), and the scorer's tanh
// over all slots is the mlp forward's hot loop. double: at::vec's tanh, exact enough for the 1e-9 tests.
// 1 / q to within an ulp or two: the hardware estimate refined by one Newton step, several times the
// throughput of a division (q lies in [0.0049, 0.91] here, far from 0 and infinity).
inline Vectorized<float> fast_reciprocal(const Vectorized<float>& q) {
#if defined(CPU_CAPABILITY_AVX512)
  const Vectorized<float> r(_mm512_rcp14_ps(q));
#elif defined(CPU_CAPABILITY_AVX2)
  const Vectorized<float> r(_mm256_rcp_ps(q));
#else
  return Vectorized<float>(1.0f) / q;
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return r * at::vec::fnmadd(q, r, Vectorized<float>(2.0f));  // r (2 - q r)
#endif
}

template <typename T>
inline Vectorized<T> score_tanh(const Vectorized<T>& a) {
  return a.tanh();
}

template <>
inline Vectorized<float> score_tanh<float>(const Vectorized<float>& a) {
  using V = Vectorized<float>;
  const V x = at::vec::clamp(a, V(-7.90531110763549805f), V(7.90531110763549805f));
  const V x2 = x * x;
  V p = at::vec::fmadd(x2, V(-2.76076847742355e-16f), V(2.00018790482477e-13f));
  p = at::vec::fmadd(x2, p, V(-8.60467152213735e-11f));
  p = at::vec::fmadd(x2, p, V(5.12229709037114e-08f));
  p = at::vec::fmadd(x2, p, V(1.48572235717979e-05f));
  p = at::vec::fmadd(x2, p, V(6.37261928875436e-04f));
  p = at::vec::fmadd(x2, p, V(4.89352455891786e-03f));
  p = x * p;
  V q = at::vec::fmadd(x2, V(1.19825839466702e-06f), V(1.18534705686654e-04f));
  q = at::vec::fmadd(x2, q, V(2.26843463243900e-03f));
  q = at::vec::fmadd(x2, q, V(4.89352518554385e-03f));
  // Below 4e-4 tanh(x) rounds to x.
  return V::blendv(p * fast_reciprocal(q), x, a.abs() < V(0.0004f));
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

  // The value m_j of slot j for batch row b: carried in, or the final (y) / provisional (ĥ) state of the
  // step that wrote it.
  const T* slot(int64_t j, int64_t b) const {
    return slot_value(grid, j, b, carried, y, hhat, provisional, B, H);
  }
};

// The SabLayer of contiguous tensors of the dtype T (checked by the op: csrc/checks.h). `carried`: the
// memory [B, S0, H], or h0 [B, H] (S0 = 1).
template <typename T>
inline SabLayer<T> sab_layer(const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_vb,
                             const at::Tensor& carried, const SlotGrid& grid, const at::Tensor& y,
                             const at::Tensor& hhat, const at::Tensor& slot_keys, const at::Tensor& idx,
                             const at::Tensor& w, const at::Tensor& thr, const at::Tensor& denom, bool mlp,
                             bool provisional) {
  const int64_t steps = y.size(0);
  return {steps, y.size(1), y.size(2), mlp ? att_wh.size(0) : 0, grid.n_mem(steps), idx.size(2), grid,
          mlp, provisional,
          att_wh.const_data_ptr<T>(), att_wm.const_data_ptr<T>(), att_vb.const_data_ptr<T>(),
          carried.const_data_ptr<T>(), y.data_ptr<T>(), hhat.data_ptr<T>(), slot_keys.data_ptr<T>(),
          idx.data_ptr<int64_t>(), w.data_ptr<T>(), thr.data_ptr<int64_t>(), denom.data_ptr<T>()};
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

