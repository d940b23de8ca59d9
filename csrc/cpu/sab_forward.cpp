// SAB-LSTM layer forward on the CPU (SPEC section 1): the whole time loop of one layer.
//
// Batch rows never interact in the forward pass, so the time loop runs once per block of rows, one
// block per thread, with no synchronisation between steps (a barrier per step costs more than the
// step when the machine is busy). The input projections of the whole sequence are one GEMM up front;
// per step and block: one recurrent GEMM, the cell pointwise math, then per row the scores over the
// memory, the top-(k_top+1) threshold, the sparse weights and the summary.
//   mlp:    q_t = att_wh @ ĥ_t is one GEMM over the block (not kept: the backward recomputes it);
//           a_j = v · tanh(q_t + P_j) with the slot
//           projections P_j = att_wm @ m_j computed once, when slot j is written (one GEMM).
//   linear: the slot part att_wm · m_j of the score never changes, so each row keeps its
//           top-(k_top+1) slots incrementally: O(k_top) per step instead of O(|M|).
// Nothing is allocated inside the loop; what the backward needs is O(T·B·H) plus
// O(T·B·k_top) indices and weights; never O(T·|M|) scores.
#include "sab_common.h"
#include "huge_pages.h"
#include "lengths.h"

#include <fastrnn/sparse_attention.h>

#include <ATen/Parallel.h>

#include <vector>

namespace fastrnn {
namespace cpu {
namespace {

template <typename T>
struct ForwardArgs {
  int64_t steps, B, I, H, A, S, K, k_att;
  bool provisional, has_bias;
  const T *x, *w_ih, *w_hh, *b_ih, *b_hh, *att_wh, *att_wm, *att_s, *h0, *c0;
  T *gates, *c, *hhat, *y, *w, *denom, *q, *cache;  // q: [B, A] scratch
  int64_t *idx, *thr;
};

// Summary and final state of one row: y = ĥ + Σ_p w_p m_{idx_p} (the sum first, as SPEC step 7).
template <typename T>
void summarize_row(const ForwardArgs<T>& a, int64_t t, int64_t b, int count, const int64_t* idx, const T* w) {
  T* yb = a.y + (t * a.B + b) * a.H;
  for (int64_t h = 0; h < a.H; ++h) yb[h] = T(0);
  for (int p = 0; p < count; ++p)
    axpy(yb, w[p], slot_value(idx[p], b, a.h0, a.y, a.hhat, a.provisional, a.k_att, a.B, a.H), a.H);
  add(yb, yb, a.hhat + (t * a.B + b) * a.H, a.H);
}

template <typename T>
void store_selection(const ForwardArgs<T>& a, int64_t t, int64_t b, const sparse::Selection<T>& sel) {
  a.thr[t * a.B + b] = sel.thr_slot;
  a.denom[t * a.B + b] = sel.denom;
}

template <typename T>
void input_projection(const ForwardArgs<T>& a) {
  const int64_t G = 4 * a.H, rows = a.steps * a.B;
  gemm<T>(false, true, rows, G, a.I, T(1), a.x, a.I, a.w_ih, a.I, T(0), a.gates, G);
  if (!a.has_bias) return;
  std::vector<T> bias(G);
  for (int64_t j = 0; j < G; ++j) bias[j] = a.b_ih[j] + a.b_hh[j];
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) add(a.gates + r * G, a.gates + r * G, bias.data(), G);
  });
}

// gates_t += h_{t-1} @ w_hh^T for rows [b0, b1) (gates_t holds the input projection and biases).
template <typename T>
void recurrent_gemm(const ForwardArgs<T>& a, int64_t t, int64_t b0, int64_t b1) {
  const int64_t G = 4 * a.H;
  const T* h_prev = t == 0 ? a.h0 : a.y + (t - 1) * a.B * a.H;
  gemm<T>(false, true, b1 - b0, G, a.H, T(1), h_prev + b0 * a.H, a.H, a.w_hh, a.H, T(1),
          a.gates + (t * a.B + b0) * G, G);
}

template <typename T>
void cell_row(const ForwardArgs<T>& a, int64_t t, int64_t b) {
  const T* c_prev = t == 0 ? a.c0 : a.c + (t - 1) * a.B * a.H;
  lstm_row_forward(a.gates + (t * a.B + b) * 4 * a.H, c_prev + b * a.H, a.c + (t * a.B + b) * a.H,
                   a.hhat + (t * a.B + b) * a.H, a.H);
}

// Scratch of one row's ranking: [B, k_top + 1] scores and slots.
template <typename T>
struct Rankings {
  std::vector<T> score;
  std::vector<int64_t> slot;
  std::vector<int> n;
  int cap;
  Rankings(int64_t B, int64_t K) : score(B * (K + 1)), slot(B * (K + 1)), n(B, 0), cap(int(K + 1)) {}
  sparse::TopList<T> row(int64_t b) { return {score.data() + b * cap, slot.data() + b * cap, n[b], cap}; }
};

template <typename T>
void forward_mlp(const ForwardArgs<T>& a, int64_t b0, int64_t b1, Rankings<T>& rank) {
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S, K = a.K, R = b1 - b0;
  // Slot 0 = h0.
  gemm<T>(false, true, R, A, H, T(1), a.h0 + b0 * H, H, a.att_wm, H, T(0), a.cache + b0 * S * A, S * A);
  for (int64_t t = 0; t < a.steps; ++t) {
    recurrent_gemm(a, t, b0, b1);
    for (int64_t b = b0; b < b1; ++b) cell_row(a, t, b);
    gemm<T>(false, true, R, A, H, T(1), a.hhat + (t * B + b0) * H, H, a.att_wh, H, T(0), a.q + b0 * A, A);
    const int64_t n_mem = 1 + t / a.k_att;
    for (int64_t b = b0; b < b1; ++b) {
      sparse::TopList<T> list = rank.row(b);
      list.clear();
      const T* qb = a.q + b * A;
      const T* Pb = a.cache + b * S * A;
      for (int64_t j = 0; j < n_mem; ++j) list.push(mlp_score(qb, Pb + j * A, a.att_s, A), j);
      int64_t* idx = a.idx + (t * B + b) * K;
      T* w = a.w + (t * B + b) * K;
      auto sel = sparse::select_and_weigh(list, n_mem, int(K), idx, w);
      store_selection(a, t, b, sel);
      summarize_row(a, t, b, sel.count, idx, w);
    }
    if ((t + 1) % a.k_att == 0) {  // SPEC step 8: project the new slot once
      const int64_t j = (t + 1) / a.k_att;
      const T* m = (a.provisional ? a.hhat : a.y) + (t * B + b0) * H;
      gemm<T>(false, true, R, A, H, T(1), m, H, a.att_wm, H, T(0), a.cache + b0 * S * A + j * A, S * A);
    }
  }
}

template <typename T>
void forward_linear(const ForwardArgs<T>& a, int64_t b0, int64_t b1, Rankings<T>& keep, Rankings<T>& step) {
  const int64_t B = a.B, H = a.H, S = a.S, K = a.K;
  // Per row: `keep`, the running top-(k_top+1) of the slot parts att_wm · m_j, and `step`, the same
  // ranking with the full scores a_j = att_wm · m_j + att_wh · ĥ_t + att_b of the current step.
  const T att_b = a.att_s[0];
  auto write_slot = [&](int64_t b, int64_t j) {
    const T* m = slot_value(j, b, a.h0, a.y, a.hhat, a.provisional, a.k_att, B, H);
    const T s = dot(a.att_wm, m, H);
    a.cache[b * S + j] = s;
    sparse::TopList<T> list = keep.row(b);
    list.push(s, j);
    keep.n[b] = list.n;
  };
  for (int64_t b = b0; b < b1; ++b) write_slot(b, 0);
  for (int64_t t = 0; t < a.steps; ++t) {
    recurrent_gemm(a, t, b0, b1);
    const int64_t n_mem = 1 + t / a.k_att;
    for (int64_t b = b0; b < b1; ++b) {
      cell_row(a, t, b);
      const T query = dot(a.att_wh, a.hhat + (t * B + b) * H, H);
      // The ranking by the slot part is the ranking by the full score, the query term being shared
      // (up to rounding of the sum: two slot parts closer than an ulp of the score could swap).
      sparse::TopList<T> kept = keep.row(b), ranked = step.row(b);
      ranked.n = kept.n;
      for (int r = 0; r < kept.n; ++r) {
        ranked.score[r] = kept.score[r] + query + att_b;
        ranked.slot[r] = kept.slot[r];
      }
      int64_t* idx = a.idx + (t * B + b) * K;
      T* w = a.w + (t * B + b) * K;
      auto sel = sparse::select_and_weigh(ranked, n_mem, int(K), idx, w);
      store_selection(a, t, b, sel);
      summarize_row(a, t, b, sel.count, idx, w);
      if ((t + 1) % a.k_att == 0) write_slot(b, (t + 1) / a.k_att);
    }
  }
}

}  // namespace

SabForwardOut sab_forward_impl(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                               const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_s,
                               const at::Tensor& h0, const at::Tensor& c0, const int64_t* lengths,
                               int64_t k_top, int64_t k_att, bool mlp, bool provisional) {
  const int64_t steps = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const int64_t A = mlp ? att_wh.size(0) : 0, S = num_slots(steps, k_att), K = k_top;
  const auto opt = x.options();
  const auto lopt = opt.dtype(at::kLong);
  at::Tensor gates = empty_huge({steps, B, 4 * H}, opt);
  at::Tensor c = empty_huge({steps, B, H}, opt);
  at::Tensor hhat = empty_huge({steps, B, H}, opt);
  at::Tensor y = empty_huge({steps, B, H}, opt);
  at::Tensor idx = at::empty({steps, B, K}, lopt);
  at::Tensor w = at::empty({steps, B, K}, opt);
  at::Tensor thr = at::empty({steps, B}, lopt);
  at::Tensor denom = at::empty({steps, B}, opt);
  at::Tensor q = at::empty({B, A}, opt);  // the current step's query, per row
  at::Tensor cache = mlp ? at::empty({B, S, A}, opt) : at::empty({B, S}, opt);
  const bool has_bias = b_ih.has_value();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::sab_forward", [&] {
    ForwardArgs<scalar_t> a{steps, B, I, H, A, S, K, k_att, provisional, has_bias,
                            x.data_ptr<scalar_t>(), w_ih.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(),
                            has_bias ? b_ih->data_ptr<scalar_t>() : nullptr,
                            has_bias ? b_hh->data_ptr<scalar_t>() : nullptr,
                            att_wh.data_ptr<scalar_t>(), att_wm.data_ptr<scalar_t>(), att_s.data_ptr<scalar_t>(),
                            h0.data_ptr<scalar_t>(), c0.data_ptr<scalar_t>(),
                            gates.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), hhat.data_ptr<scalar_t>(),
                            y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), denom.data_ptr<scalar_t>(),
                            mlp ? q.data_ptr<scalar_t>() : nullptr, cache.data_ptr<scalar_t>(),
                            idx.data_ptr<int64_t>(), thr.data_ptr<int64_t>()};
    input_projection(a);
    Rankings<scalar_t> rank(B, K), step(B, K);
    // One block of rows per thread for the whole time loop, its GEMMs on that thread only.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      SequentialBlasGuard sequential;
      if (mlp) {
        forward_mlp(a, b0, b1, rank);
      } else {
        forward_linear(a, b0, b1, rank, step);
      }
    });
  });
  if (lengths == nullptr) return {y, y[steps - 1].clone(), c[steps - 1].clone(), gates, c, hhat, idx, w, thr,
                                  denom, cache};
  // Every step of every row was computed; now the outputs stop at each row's length (cpu/lengths.h). The
  // backward reads the masked record: past a row's length nothing is selected and no gradient arrives.
  at::Tensor h_n = at::empty({B, H}, opt), c_n = at::empty({B, H}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::sab_forward_lengths", [&] {
    finish_forward<scalar_t>(lengths, steps, B, H, y.data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
                             h0.const_data_ptr<scalar_t>(), c0.const_data_ptr<scalar_t>(),
                             h_n.data_ptr<scalar_t>(), c_n.data_ptr<scalar_t>());
    mask_attention<scalar_t>(lengths, steps, B, K, idx.data_ptr<int64_t>(), w.data_ptr<scalar_t>());
  });
  return {y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, cache};
}

}  // namespace cpu
}  // namespace fastrnn
