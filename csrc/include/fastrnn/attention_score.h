// The scorers' math (SPEC section 1, step 4) for one element, forward and backward. Shared by the CPU
// kernels (at::vec::Vectorized lanes, csrc/cpu/sab_rows.h) and CUDA kernels, like lstm_cell.h; no torch
// headers here.
//
//   mlp:    a_j = Σ_i v_i tanh(q_i + p_i) with q = att_wh ĥ_t (the query), p = att_wm m_j (slot j's key),
//           v = att_v; one element is one term i of the sum.
//   linear: a_j = k_j + q + b with k_j = att_wm · m_j (slot j's key), q = att_wh · ĥ_t, b = att_b, summed in
//           that order (as the reference does).
//
// `V` is the value type (float, double, or a SIMD vector) and `M` a math policy providing M::tanh(V) and
// M::fma(V a, V b, V c) = a * b + c: the CPU passes its vector policy (a fast rational tanh for float32),
// ScalarMath (scalar_math.h) serves CUDA and scalar code.
#pragma once

#include "fastrnn/hd.h"
#include "fastrnn/scalar_math.h"

namespace fastrnn {

// One term of the mlp score, accumulated: acc += v * tanh(q + p).
template <class M, class V>
FASTRNN_HD inline V mlp_score_term(V q, V p, V v, V acc) {
  return M::fma(v, M::tanh(q + p), acc);
}

// Its backward given da = dL/da_j: u = tanh(q + p) recomputed; dv += da * u; du = da * v * (1 - u^2);
// dq += du; dp += du.
template <class M, class V>
FASTRNN_HD inline void mlp_score_term_backward(V q, V p, V v, V da, V& dv, V& dq, V& dp) {
  const V one(1);
  const V u = M::tanh(q + p);
  const V du = da * v * (one - u * u);
  dv = M::fma(da, u, dv);
  dq = dq + du;
  dp = dp + du;
}

// The linear score of a slot from its key k_j, the query q and the bias b. Its gradient is da for each of
// the three (d att_wm += da m_j, d m_j += da att_wm, and the query's and bias's share Σ_j da_j).
template <class V>
FASTRNN_HD inline V linear_score(V key, V query, V bias) {
  return key + query + bias;
}

}  // namespace fastrnn
