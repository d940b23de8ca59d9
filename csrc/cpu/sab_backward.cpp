// fastrnn::sab_backward on CPU: the gradient of a SAB-LSTM layer (SPEC section 2), one reverse sweep.
//
// Per step t and batch row, with dh = dL/dh_t:
//   dh = dy_t + (recurrent gradient from step t+1, under the schedule: lstm_step_backward)
//        [+ dM_j if t wrote slot j, final slots]
//   h_t = ĥ_t + s_t, s_t = Σ w_j m_j  ->  dw_j = dh · m_j,  dM_j += w_j dh   (selected slots only)
//   weights backward -> dL/da for the selected slots and the threshold slot (sparse_attention.h)
//   mlp:    q_t = att_wh @ ĥ_t (one GEMM over the batch) and u_j = tanh(q_t + P_j) recomputed for
//           those <= k_top + 1 slots; dq_t, dP_j, dv
//   linear: dM_j += da_j att_wm, d att_wm += da_j m_j; the query term gets Σ da_j (zero up to rounding)
//   dĥ_t = dh + att_wh^T dq_t (one GEMM over the batch) [+ dM_j, provisional slots]
//   lstm_step_backward (lstm_step.h, as in the LSTM op): cell backward -> dgates_t, and the recurrent
//   gradient into step t-1 = scale[t] * dgates_t @ w_hh (one GEMM; nothing where cut[t]; a [T, B] schedule
//   per row, lstm_step.h rows_into_previous_step).
// dM [B, S, H] (d_slots) and dP [B, S, A] (d_slot_keys, mlp) collect each slot's gradient until the sweep
// reaches the step that wrote it; dP_j joins dM_j through att_wm (one GEMM) right before that. Rows are
// independent until the weight gradients, so each thread sweeps one block of rows (see sweep).
// Streaming (docs/SPEC.md section 8): the dM of the slots this call wrote start from grad_new_slots, the
// gradient later calls sent them; the slots carried in are written by no step here, so after the sweep
// their dM (with dP @ att_wm) is dmemory, or for a fresh call (slot 0 = h0) joins dh0.
// Per-row resets (docs/SPEC.md section 9; sab_rows.h RowSlots): slots per row as in the forward, and at a
// row's reset step nothing flows into step t-1 along h and c (cell_step_backward_reset).
// fastrnn::sab_mixed_backward: the gradient of sab_mixed_forward, its LSTM part in bfloat16 mixed precision
// (docs/SPEC.md section 10): the recurrent product dG W_hh and the chunk folds (dW_ih, dW_hh, dx) are
// bf16_lstm.h's MixedLstmBackwardThread; the attention part is this file's float32 code, unchanged.
//
// Weight gradients, in chunks of C steps: dx = dG W_ih, dW_ih = dG^T x, dW_hh = Σ_t dG_t^T h_{t-1},
// db = column sums of dG, and (mlp) d att_wh = dQ^T ĥ. Keeping dG [T, B, 4H] and dQ [T, B, A] for the whole
// sequence to form them with a few large GEMMs after the sweep cost 655 MB (dG alone) at T = 10000,
// B = 32, H = 128, 40 % of the backward's memory, whose fresh pages were faulted in and zeroed on every
// call, so the time per step grew with T. Instead each thread keeps its rows' dG and dQ for C steps only
// (a chunk, step-major), and when the sweep has filled it folds it into its block's own accumulators and
// writes the block's dx rows, with single-threaded GEMMs while the chunk is still in cache (flush_chunk, on
// lstm_step.h's fold_lstm_chunk; chunk_steps says how long a chunk is). dP [B, S, A] is per slot, not per
// step, and stays whole. The accumulators are summed in block order after the sweep, so reruns at the
// same thread count are bit-identical.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>

#include "backward_chunks.h"
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
struct BackwardArgs : SabLayer<T> {
  LstmLayer<T> L;      // h = y (the state fed back), h_cell = hhat (ĥ_t)
  LstmSweep<T> sweep;  // dh: dL/dh_t of every row, carried; dc, dh0; the schedule
  int64_t C;           // steps per chunk
  // work buffers
  T* query;        // [B, A]: q_t = att_wh ĥ_t, recomputed (mlp)
  T* d_slots;      // [B, S, H]: dL/dm_j
  T* d_slot_keys;  // [B, S, A]: dL/dP_j (mlp)
  // Per-row accumulators of the attention parameters' gradients (summed over rows at the end, so the
  // parallel loop never shares a write): d att_v [B, A] (mlp) or d att_b [B, 1] (linear); linear only:
  // d att_wm [B, H], d att_wh [B, H] (the mlp scorer's come from d_slot_keys and the chunks' dQ).
  T *row_datt_vb, *row_datt_wm, *row_datt_wh;
  T* dw_da;  // [B, 2 * k_top] per-row scratch: dL/dw and dL/da of the selected slots
  T* dx;     // output [T, B, I]
};

// One block's chunk (rows step-major: row (t - t0) * R + b - b0) and weight-gradient accumulators.
template <typename T>
struct BlockBuffers {
  T *dG, *dQ;                       // [C * R, 4H], [C * R, A]
  T *dw_ih, *dw_hh, *db, *datt_wh;  // [4H, I], [4H, H], [4H], [A, H]
};

// Gradient of the score of slot j of row b at step t, da -> the score's inputs.
template <typename T>
void score_backward(const BackwardArgs<T>& a, int64_t b, int64_t j, T da, T* dq, T& sum_da) {
  if (a.mlp) {
    const int64_t A = a.A;
    mlp_score_backward(a.query + b * A, a.slot_keys + (b * a.S + j) * A, a.att_vb, da, a.row_datt_vb + b * A, dq,
                       a.d_slot_keys + (b * a.S + j) * A, A);
  } else {
    axpy(a.row_datt_wm + b * a.H, da, a.slot(j, b), a.H);
    axpy(a.d_slots + (b * a.S + j) * a.H, da, a.att_wm, a.H);
    sum_da += da;
  }
}

// Step t for row b, before the cell: dh (dL/dh_t from the output and step t+1) gets the slot's gradient
// (final slots), then the summary and the attention backward; dq: the row's dL/dq_t (mlp). Leaves
// dh = dL/dĥ_t but for the mlp query's part (one GEMM over the block) and provisional slots.
template <typename T>
void attention_backward_row(const BackwardArgs<T>& a, int64_t t, int64_t b, int64_t j_written, T* dq) {
  const int64_t H = a.H, k_top = a.k_top;
  T* dh = a.sweep.dh + b * H;
  if (j_written >= 0 && !a.provisional) add(dh, dh, a.d_slots + (b * a.S + j_written) * H, H);

  const int64_t* idx = a.idx + (t * a.B + b) * k_top;
  const T* w = a.w + (t * a.B + b) * k_top;
  T* dw = a.dw_da + b * 2 * k_top;
  T* da = dw + k_top;
  const int count = sparse::selected_count(idx, k_top);
  for (int p = 0; p < count; ++p) {  // s_t = Σ w_j m_j; dh is also dL/ds_t
    const T* m = a.slot(idx[p], b);
    dw[p] = dot(dh, m, H);
    axpy(a.d_slots + (b * a.S + idx[p]) * H, w[p], dh, H);
  }
  const T dtau = sparse::weights_backward(w, dw, count, a.denom[t * a.B + b], da);
  const int64_t thr = a.thr[t * a.B + b];
  const bool thr_selected = sparse::add_threshold_grad(idx, count, thr, dtau, da);
  for (int64_t i = 0; i < a.A; ++i) dq[i] = T(0);
  T sum_da = T(0);
  for (int p = 0; p < count; ++p) score_backward(a, b, idx[p], da[p], dq, sum_da);
  if (!thr_selected) score_backward(a, b, thr, dtau, dq, sum_da);
  if (!a.mlp) {  // the query term att_wh · ĥ_t + att_b, shared by all slots
    axpy(a.row_datt_wh + b * H, sum_da, a.hhat + (t * a.B + b) * H, H);
    a.row_datt_vb[b] += sum_da;
    axpy(dh, sum_da, a.att_wh, H);
  }
}

// The chunk of steps [t0, t0 + n) of rows [b0, b0 + R) is complete: the LSTM weight gradients and dx rows
// as in the LSTM backward (thread.fold), and for the mlp scorer d att_wh += dQ_t^T ĥ_t.
template <typename T, class Thread>
void flush_chunk(const BackwardArgs<T>& a, const BlockBuffers<T>& k, int64_t t0, int64_t n, int64_t b0,
                 int64_t R, Thread& thread) {
  thread.fold(a.L, k.dG, t0, n, b0, R, a.dx, k.dw_ih, k.dw_hh, k.db);
  if (!a.mlp) return;
  for (int64_t i = 0; i < n; ++i) {
    const T* hhat = a.hhat + ((t0 + i) * a.B + b0) * a.H;
    gemm<T>(true, false, a.A, a.H, R, T(1), k.dQ + i * R * a.A, a.A, hhat, a.H, T(1), k.datt_wh, a.H);
  }
}

// lstm_step_backward for a step where some rows of the block are reset (docs/CONTRACT.md "Per-row resets"):
// their c_{t-1} reads as zero (put aside around the step; c here is the backward's own copy), and nothing
// flows into step t-1 (or h0, c0) along h and c: dL/dh_{t-1} is its output gradient alone, dL/dc_{t-1} zero.
// h_{t-1} is zero in the weight gradient through the op's zeroed copy of y (the LstmLayer's h).
template <typename T, class Product>
void cell_step_backward_reset(const BackwardArgs<T>& a, int64_t t, int64_t b0, int64_t R, T* dG,
                              ResetRows<T>& put_aside, Product& recurrent) {
  const int64_t B = a.B, H = a.H;
  if (t > 0) put_aside.zero(*a.rows, t, b0, R, nullptr, a.L.c + (t - 1) * B * H, H);
  lstm_step_backward(a.L, a.sweep, t, b0, R, dG, recurrent);
  if (t > 0) put_aside.restore(nullptr, a.L.c + (t - 1) * B * H, H);
  for (int64_t b = b0; b < b0 + R; ++b) {
    if (!a.rows->reset[t * B + b]) continue;
    if (t > 0) {
      std::copy_n(a.sweep.dy + ((t - 1) * B + b) * H, H, a.sweep.dh + b * H);
    } else {
      std::fill_n(a.sweep.dh0 + b * H, H, T(0));
    }
    std::fill_n(a.sweep.dc + b * H, H, T(0));
  }
}

// The reverse sweep for rows [b0, b0 + R): rows never interact before the weight gradients, so each
// thread sweeps its own block without synchronisation. thread: the LSTM part's recurrent product and chunk
// fold (lstm_step.h's LstmBackwardThread, or bf16_lstm.h's MixedLstmBackwardThread).
template <typename T, class Thread>
void sweep(const BackwardArgs<T>& a, const BlockBuffers<T>& k, int64_t b0, int64_t R, Thread& thread) {
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S, G = 4 * H;
  ResetRows<T> put_aside(a.rows ? R : 0, H);
  start_reverse_sweep(a.L, a.sweep, b0, R);
  for (int64_t t = a.steps - 1; t >= 0; --t) {
    const int64_t t0 = t / a.C * a.C;  // first step of t's chunk
    T* dG = k.dG + (t - t0) * R * G;   // this step's rows in the chunk
    T* dQ = k.dQ + (t - t0) * R * A;
    const int64_t j_written = a.grid.written(t);
    if (a.rows) {  // per row: the slot each row wrote (RowSlots)
      if (a.mlp)
        for (int64_t b = b0; b < b0 + R; ++b) {
          const int64_t j = a.written(t, b);
          if (j >= 0)
            gemm<T>(false, false, 1, H, A, T(1), a.d_slot_keys + (b * S + j) * A, A, a.att_wm, H, T(1),
                    a.d_slots + (b * S + j) * H, H);
        }
    } else if (a.mlp && j_written >= 0) {  // every step reading slot j is done: dM_j += dP_j @ att_wm
      gemm<T>(false, false, R, H, A, T(1), a.d_slot_keys + b0 * S * A + j_written * A, S * A, a.att_wm, H, T(1),
              a.d_slots + b0 * S * H + j_written * H, S * H);
    }
    if (a.mlp)  // the query q_t = att_wh @ ĥ_t, as in the forward
      gemm<T>(false, true, R, A, H, T(1), a.hhat + (t * B + b0) * H, H, a.att_wh, H, T(0), a.query + b0 * A, A);
    for (int64_t b = b0; b < b0 + R; ++b)
      attention_backward_row(a, t, b, a.rows ? a.written(t, b) : j_written, dQ + (b - b0) * A);
    if (a.mlp) gemm<T>(false, false, R, H, A, T(1), dQ, A, a.att_wh, H, T(1), a.sweep.dh + b0 * H, H);
    if (a.provisional)  // the slot holds ĥ_t
      for (int64_t b = b0; b < b0 + R; ++b) {
        const int64_t j = a.rows ? a.written(t, b) : j_written;
        if (j >= 0) add(a.sweep.dh + b * H, a.sweep.dh + b * H, a.d_slots + (b * S + j) * H, H);
      }
    if (a.rows && a.rows->any_reset(t, b0, R)) {
      cell_step_backward_reset(a, t, b0, R, dG, put_aside, thread.recurrent);
    } else {
      lstm_step_backward(a.L, a.sweep, t, b0, R, dG, thread.recurrent);  // dh is dL/dĥ_t now
    }
    if (t == t0) flush_chunk(a, k, t0, std::min(a.steps, t0 + a.C) - t0, b0, R, thread);
  }
}

// After the sweep, the gradient of the S0 carried slots, which no step of this call wrote: dM_j, plus
// dP_j @ att_wm (mlp; one GEMM over all of them). Returns it as dmemory [B, S0, H]; for a fresh call
// (no memory) slot 0 is h0, so it joins dh0 (where step 0 left the recurrent gradient) and dmemory is [0].
at::Tensor carried_slot_grads(const at::Tensor& d_slots, const at::Tensor& d_slot_keys, const at::Tensor& att_wm,
                              bool mlp, int64_t S0, bool has_memory, at::Tensor& dh0) {
  at::Tensor dm = d_slots.narrow(1, 0, S0);
  if (mlp) dm.add_(at::matmul(d_slot_keys.narrow(1, 0, S0), att_wm));
  if (has_memory) return dm.contiguous();
  dh0.add_(dm.select(1, 0));
  return at::empty({0}, d_slots.options());
}

// After the sweep, the scorer's weight gradients: datt_wh (mlp: the blocks' dQ^T ĥ sums; linear: the rows'
// sums) and datt_wm (mlp: Σ_j dP_j^T m_j; linear: the rows' sums). Float32 in the mixed ops too.
template <typename T>
void attention_weight_grads(const BackwardArgs<T>& a, const at::Tensor& acc_att_wh, const at::Tensor& row_datt_wm,
                            const at::Tensor& row_datt_wh, at::Tensor& datt_wh, at::Tensor& datt_wm) {
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S;
  if (a.mlp) {
    datt_wh = sum_blocks(acc_att_wh);
    // d att_wm = Σ_j dP_j^T m_j as one GEMM over all (row, slot) pairs: the slot values are gathered
    // into M [B, S, H], the layout of dP [B, S, A]. One GEMM per slot (K = B) was S small GEMMs, each
    // starting BLAS's thread team; on a loaded machine that cost seconds at T = 1000.
    at::Tensor M = at::empty({B, S, H}, datt_wm.options());
    T* m_all = M.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < S; ++j) std::copy_n(a.slot(j, b), H, m_all + (b * S + j) * H);
    gemm<T>(true, false, A, H, B * S, T(1), a.d_slot_keys, A, m_all, H, T(0), datt_wm.data_ptr<T>(), H);
  } else {
    datt_wm = row_datt_wm.sum(0);
    datt_wh = row_datt_wh.sum(0);
  }
}

// dx, dw_ih, dw_hh, db (the gradient of b_ih and of b_hh; [0] without bias), datt_wh, datt_wm, datt_vb,
// dh0, dc0, dmemory ([0] without memory).
using SabBackwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Both ops, one parameter list for both schemas: sab_backward (no Gemm) and sab_mixed_backward (Gemm = std::string,
// gemm_name last). gemm (nullptr: float32/float64 throughout) names the bfloat16 kernel of the mixed op (float32
// tensors only): its LSTM part's GEMMs take their operands rounded (bf16_lstm.h).
template <class... Gemm>
SabBackwardOut backward_op(const at::Tensor& grad_y, const at::Tensor& grad_hn,
                        const at::Tensor& grad_cn, const std::optional<at::Tensor>& grad_new_slots,
                        const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& att_wh,
                        const at::Tensor& att_wm, const at::Tensor& att_vb, const at::Tensor& h0, const at::Tensor& c0,
                        const at::Tensor& cut, const at::Tensor& scale, const std::optional<at::Tensor>& lengths,
                        const std::optional<at::Tensor>& memory, int64_t step0,
                        const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& slot_offset,
                        const std::optional<at::Tensor>& row_step0, const at::Tensor& y, const at::Tensor& gates,
                        const at::Tensor& c, const at::Tensor& hhat, const at::Tensor& idx, const at::Tensor& w,
                        const at::Tensor& thr, const at::Tensor& denom, const at::Tensor& slot_keys, int64_t k_top,
                        int64_t k_att, c10::string_view scorer, bool provisional, bool has_bias,
                        const Gemm&... gemm_name) {
  const std::string* gemm = kernel_name(gemm_name...);
  const char* op = gemm ? "fastrnn::sab_mixed_backward" : "fastrnn::sab_backward";
  ArgChecker ck = layer_checker(op, gemm);
  const SabCall call = check_sab_call(ck, x, w_ih, w_hh, h0, c0, cut, scale, att_wh, att_wm, att_vb, lengths, memory,
                                      step0, reset, slot_offset, row_step0, k_top, k_att, scorer);
  const auto& [d, sd, grid, rows, S] = call;
  const at::Tensor& carried = memory.has_value() ? *memory : h0;
  const int64_t steps = d.T, B = d.B, I = d.I, H = d.H, A = sd.A, S0 = grid.S0, G = 4 * H;
  const bool mlp = sd.mlp;
  if (grad_new_slots.has_value()) {
    TORCH_CHECK(!lengths.has_value(), ck.op(),
                ": lengths cannot be combined with grad_new_slots (slots written past a row's length would be "
                "carried into the next call)");
    ck.tensor(*grad_new_slots, "grad_new_slots", {B, S - S0, H});
  }
  ck.tensor(grad_y, "grad_y", {steps, B, H});
  ck.tensor(grad_hn, "grad_hn", {B, H});
  ck.tensor(grad_cn, "grad_cn", {B, H});
  ck.tensor(y, "y", {steps, B, H});
  ck.tensor(gates, "gates", {steps, B, G});
  ck.tensor(c, "c", {steps, B, H});
  ck.tensor(hhat, "hhat", {steps, B, H});
  ck.tensor(idx, "idx", at::kLong, {steps, B, k_top});
  ck.tensor(w, "w", {steps, B, k_top});
  ck.tensor(thr, "thr", at::kLong, {steps, B});
  ck.tensor(denom, "denom", {steps, B});
  if (mlp) {
    ck.tensor(slot_keys, "slot_keys", {B, S, A});
  } else {
    ck.tensor(slot_keys, "slot_keys", {B, S});
  }
  const int64_t* len = lengths_data(lengths);
  const std::optional<Bf16Kernel> kernel = gemm ? std::optional(bf16_kernel(*gemm, op)) : std::nullopt;

  const auto opt = x.options();
  // Block k sweeps rows [k R, min(B, (k + 1) R)): one block per thread (for_each_row_block).
  const int64_t R = rows_per_thread(B), nblocks = (B + R - 1) / R;
  const int64_t C = chunk_steps(
      steps, R * ((G + A) * x.element_size() + (kernel ? MixedLstmBackward::extra_chunk_bytes(G) : 0)));
  at::Tensor dG = at::empty({nblocks, C * R, G}, opt), dQ = at::empty({nblocks, C * R, A}, opt);
  at::Tensor acc_ih = at::zeros({nblocks, G, I}, opt), acc_hh = at::zeros({nblocks, G, H}, opt);
  at::Tensor acc_b = at::zeros({nblocks, G}, opt), acc_att_wh = at::zeros({nblocks, A, H}, opt);
  at::Tensor query = at::empty({B, A}, opt);
  at::Tensor d_slots = empty_huge({B, S, H}, opt).zero_();
  if (grad_new_slots.has_value()) d_slots.narrow(1, S0, S - S0).copy_(*grad_new_slots);
  at::Tensor d_slot_keys = at::zeros({mlp ? B : 0, S, A}, opt);
  at::Tensor dh = at::empty({B, H}, opt), dc0 = at::empty({B, H}, opt), dh0 = at::empty({B, H}, opt);
  at::Tensor row_datt_vb = at::zeros({B, mlp ? A : 1}, opt);
  at::Tensor row_datt_wm = at::zeros({mlp ? 0 : B, H}, opt);
  at::Tensor row_datt_wh = at::zeros({mlp ? 0 : B, H}, opt);
  at::Tensor dx = empty_huge({steps, B, I}, opt);
  at::Tensor datt_wh, datt_wm = at::empty_like(att_wm);
  at::Tensor dw_da = at::empty({B, 2 * k_top}, opt);
  // With lengths: grad_y masked past each row's length, grad_hn folded into its last step (cpu/lengths.h).
  const at::Tensor gy = len ? fold_output_grads(grad_y, grad_hn, len) : grad_y;
  // With resets (docs/CONTRACT.md "Per-row resets"): h_{t-1}, c_{t-1} of a row reset at step t are zeros. The
  // LSTM part reads h_{t-1} from its own copy of y with those rows zeroed (the weight gradient), c_{t-1} from
  // a copy of c (rows put aside around the step: cell_step_backward_reset), h0, c0 with the rows reset at
  // step 0 zeroed. The slots still read y itself.
  at::Tensor y_cell = y, c_cell = c;
  const at::Tensor zeros = at::zeros({rows ? H : 0}, opt);
  const at::Tensor h0_cell = zero_reset_rows(h0, reset), c0_cell = zero_reset_rows(c0, reset);
  if (rows && reset.has_value()) {
    y_cell = y.clone();
    c_cell = c.clone();
    if (steps > 1) {
      const at::Tensor later = reset->narrow(0, 1, steps - 1).unsqueeze(2);     // reset at t -> row t-1
      y_cell.narrow(0, 0, steps - 1).masked_fill_(later, 0);
    }
  }

  // The arguments of the sweep, with the LstmLayer reading x, W_ih, h0 and h_{t-1} from the given tensors
  // (the emulated mixed kernel's fold reads rounded copies; the slots always read y itself).
  const auto args = [&](auto zero, const at::Tensor& x_l, const at::Tensor& w_ih_l, const at::Tensor& h0_l,
                        const at::Tensor& y_l) {
    using T = decltype(zero);
    return BackwardArgs<T>{{sab_layer<T>(att_wh, att_wm, att_vb, carried, grid, y, hhat, slot_keys, idx, w, thr,
                                         denom, mlp, provisional, rows ? &*rows : nullptr, &zeros)},
                           lstm_layer<T>(x_l, w_ih_l, w_hh, h0_l, c0_cell, /*h=*/y_l, gates, c_cell, /*h_cell=*/hhat),
                           lstm_sweep<T>(gy, grad_hn, grad_cn, len, cut, scale, dh, dc0, dh0), C,
                           query.data_ptr<T>(), d_slots.data_ptr<T>(), mlp ? d_slot_keys.data_ptr<T>() : nullptr,
                           row_datt_vb.data_ptr<T>(), mlp ? nullptr : row_datt_wm.data_ptr<T>(),
                           mlp ? nullptr : row_datt_wh.data_ptr<T>(), dw_da.data_ptr<T>(), dx.data_ptr<T>()};
  };
  // Block k's sweep with its thread's LSTM part.
  const auto sweep_block = [&](const auto& a, int64_t k, int64_t b0, int64_t nb, auto& thread) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(a.L.x)>>;
    const BlockBuffers<T> buf{dG.data_ptr<T>() + k * C * R * G, dQ.data_ptr<T>() + k * C * R * A,
                              acc_ih.data_ptr<T>() + k * G * I, acc_hh.data_ptr<T>() + k * G * H,
                              acc_b.data_ptr<T>() + k * G, acc_att_wh.data_ptr<T>() + k * A * H};
    sweep(a, buf, b0, nb, thread);
  };

  if (kernel) {
    const MixedLstmBackward mixed(*kernel, w_ih, w_hh, nblocks, C * R);
    // named: the LstmLayer keeps their pointers
    const at::Tensor x_l = mixed.operand(x), w_ih_l = mixed.operand(w_ih), h0_l = mixed.operand(h0_cell),
                     y_l = mixed.operand(y_cell);
    const BackwardArgs<float> a = args(0.0f, x_l, w_ih_l, h0_l, y_l);
    for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
      MixedLstmBackwardThread thread = mixed.thread(k);
      sweep_block(a, k, b0, nb, thread);
    });
    attention_weight_grads(a, acc_att_wh, row_datt_wm, row_datt_wh, datt_wh, datt_wm);
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::sab_backward", [&] {
      const BackwardArgs<scalar_t> a = args(scalar_t(0), x, w_ih, h0_cell, y_cell);
      for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
        LstmBackwardThread<scalar_t> thread{{a.L.w_hh, H}};
        sweep_block(a, k, b0, nb, thread);
      });
      attention_weight_grads(a, acc_att_wh, row_datt_wm, row_datt_wh, datt_wh, datt_wm);
    });
  }
  const at::Tensor dmemory = carried_slot_grads(d_slots, d_slot_keys, att_wm, mlp, S0, memory.has_value(), dh0);
  const at::Tensor datt_vb = row_datt_vb.sum(0);
  if (len) add_zero_length_grads(len, grad_hn, grad_cn, dh0, dc0);
  at::Tensor db = has_bias ? sum_blocks(acc_b) : at::empty({0}, opt);
  return {dx, sum_blocks(acc_ih), sum_blocks(acc_hh), db, datt_wh, datt_wm, datt_vb, dh0, dc0, dmemory};
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("sab_backward", &fastrnn::cpu::backward_op<>);
  m.impl("sab_mixed_backward", &fastrnn::cpu::backward_op<std::string>);
}
