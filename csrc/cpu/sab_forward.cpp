// fastrnn::sab_forward on CPU: a SAB-LSTM layer (SPEC section 1), the whole time loop of one layer.
//
// Batch rows never interact in the forward pass, so the time loop runs once per block of rows, one
// block per thread, with no synchronisation between steps (for_each_row_block). The LSTM part is
// lstm_step.h's, as in the LSTM op: the input projections of the whole sequence are one GEMM up front,
// then per step and block lstm_step_forward (one recurrent GEMM, the cell pointwise math) writes ĥ_t;
// then per row the scores over the memory, the top-(k_top+1) threshold, the sparse weights and the
// summary y_t = ĥ_t + s_t, the state fed back.
//   mlp:    the query q_t = att_wh @ ĥ_t is one GEMM over the block (not kept: the backward recomputes
//           it); a_j = v · tanh(q_t + P_j) with the slot keys P_j = att_wm @ m_j computed once, when
//           slot j is written (one GEMM), or at the start of the call for the slots carried in.
//   linear: the slot part att_wm · m_j of the score never changes, so each row keeps its
//           top-(k_top+1) slots incrementally: O(k_top) per step instead of O(|M|).
// Streaming (docs/SPEC.md section 8): the memory starts as the slots carried in (sab_rows.h, SlotGrid), and
// each slot written is also copied to new_slots, the memory the next call carries on.
// Per-row resets (docs/SPEC.md section 9; sab_rows.h RowSlots): each row scores its own window of its own
// slot table, writes on its own counter, and a row reset at step t reads h_{t-1}, c_{t-1} as zeros
// (cell_step). Without reset / slot_offset / row_step0 the tables are absent and nothing else changes.
// fastrnn::sab_mixed_forward: the same layer with its LSTM part in bfloat16 mixed precision (docs/SPEC.md
// section 10; bf16_lstm.h's MixedLstmCell runs the input projection per step and the recurrent product on
// the bfloat16 kernel); the attention part is this file's float32 code, unchanged.
// Nothing is allocated inside the loop; what the backward needs is O(T·B·H) plus
// O(T·B·k_top) indices and weights; never O(T·|M|) scores.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "bf16_lstm.h"
#include "fastrnn/sparse_attention.h"
#include "huge_pages.h"
#include "lengths.h"
#include "lstm_step.h"
#include "sab_call.h"
#include "sab_rows.h"

namespace fastrnn {
namespace cpu {
namespace {

template <typename T>
struct ForwardArgs : SabLayer<T> {
  LstmLayer<T> L;  // h = y (the state fed back), h_cell = hhat (ĥ_t)
  T* query;        // [B, A]: the current step's query q_t = att_wh ĥ_t per row (mlp)
  T* new_slots;    // [B, S - S0, H]: the slots written by this call
};

// SPEC step 8 for row b: slot j (>= S0), just written, into new_slots.
template <typename T>
void copy_new_slot(const ForwardArgs<T>& a, int64_t j, int64_t b) {
  const int64_t S1 = a.S - a.grid.S0;
  std::copy_n(a.slot(j, b), a.H, a.new_slots + (b * S1 + j - a.grid.S0) * a.H);
}

// Row b of step t, once its scores are ranked (`list`, over the n_mem slots written so far): the threshold,
// the sparse weights into the attention record (SPEC steps 5-6), then the summary and the final state
// y = ĥ + Σ_p w_p m_{idx_p} (the sum first, as SPEC step 7).
template <typename T>
void attend_row(const ForwardArgs<T>& a, int64_t t, int64_t b, const sparse::TopList<T>& list, int64_t n_mem) {
  const int64_t r = t * a.B + b;
  int64_t* idx = a.idx + r * a.k_top;
  T* w = a.w + r * a.k_top;
  const auto sel = sparse::select_and_weigh(list, n_mem, int(a.k_top), idx, w);
  a.thr[r] = sel.thr_slot;
  a.denom[r] = sel.denom;
  T* y = a.y + r * a.H;
  for (int64_t h = 0; h < a.H; ++h) y[h] = T(0);
  for (int p = 0; p < sel.count; ++p) axpy(y, w[p], a.slot(idx[p], b), a.H);
  add(y, y, a.hhat + r * a.H, a.H);
}

// Scratch of one row's ranking: [B, k_top + 1] scores and slots.
template <typename T>
struct Rankings {
  std::vector<T> score;
  std::vector<int64_t> slot;
  std::vector<int> n;
  int cap;
  Rankings(int64_t B, int64_t k_top)
      : score(B * (k_top + 1)), slot(B * (k_top + 1)), n(B, 0), cap(int(k_top + 1)) {}
  sparse::TopList<T> row(int64_t b) { return {score.data() + b * cap, slot.data() + b * cap, n[b], cap}; }
};

// Step t of rows [b0, b0 + nb), the LSTM part; with resets, h_{t-1} and c_{t-1} of the rows reset at t read
// as zeros (step 0: the op passes h0, c0 with those rows zeroed), and each such row gets its fresh slot (zeros,
// key 0) and its window restarts there (RowSlots). cell(t, b0, nb): the LSTM step (lstm_step.h's LstmCell,
// or bf16_lstm.h's MixedLstmCell).
template <typename T, class Cell>
void cell_step(const ForwardArgs<T>& a, int64_t t, int64_t b0, int64_t nb, ResetRows<T>* put_aside, Cell& cell) {
  if (!a.rows || !a.rows->any_reset(t, b0, nb)) {
    cell(t, b0, nb);
    return;
  }
  const int64_t H = a.H, K = a.mlp ? a.A : 1;
  if (t > 0) put_aside->zero(*a.rows, t, b0, nb, a.y + (t - 1) * a.B * H, a.L.c + (t - 1) * a.B * H, H);
  cell(t, b0, nb);
  if (t > 0) put_aside->restore(a.y + (t - 1) * a.B * H, a.L.c + (t - 1) * a.B * H, H);
  for (int64_t b = b0; b < b0 + nb; ++b) {
    if (!a.rows->reset[t * a.B + b]) continue;
    const int64_t j = a.rows->lo[t * a.B + b];  // the fresh slot; new_slots holds zeros there already
    std::fill_n(a.slot_keys + (b * a.S + j) * K, K, T(0));
  }
}

template <typename T, class Cell>
void forward_mlp(const ForwardArgs<T>& a, int64_t b0, int64_t nb, Rankings<T>& rank, Cell& cell) {
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S;
  T* keys = a.slot_keys + b0 * S * A;  // the block's [nb, S, A]; the carried slots' keys are there
  ResetRows<T> put_aside(a.rows ? nb : 0, H);
  std::vector<T> new_keys(a.rows ? nb * A : 0);
  for (int64_t t = 0; t < a.steps; ++t) {
    cell_step(a, t, b0, nb, &put_aside, cell);
    gemm<T>(false, true, nb, A, H, T(1), a.hhat + (t * B + b0) * H, H, a.att_wh, H, T(0), a.query + b0 * A, A);
    const int64_t n_grid = a.grid.n_mem(t);  // every row's, without per-row tables
    for (int64_t b = b0; b < b0 + nb; ++b) {
      sparse::TopList<T> list = rank.row(b);
      list.clear();
      const T* query = a.query + b * A;
      const T* row_keys = a.slot_keys + b * S * A;
      const int64_t first = a.rows ? a.first_slot(t, b) : 0, n_mem = a.rows ? a.n_slots(t, b) : n_grid;
      mlp_scores(query, row_keys + first * A, a.att_vb, A, n_mem - first,
                 [&](int64_t j, T score) { list.push(score, first + j); });
      attend_row(a, t, b, list, n_mem - first);
    }
    const T* m = (a.provisional ? a.hhat : a.y) + (t * B + b0) * H;
    if (a.rows) {  // per row: the block's keys into scratch, then each writing row's into its own slot
      bool any = false;
      for (int64_t b = b0; b < b0 + nb && !any; ++b) any = a.written(t, b) >= 0;
      if (!any) continue;
      gemm<T>(false, true, nb, A, H, T(1), m, H, a.att_wm, H, T(0), new_keys.data(), A);
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const int64_t j = a.written(t, b);
        if (j < 0) continue;
        std::copy_n(new_keys.data() + (b - b0) * A, A, a.slot_keys + (b * S + j) * A);
        copy_new_slot(a, j, b);
      }
      continue;
    }
    const int64_t j = a.grid.written(t);
    if (j >= 0) {  // SPEC step 8: the new slot's key, once
      gemm<T>(false, true, nb, A, H, T(1), m, H, a.att_wm, H, T(0), keys + j * A, S * A);
      for (int64_t b = b0; b < b0 + nb; ++b) copy_new_slot(a, j, b);
    }
  }
}

template <typename T, class Cell>
void forward_linear(const ForwardArgs<T>& a, int64_t b0, int64_t nb, Rankings<T>& keep, Rankings<T>& step,
                    Cell& cell) {
  const int64_t B = a.B, H = a.H, S = a.S;
  // Per row: `keep`, the running top-(k_top+1) of the slot keys att_wm · m_j, and `step`, the same
  // ranking with the full scores a_j = att_wm · m_j + att_wh · ĥ_t + att_b of the current step.
  const T att_b = a.att_vb[0];
  auto rank_slot = [&](int64_t b, int64_t j) {
    sparse::TopList<T> list = keep.row(b);
    list.push(a.slot_keys[b * S + j], j);
    keep.n[b] = list.n;
  };
  auto write_slot = [&](int64_t b, int64_t j) {
    a.slot_keys[b * S + j] = dot(a.att_wm, a.slot(j, b), H);
    rank_slot(b, j);
    copy_new_slot(a, j, b);
  };
  for (int64_t b = b0; b < b0 + nb; ++b)  // the carried slots, whose keys are there (per row: from its offset)
    for (int64_t j = a.rows ? a.rows->offset[b] : 0; j < a.grid.S0; ++j) rank_slot(b, j);
  ResetRows<T> put_aside(a.rows ? nb : 0, H);
  for (int64_t t = 0; t < a.steps; ++t) {
    cell_step(a, t, b0, nb, &put_aside, cell);
    const int64_t n_grid = a.grid.n_mem(t), j_grid = a.grid.written(t);  // every row's, without per-row tables
    for (int64_t b = b0; b < b0 + nb; ++b) {
      const int64_t first = a.rows ? a.first_slot(t, b) : 0;
      const int64_t n_mem = (a.rows ? a.n_slots(t, b) : n_grid) - first, j = a.rows ? a.written(t, b) : j_grid;
      if (a.rows && a.rows->reset[t * B + b]) {  // the row's memory restarts at its fresh slot (key 0)
        keep.n[b] = 0;
        rank_slot(b, first);
      }
      const T query = dot(a.att_wh, a.hhat + (t * B + b) * H, H);
      // The ranking by the slot key is the ranking by the full score, the query term being shared
      // (up to rounding of the sum: two slot keys closer than an ulp of the score could swap).
      sparse::TopList<T> kept = keep.row(b), ranked = step.row(b);
      ranked.n = kept.n;
      for (int r = 0; r < kept.n; ++r) {
        ranked.score[r] = linear_score(kept.score[r], query, att_b);
        ranked.slot[r] = kept.slot[r];
      }
      attend_row(a, t, b, ranked, n_mem);
      if (j >= 0) write_slot(b, j);
    }
  }
}

// Every block of rows through the time loop; make_cell() gives each thread its LSTM step.
template <typename T, class MakeCell>
void run_blocks(const ForwardArgs<T>& a, int64_t k_top, const MakeCell& make_cell) {
  Rankings<T> rank(a.B, k_top), step(a.B, k_top);
  for_each_row_block(a.B, [&](int64_t, int64_t b0, int64_t nb) {
    auto cell = make_cell();
    if (a.mlp) {
      forward_mlp(a, b0, nb, rank, cell);
    } else {
      forward_linear(a, b0, nb, rank, step, cell);
    }
  });
}

// y, h_n, c_n, then what the backward needs: gates (activated) [T,B,4H], c [T,B,H], hhat [T,B,H],
// idx [T,B,k_top] int64, w [T,B,k_top], thr [T,B] int64 (slot receiving dL/dtau), denom [T,B],
// slot_keys (mlp [B,S,A], linear [B,S]); last new_slots [B,S1,H], the slots this call wrote.
using SabForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                 at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Both ops, one parameter list for both schemas: sab_forward (no Gemm) and sab_mixed_forward (Gemm = std::string,
// gemm_name last). gemm (nullptr: float32/float64 throughout) names the bfloat16 kernel of the mixed op (float32
// tensors only), whose LSTM part rounds the operands of its GEMMs (x, h_{t-1} = y_{t-1}, the weights).
template <class... Gemm>
SabForwardOut forward_op(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                      const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_vb,
                      const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut, const at::Tensor& scale,
                      const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& memory,
                      int64_t step0, const std::optional<at::Tensor>& reset,
                      const std::optional<at::Tensor>& slot_offset, const std::optional<at::Tensor>& row_step0,
                      int64_t k_top, int64_t k_att, c10::string_view scorer, bool provisional,
                      const Gemm&... gemm_name) {
  const std::string* gemm = kernel_name(gemm_name...);
  const char* op = gemm ? "fastrnn::sab_mixed_forward" : "fastrnn::sab_forward";
  ArgChecker ck = layer_checker(op, gemm);
  const SabCall call = check_sab_call(ck, x, w_ih, w_hh, h0, c0, cut, scale, att_wh, att_wm, att_vb, lengths, memory,
                                      step0, reset, slot_offset, row_step0, k_top, k_att, scorer);
  const auto& [d, sd, grid, rows, S] = call;
  ck.biases(b_ih, b_hh, d);
  const std::optional<Bf16Kernel> kernel = gemm ? std::optional(bf16_kernel(*gemm, op)) : std::nullopt;
  const at::Tensor& carried = memory.has_value() ? *memory : h0;
  const int64_t* len = lengths_data(lengths);
  const int64_t steps = d.T, B = d.B, H = d.H, A = sd.A;
  const bool mlp = sd.mlp;
  const auto opt = x.options();
  const auto lopt = opt.dtype(at::kLong);
  at::Tensor gates = empty_huge({steps, B, 4 * H}, opt);
  at::Tensor c = empty_huge({steps, B, H}, opt);
  at::Tensor hhat = empty_huge({steps, B, H}, opt);
  at::Tensor y = empty_huge({steps, B, H}, opt);
  at::Tensor idx = at::empty({steps, B, k_top}, lopt);
  at::Tensor w = at::empty({steps, B, k_top}, opt);
  at::Tensor thr = at::empty({steps, B}, lopt);
  at::Tensor denom = at::empty({steps, B}, opt);
  at::Tensor query = at::empty({B, A}, opt);  // the current step's query, per row (mlp)
  // per row: the keys of padding slots (a row's table shorter than S) stay zero
  at::Tensor slot_keys = rows ? (mlp ? at::zeros({B, S, A}, opt) : at::zeros({B, S}, opt))
                              : (mlp ? at::empty({B, S, A}, opt) : at::empty({B, S}, opt));
  // per row: zero padding, and a reset's fresh slot is zeros
  at::Tensor new_slots = rows ? at::zeros({B, S - grid.S0, H}, opt) : at::empty({B, S - grid.S0, H}, opt);
  const at::Tensor zeros = at::zeros({rows ? H : 0}, opt);
  // with resets, the rows reset at step 0 start from zeros
  const at::Tensor h0_cell = zero_reset_rows(h0, reset), c0_cell = zero_reset_rows(c0, reset);
  carried_keys(carried, grid.S0, att_wm, mlp, slot_keys);
  const auto args = [&](auto zero) {
    using T = decltype(zero);
    return ForwardArgs<T>{{sab_layer<T>(att_wh, att_wm, att_vb, carried, grid, y, hhat, slot_keys, idx, w, thr,
                                        denom, mlp, provisional, rows ? &*rows : nullptr, &zeros)},
                          lstm_layer<T>(x, w_ih, w_hh, h0_cell, c0_cell, /*h=*/y, gates, c, /*h_cell=*/hhat),
                          mlp ? query.data_ptr<T>() : nullptr, new_slots.data_ptr<T>()};
  };

  if (kernel) {
    const Bf16Weights w_x(*kernel, w_ih), w_rec(*kernel, w_hh);
    const std::optional<at::Tensor> bias = summed_bias(b_ih, b_hh);
    const ForwardArgs<float> a = args(0.0f);
    const float* b = bias ? bias->const_data_ptr<float>() : nullptr;
    run_blocks(a, k_top, [&] { return MixedLstmCell(a.L, w_x, w_rec, b); });
  } else {
    input_projection(x, w_ih, b_ih, b_hh, gates);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::sab_forward", [&] {
      const ForwardArgs<scalar_t> a = args(scalar_t(0));
      run_blocks(a, k_top, [&] { return LstmCell<scalar_t>{a.L}; });
    });
  }
  // Every step of every row was computed; now the outputs stop at each row's length (cpu/lengths.h). The
  // backward reads the masked record: past a row's length nothing is selected and no gradient arrives.
  auto [h_n, c_n] = stop_at_lengths(len, y, c, h0, c0);
  if (len) mask_attention(len, idx, w);
  return {y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, slot_keys, new_slots};
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("sab_forward", &fastrnn::cpu::forward_op<>);
  m.impl("sab_mixed_forward", &fastrnn::cpu::forward_op<std::string>);
}
