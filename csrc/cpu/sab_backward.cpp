// SAB-LSTM layer backward on the CPU (SPEC section 2): one reverse sweep over the steps.
//
// Per step t and batch row, with dh = dL/dh_t:
//   dh = dy_t + scale[t+1] * (recurrent gradient from step t+1) [+ dM_j if t wrote slot j, final slots]
//   h_t = ĥ_t + s_t, s_t = Σ w_j m_j  ->  dw_j = dh · m_j,  dM_j += w_j dh   (selected slots only)
//   weights backward -> dL/da for the selected slots and the threshold slot (sparse_attention.h)
//   mlp:    q_t = att_wh @ ĥ_t (one GEMM over the batch) and u_j = tanh(q_t + P_j) recomputed for
//           those <= k_top + 1 slots; dq_t, dP_j, dv
//   linear: dM_j += da_j att_wm, d att_wm += da_j m_j; the query term gets Σ da_j (zero up to rounding)
//   dĥ_t = dh + att_wh^T dq_t (one GEMM over the batch) [+ dM_j, provisional slots]
//   cell backward -> dgates_t; recurrent gradient into step t-1 = dgates_t @ w_hh (one GEMM).
// dM [B, S, H] (and dP [B, S, A]) collect each slot's gradient until the sweep reaches the step that
// wrote it; dP_j joins dM_j through att_wm (one GEMM) right before that. Rows are independent until
// the weight gradients, so each thread sweeps one block of rows (see sweep).
//
// Weight gradients, in chunks of C steps: dx = dG W_ih, dW_ih = dG^T x, dW_hh = Σ_t dG_t^T h_{t-1},
// db = column sums of dG, and (mlp) d att_wh = dQ^T ĥ. Keeping dG [T, B, 4H] and dQ [T, B, A] for the whole
// sequence to form them with a few large GEMMs after the sweep cost 655 MB (dG alone) at T = 10000,
// B = 32, H = 128, 40 % of the backward's memory, whose fresh pages were faulted in and zeroed on every
// call, so the time per step grew with T. Instead each thread keeps its rows' dG and dQ for C steps only
// (a chunk, step-major), and when the sweep has filled it folds it into its block's own accumulators and
// writes the block's dx rows, with single-threaded GEMMs while the chunk is still in cache (flush_chunk;
// chunk_steps says how long a chunk is). dP [B, S, A] is per slot, not per step, and stays whole. The
// accumulators are summed in block order after the sweep, so reruns at the same thread count are
// bit-identical.
#include "sab_common.h"
#include "backward_chunks.h"
#include "huge_pages.h"
#include "lengths.h"

#include <fastrnn/sparse_attention.h>

#include <ATen/Parallel.h>

namespace fastrnn {
namespace cpu {
namespace {

template <typename T>
struct BackwardArgs {
  int64_t steps, B, I, H, A, S, K, k_att;
  bool mlp, provisional;
  int64_t C;  // steps per chunk
  const T *gy, *ghn, *gcn, *x, *w_ih, *w_hh, *att_wh, *att_wm, *att_s, *h0, *c0, *scale;
  const bool* cut;
  const int64_t* len;  // [B] or nullptr: gy is then masked with ghn folded in (cpu/lengths.h)
  const T *y, *gates, *c, *hhat, *w, *denom, *cache;
  const int64_t *idx, *thr;
  // work buffers
  T *q, *dM, *dP, *carry_h, *carry_c, *dhh, *row_acc1, *row_acc2, *row_acc3;  // q: [B, A]
  T* dw_da;  // [B, 2 * k_top] per-row scratch: dL/dw and dL/da of the selected slots
  T* dx;     // output [T, B, I]
};

// One block's chunk (rows step-major: row (t - t0) * R + b - b0) and weight-gradient accumulators.
template <typename T>
struct BlockBuffers {
  T *dG, *dQ;                       // [C * R, 4H], [C * R, A]
  T *dw_ih, *dw_hh, *db, *datt_wh;  // [4H, I], [4H, H], [4H], [A, H]
};

template <typename T>
const T* slot_of(const BackwardArgs<T>& a, int64_t j, int64_t b) {
  return slot_value(j, b, a.h0, a.y, a.hhat, a.provisional, a.k_att, a.B, a.H);
}

// Gradient of the score of slot j of row b at step t, da -> the score's inputs.
template <typename T>
void score_backward(const BackwardArgs<T>& a, int64_t b, int64_t j, T da, T* dq, T& sum_da) {
  if (a.mlp) {
    const int64_t A = a.A;
    mlp_score_backward(a.q + b * A, a.cache + (b * a.S + j) * A, a.att_s, da,
                       a.row_acc1 + b * A, dq, a.dP + (b * a.S + j) * A, A);
  } else {
    axpy(a.row_acc1 + b * a.H, da, slot_of(a, j, b), a.H);  // d att_wm
    axpy(a.dM + (b * a.S + j) * a.H, da, a.att_wm, a.H);
    sum_da += da;
  }
}

// First half of step t for row b: dh, the summary and the attention backward; dq: the row's dL/dq_t (mlp).
template <typename T>
void attention_backward_row(const BackwardArgs<T>& a, int64_t t, int64_t b, int64_t j_written, T sc, T* dq) {
  const int64_t H = a.H, K = a.K;
  T* dh = a.dhh + b * H;
  const T* gy = a.gy + (t * a.B + b) * H;
  if (t == a.steps - 1) {
    if (a.len)  // ghn is already in gy, at the row's last step
      for (int64_t h = 0; h < H; ++h) dh[h] = gy[h];
    else
      add(dh, gy, a.ghn + b * H, H);
  } else if (sc == T(0)) {
    for (int64_t h = 0; h < H; ++h) dh[h] = gy[h];
  } else {
    for (int64_t h = 0; h < H; ++h) dh[h] = gy[h];
    axpy(dh, sc, a.carry_h + b * H, H);
  }
  if (j_written > 0 && !a.provisional) add(dh, dh, a.dM + (b * a.S + j_written) * H, H);

  const int64_t* idx = a.idx + (t * a.B + b) * K;
  const T* w = a.w + (t * a.B + b) * K;
  T* dw = a.dw_da + b * 2 * K;
  T* da = dw + K;
  int count = 0;
  while (count < K && idx[count] >= 0) ++count;
  for (int p = 0; p < count; ++p) {  // s_t = Σ w_j m_j; dh is also dL/ds_t
    const T* m = slot_of(a, idx[p], b);
    dw[p] = dot(dh, m, H);
    axpy(a.dM + (b * a.S + idx[p]) * H, w[p], dh, H);
  }
  const T dtau = sparse::weights_backward(w, dw, count, a.denom[t * a.B + b], da);
  const int64_t thr = a.thr[t * a.B + b];
  bool thr_selected = false;
  for (int p = 0; p < count; ++p) {
    if (idx[p] == thr) {
      da[p] += dtau;
      thr_selected = true;
    }
  }
  for (int64_t i = 0; i < a.A; ++i) dq[i] = T(0);
  T sum_da = T(0);
  for (int p = 0; p < count; ++p) score_backward(a, b, idx[p], da[p], dq, sum_da);
  if (!thr_selected) score_backward(a, b, thr, dtau, dq, sum_da);
  if (!a.mlp) {  // the query term att_wh · ĥ_t + att_b, shared by all slots
    axpy(a.row_acc2 + b * H, sum_da, a.hhat + (t * a.B + b) * H, H);  // d att_wh
    a.row_acc3[b] += sum_da;                                         // d att_b
    axpy(dh, sum_da, a.att_wh, H);
  }
}

// Second half of step t for row b: dĥ_t -> cell backward -> dgates_t (into dg) and dL/dc_{t-1}.
template <typename T>
void cell_backward_row(const BackwardArgs<T>& a, int64_t t, int64_t b, int64_t j_written, T* dg) {
  const int64_t H = a.H, G = 4 * H;
  T* dh = a.dhh + b * H;
  if (j_written > 0 && a.provisional) add(dh, dh, a.dM + (b * a.S + j_written) * H, H);
  // carry_c holds dL/dc_t from step t+1 (already cut/scaled by lstm_row_backward), or grad_cn.
  T* dc = a.carry_c + b * H;
  if (t == a.steps - 1)
    for (int64_t h = 0; h < H; ++h) dc[h] = a.len ? T(0) : a.gcn[b * H + h];
  if (a.len && t == a.len[b] - 1) add(dc, dc, a.gcn + b * H, H);  // c_n of this row is c_t
  const T* c_prev = t == 0 ? a.c0 : a.c + (t - 1) * a.B * H;
  lstm_row_backward(dh, dc, a.gates + (t * a.B + b) * G, c_prev + b * H, a.c + (t * a.B + b) * H,
                    dg, H, a.cut[t], a.scale[t]);
}

// The chunk of steps [t0, t0 + n) of rows [b0, b0 + R) is complete: the LSTM weight gradients and dx rows
// as in the LSTM backward, and for the mlp scorer d att_wh += dQ_t^T ĥ_t.
template <typename T>
void flush_chunk(const BackwardArgs<T>& a, const BlockBuffers<T>& k, int64_t t0, int64_t n, int64_t b0,
                 int64_t R) {
  fold_lstm_chunk<T>(k.dG, t0, n, b0, R, a.B, a.I, a.H, a.x, a.h0, a.y, a.w_ih, a.dx, k.dw_ih, k.dw_hh, k.db);
  if (!a.mlp) return;
  for (int64_t i = 0; i < n; ++i) {
    const T* hhat = a.hhat + ((t0 + i) * a.B + b0) * a.H;
    gemm<T>(true, false, a.A, a.H, R, T(1), k.dQ + i * R * a.A, a.A, hhat, a.H, T(1), k.datt_wh, a.H);
  }
}

// The reverse sweep for rows [b0, b1): rows never interact before the weight gradients, so each
// thread sweeps its own block without synchronisation.
template <typename T>
void sweep(const BackwardArgs<T>& a, const BlockBuffers<T>& k, int64_t b0, int64_t b1) {
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S, G = 4 * H, R = b1 - b0;
  for (int64_t t = a.steps - 1; t >= 0; --t) {
    const int64_t t0 = t / a.C * a.C;  // first step of t's chunk
    T* dG = k.dG + (t - t0) * R * G;   // this step's rows in the chunk
    T* dQ = k.dQ + (t - t0) * R * A;
    const int64_t j_written = (t + 1) % a.k_att == 0 ? (t + 1) / a.k_att : 0;
    // Scale of the recurrent gradient arriving from step t + 1.
    const T sc = t == a.steps - 1 ? T(1) : (a.cut[t + 1] ? T(0) : a.scale[t + 1]);
    if (a.mlp && j_written > 0)  // every step reading slot j is done: dM_j += dP_j @ att_wm
      gemm<T>(false, false, R, H, A, T(1), a.dP + b0 * S * A + j_written * A, S * A, a.att_wm, H, T(1),
              a.dM + b0 * S * H + j_written * H, S * H);
    if (a.mlp)  // the query q_t = att_wh @ ĥ_t, as in the forward
      gemm<T>(false, true, R, A, H, T(1), a.hhat + (t * B + b0) * H, H, a.att_wh, H, T(0), a.q + b0 * A, A);
    for (int64_t b = b0; b < b1; ++b) {
      attention_backward_row(a, t, b, j_written, sc, dQ + (b - b0) * A);
      if (!a.mlp) cell_backward_row(a, t, b, j_written, dG + (b - b0) * G);
    }
    if (a.mlp) {
      gemm<T>(false, false, R, H, A, T(1), dQ, A, a.att_wh, H, T(1), a.dhh + b0 * H, H);
      for (int64_t b = b0; b < b1; ++b) cell_backward_row(a, t, b, j_written, dG + (b - b0) * G);
    }
    gemm<T>(false, false, R, H, G, T(1), dG, G, a.w_hh, H, T(0), a.carry_h + b0 * H, H);
    if (t == t0) flush_chunk(a, k, t0, std::min(a.steps, t0 + a.C) - t0, b0, R);
  }
}

}  // namespace

SabBackwardOut sab_backward_impl(const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
                                 const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_s,
                                 const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
                                 const at::Tensor& scale, const int64_t* lengths, const at::Tensor& y,
                                 const at::Tensor& gates,
                                 const at::Tensor& c, const at::Tensor& hhat, const at::Tensor& idx,
                                 const at::Tensor& w, const at::Tensor& thr, const at::Tensor& denom,
                                 const at::Tensor& cache, int64_t k_top, int64_t k_att,
                                 bool mlp, bool provisional, bool has_bias) {
  const int64_t steps = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const int64_t A = mlp ? att_wh.size(0) : 0, S = num_slots(steps, k_att), G = 4 * H;
  const auto opt = x.options();
  // Block k sweeps rows [k R, min(B, (k + 1) R)): one block per thread.
  const int64_t R = rows_per_thread(B), nblocks = (B + R - 1) / R;
  const int64_t C = chunk_steps(steps, R * (G + A) * x.element_size());
  at::Tensor dG = at::empty({nblocks, C * R, G}, opt), dQ = at::empty({nblocks, C * R, A}, opt);
  at::Tensor acc_ih = at::zeros({nblocks, G, I}, opt), acc_hh = at::zeros({nblocks, G, H}, opt);
  at::Tensor acc_b = at::zeros({nblocks, G}, opt), acc_att_wh = at::zeros({nblocks, A, H}, opt);
  at::Tensor q = at::empty({B, A}, opt);
  at::Tensor dM = empty_huge({B, S, H}, opt).zero_();
  at::Tensor dP = at::zeros({mlp ? B : 0, S, A}, opt);
  at::Tensor carry_h = at::empty({B, H}, opt), carry_c = at::empty({B, H}, opt), dhh = at::empty({B, H}, opt);
  // Per-row accumulators of the attention parameter gradients (summed over rows at the end, so the
  // parallel loop never shares a write): mlp dv [B, A]; linear d att_wm [B, H], d att_wh [B, H], d att_b [B].
  at::Tensor acc1 = at::zeros({B, mlp ? A : H}, opt);
  at::Tensor acc2 = at::zeros({mlp ? 0 : B, H}, opt);
  at::Tensor acc3 = at::zeros({mlp ? 0 : B}, opt);
  at::Tensor dx = empty_huge({steps, B, I}, opt);
  at::Tensor datt_wh, datt_wm = at::empty_like(att_wm);
  at::Tensor datt_s, dh0, dc0;
  at::Tensor dw_da = at::empty({B, 2 * k_top}, opt);
  // With lengths: grad_y masked past each row's length, grad_hn folded into its last step (cpu/lengths.h).
  const at::Tensor gy = lengths ? fold_output_grads(grad_y, grad_hn, lengths) : grad_y;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::sab_backward", [&] {
    using T = scalar_t;
    BackwardArgs<T> a{steps, B, I, H, A, S, k_top, k_att, mlp, provisional, C,
                      gy.data_ptr<T>(), grad_hn.data_ptr<T>(), grad_cn.data_ptr<T>(), x.data_ptr<T>(),
                      w_ih.data_ptr<T>(), w_hh.data_ptr<T>(), att_wh.data_ptr<T>(), att_wm.data_ptr<T>(),
                      att_s.data_ptr<T>(), h0.data_ptr<T>(), c0.data_ptr<T>(), scale.data_ptr<T>(),
                      cut.data_ptr<bool>(), lengths, y.data_ptr<T>(), gates.data_ptr<T>(), c.data_ptr<T>(),
                      hhat.data_ptr<T>(), w.data_ptr<T>(), denom.data_ptr<T>(),
                      cache.data_ptr<T>(), idx.data_ptr<int64_t>(), thr.data_ptr<int64_t>(),
                      q.data_ptr<T>(), dM.data_ptr<T>(), mlp ? dP.data_ptr<T>() : nullptr,
                      carry_h.data_ptr<T>(), carry_c.data_ptr<T>(), dhh.data_ptr<T>(), acc1.data_ptr<T>(),
                      mlp ? nullptr : acc2.data_ptr<T>(), mlp ? nullptr : acc3.data_ptr<T>(),
                      dw_da.data_ptr<T>(), dx.data_ptr<T>()};
    at::parallel_for(0, nblocks, 1, [&](int64_t k0, int64_t k1) {
      SequentialBlasGuard sequential;  // the block's GEMMs on this thread only
      for (int64_t k = k0; k < k1; ++k) {
        const BlockBuffers<T> buf{dG.data_ptr<T>() + k * C * R * G, dQ.data_ptr<T>() + k * C * R * A,
                                  acc_ih.data_ptr<T>() + k * G * I, acc_hh.data_ptr<T>() + k * G * H,
                                  acc_b.data_ptr<T>() + k * G, acc_att_wh.data_ptr<T>() + k * A * H};
        sweep(a, buf, k * R, std::min(B, (k + 1) * R));
      }
    });

    // Step -1 is the initial state: the recurrent gradient into it is cut/scaled by cut[0]/scale[0]
    // (carry_c already is); h0 is also slot 0.
    if (mlp)  // slot 0's projection gradient joins it like any other slot's
      gemm<T>(false, false, B, H, A, T(1), a.dP, S * A, a.att_wm, H, T(1), a.dM, S * H);
    dh0 = dM.select(1, 0).clone(at::MemoryFormat::Contiguous);
    dc0 = carry_c;
    if (!a.cut[0]) {
      T* p = dh0.data_ptr<T>();
      for (int64_t r = 0; r < B * H; ++r) p[r] += a.scale[0] * a.carry_h[r];
    }

    if (mlp) {
      datt_wh = sum_blocks(acc_att_wh);
      // d att_wm = Σ_j dP_j^T m_j as one GEMM over all (row, slot) pairs: the slot values are gathered
      // into M [B, S, H], the layout of dP [B, S, A]. One GEMM per slot (K = B) was S small GEMMs, each
      // starting BLAS's thread team; on a loaded machine that cost seconds at T = 1000.
      at::Tensor M = at::empty({B, S, H}, opt);
      T* m_all = M.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < S; ++j) std::copy_n(slot_of(a, j, b), H, m_all + (b * S + j) * H);
      gemm<T>(true, false, A, H, B * S, T(1), a.dP, A, m_all, H, T(0), datt_wm.data_ptr<T>(), H);
      datt_s = acc1.sum(0);
    } else {
      datt_wm = acc1.sum(0);
      datt_wh = acc2.sum(0);
      datt_s = acc3.sum(0, /*keepdim=*/true);
    }
  });
  if (lengths) add_zero_length_grads(lengths, grad_hn, grad_cn, dh0, dc0);
  at::Tensor db = has_bias ? sum_blocks(acc_b) : at::empty({0}, opt);
  return {dx, sum_blocks(acc_ih), sum_blocks(acc_hh), db, datt_wh, datt_wm, datt_s, dh0, dc0};
}

}  // namespace cpu
}  // namespace fastrnn
