// CPU only: the one implementation of the LSTM part of a layer, run by both layer ops (lstm_forward.cpp /
// lstm_backward.cpp and sab_forward.cpp / sab_backward.cpp; the SAB layer is an LSTM whose cell output ĥ_t
// gets the attention summary added before it is fed back).
//
//   input_projection     gates = x W_ih^T + b_ih + b_hh for every step at once (one multi-threaded GEMM)
//   lstm_step_forward    step t of a block of rows: gates_t += h_{t-1} W_hh^T (one GEMM), then the cell
//                        pointwise pass (lstm_rows.h) -> activated gates, c_t, ĥ_t
//   start_reverse_sweep  the block's dL/dh_{T-1} and dL/dc_{T-1} before the reverse sweep
//   lstm_step_backward   step t of a block of rows: cell backward -> dgates_t, then the recurrent gradient
//                        into step t-1 (one GEMM); the truncation schedule is applied HERE and nowhere else
//   fold_lstm_chunk      the weight gradients and dx of a finished chunk of steps (lstm_backward.cpp says why
//                        the backward works in chunks)
//
// Why each thread runs the whole time loop on its own block of rows (for_each_row_block): batch rows never
// interact in the recurrence, so there is no synchronisation per step. The first version ran one 2-thread
// GEMM and a parallel pointwise pass per step: two barriers per step, and its per-step GEMM profiled at
// 80-97 us against ~46 us of single-thread CPU time for the same shape. The time loop works on raw pointers
// with cpu::gemm (BLAS, no dispatcher, no tensor views). GEMM path, measured here (AMD EPYC, torch's MKL
// and oneDNN, B=32, H=128): MKL ~80-90 GFLOP/s per thread at the per-step shape; oneDNN
// (at::native::mkldnn_matmul) 35% slower there (call overhead) and MKL's packed-weight sgemm_compute only
// ~5% faster, so both stay unused.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "cpu_blas.h"
#include "fastrnn/reverse_sweep.h"
#include "lstm_rows.h"

namespace fastrnn {
namespace cpu {

// gates [T, B, 4H] = x W_ih^T + b_ih + b_hh for all T*B rows (b_ih, b_hh both given or both None). Runs
// outside the per-block time loop, so the GEMM uses every thread.
inline void input_projection(const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& b_ih,
                             const std::optional<at::Tensor>& b_hh, at::Tensor& gates) {
  const int64_t rows = x.size(0) * x.size(1);
  at::Tensor gates2d = gates.view({rows, gates.size(2)});
  const at::Tensor x2d = x.view({rows, x.size(2)});
  if (b_ih.has_value()) {
    at::addmm_out(gates2d, *b_ih + *b_hh, x2d, w_ih.t());
  } else {
    at::mm_out(gates2d, x2d, w_ih.t());
  }
}

// The LSTM part of one layer call, [T, B, .] step-major and contiguous. The forward writes gates, c and
// h_cell; the backward only reads them.
template <typename T>
struct LstmLayer {
  int64_t steps, B, I, H;
  const T* x;     // [T, B, I]
  const T* w_ih;  // [4H, I]
  const T* w_hh;  // [4H, H]
  const T* h0;    // [B, H]
  const T* c0;    // [B, H]
  const T* h;     // [T, B, H]: h_t as fed back to step t + 1 (the layer's output y)
  T* gates;       // [T, B, 4H]: the input projection, then (after step t) the activated gates i, f, g, o
  T* c;           // [T, B, H]: c_t
  T* h_cell;      // [T, B, H]: the cell's output ĥ_t (= h for the LSTM layer; SAB adds the summary to it)

  // Row b0 of the state step t reads: h_{t-1} and c_{t-1} (h0, c0 at t = 0).
  const T* h_prev(int64_t t, int64_t b0) const { return (t == 0 ? h0 : h + (t - 1) * B * H) + b0 * H; }
  const T* c_prev(int64_t t, int64_t b0) const { return (t == 0 ? c0 : c + (t - 1) * B * H) + b0 * H; }
  // Row b0 of step t of a [T, B, n] tensor.
  int64_t row(int64_t t, int64_t b0, int64_t n) const { return (t * B + b0) * n; }
};

// The LstmLayer of contiguous tensors of the dtype T (checked by the op: csrc/checks.h).
template <typename T>
inline LstmLayer<T> lstm_layer(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& h,
                               const at::Tensor& gates, const at::Tensor& c, const at::Tensor& h_cell) {
  return {x.size(0), x.size(1), x.size(2), h0.size(1),
          x.const_data_ptr<T>(), w_ih.const_data_ptr<T>(), w_hh.const_data_ptr<T>(), h0.const_data_ptr<T>(),
          c0.const_data_ptr<T>(), h.const_data_ptr<T>(), gates.data_ptr<T>(), c.data_ptr<T>(),
          h_cell.data_ptr<T>()};
}

// The recurrent products of a step with W = W_hh [4H, H], called as product(A, M, lda, alpha, beta, C, ldc)
// with the float32/float64 BLAS: the forward's C[M, 4H] = alpha A W^T + beta C (RecurrentForward), the
// backward's C[M, H] = alpha A W + beta C (RecurrentBackward). The bfloat16 mixed path passes its own
// (bf16_gemm.h's Bf16Product: the same products of operands rounded to bfloat16).
template <typename T>
struct RecurrentForward {
  const T* w_hh;
  int64_t H;
  void operator()(const T* A, int64_t M, int64_t lda, T alpha, T beta, T* C, int64_t ldc) const {
    gemm<T>(false, true, M, 4 * H, H, alpha, A, lda, w_hh, H, beta, C, ldc);
  }
};

template <typename T>
struct RecurrentBackward {
  const T* w_hh;
  int64_t H;
  void operator()(const T* A, int64_t M, int64_t lda, T alpha, T beta, T* C, int64_t ldc) const {
    gemm<T>(false, false, M, H, 4 * H, alpha, A, lda, w_hh, H, beta, C, ldc);
  }
};

// Step t of rows [b0, b0 + nb): gates_t += h_{t-1} W_hh^T (beta = 1 keeps the input projection already
// there), then per row the cell: activated gates, c_t, ĥ_t. h_{t-1} must be final (for SAB: step t-1's
// summary added) before this runs.
template <typename T, class Product>
inline void lstm_step_forward(const LstmLayer<T>& L, int64_t t, int64_t b0, int64_t nb, Product& recurrent) {
  const int64_t H = L.H, G = 4 * H;
  T* g = L.gates + L.row(t, b0, G);
  recurrent(L.h_prev(t, b0), nb, H, T(1), T(1), g, G);
  const T* cp = L.c_prev(t, b0);
  T* c = L.c + L.row(t, b0, H);
  T* h = L.h_cell + L.row(t, b0, H);
  for (int64_t b = 0; b < nb; ++b) lstm_row_forward<T>(g + b * G, cp + b * H, c + b * H, h + b * H, H);
}

template <typename T>
inline void lstm_step_forward(const LstmLayer<T>& L, int64_t t, int64_t b0, int64_t nb) {
  RecurrentForward<T> recurrent{L.w_hh, L.H};
  lstm_step_forward(L, t, b0, nb, recurrent);
}

// The forward step of the LSTM part as the SAB forward calls it, cell(t, b0, nb): here float32/float64 with
// the input projection already in L.gates (input_projection); bf16_lstm.h's MixedLstmCell is the mixed one.
template <typename T>
struct LstmCell {
  const LstmLayer<T>& L;
  void operator()(int64_t t, int64_t b0, int64_t nb) const { lstm_step_forward(L, t, b0, nb); }
};

// The truncation schedule (docs/CONTRACT.md): the gradient from step t into step t-1 along the recurrent
// path (h and c; t = 0: into h0, c0) is zero where cut[t], otherwise multiplied by scale[t]. Memory slots
// are never cut or scaled. Read by lstm_step_backward only. Per row (the SAB op, docs/CONTRACT.md
// "Per-row truncation"): cut, scale [T, B], row b's schedule in column b.
template <typename T>
struct Schedule {
  const bool* cut;  // [T], or [T, B] when B > 0
  const T* scale;
  int64_t B;  // 0: one schedule for every row

  int64_t at(int64_t t, int64_t b) const { return B ? t * B + b : t; }
  // Whether rows [b0, b0 + nb) share step t's (cut, scale), so that the step runs as one block.
  bool uniform(int64_t t, int64_t b0, int64_t nb) const {
    if (!B) return true;
    for (int64_t b = b0 + 1; b < b0 + nb; ++b)
      if (cut[at(t, b)] != cut[at(t, b0)] || scale[at(t, b)] != scale[at(t, b0)]) return false;
    return true;
  }
};

// What the reverse sweep reads and carries, for all B rows (a block works on its own rows).
template <typename T>
struct LstmSweep {
  const T* dy;         // [T, B, H] output gradient (with lengths: masked, dh_n folded in; lengths.h)
  const T* dh_n;       // [B, H]
  const T* dc_n;       // [B, H]
  const int64_t* len;  // [B] or nullptr (every row has length T)
  Schedule<T> schedule;
  T* dh;   // [B, H]: dL/dh_t over every path, carried; the caller adds its own paths before the step runs
  T* dc;   // [B, H]: dL/dc_t from step t+1, carried; dc0 after the sweep
  T* dh0;  // [B, H]: the recurrent gradient into h0 (written by step 0)
};

template <typename T>
inline LstmSweep<T> lstm_sweep(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
                               const int64_t* len, const at::Tensor& cut, const at::Tensor& scale, at::Tensor& dh,
                               at::Tensor& dc, at::Tensor& dh0) {
  return {dy.const_data_ptr<T>(), dh_n.const_data_ptr<T>(), dc_n.const_data_ptr<T>(), len,
          {cut.const_data_ptr<bool>(), scale.const_data_ptr<T>(), cut.dim() == 2 ? cut.size(1) : 0},
          dh.data_ptr<T>(), dc.data_ptr<T>(), dh0.data_ptr<T>()};
}

// Before the sweep, rows [b0, b0 + nb): dh = dL/dh_{T-1} = dy_{T-1} + dh_n and dc = dc_n. With lengths,
// dh_n is already in dy at each row's last step, and dc_n enters there (lstm_step_backward), so
// dh = dy_{T-1} and dc = 0.
template <typename T>
inline void start_reverse_sweep(const LstmLayer<T>& L, const LstmSweep<T>& S, int64_t b0, int64_t nb) {
  const int64_t H = L.H, n = nb * H;
  const T* dy = S.dy + L.row(L.steps - 1, b0, H);
  T* dh = S.dh + b0 * H;
  T* dc = S.dc + b0 * H;
  if (S.len) {
    std::copy_n(dy, n, dh);
    std::fill_n(dc, n, T(0));
  } else {
    const T* dh_n = S.dh_n + b0 * H;
    const int64_t last = L.steps - 1;
    for (int64_t r = 0; r < n; ++r) dh[r] = output_grad(dy[r], dh_n[r], last, last);
    std::copy_n(S.dc_n + b0 * H, n, dc);
  }
}

// The recurrent gradient of lstm_step_backward for rows [b0, b0 + nb) whose per-row schedules differ at
// step t (cut, scale [T, B]): one unscaled GEMM over the block into dh (the cell backward has consumed it),
// then each row takes its own share, dL/dh_{t-1} = dy_{t-1} + scale_b · (dG_b @ W_hh), or dy_{t-1} alone
// where cut (the product is dropped, not multiplied by 0: not even a NaN crosses a cut); at t = 0 into dh0.
template <typename T, class Product>
inline void rows_into_previous_step(const LstmLayer<T>& L, const LstmSweep<T>& S, int64_t t, int64_t b0,
                                    int64_t nb, const T* dG, Product& recurrent) {
  const int64_t H = L.H, G = 4 * H;
  const Schedule<T>& sc = S.schedule;
  T* dh = S.dh + b0 * H;
  recurrent(dG, nb, G, T(1), T(0), dh, H);
  const T* dy = t > 0 ? S.dy + L.row(t - 1, b0, H) : nullptr;
  T* target = t == 0 ? S.dh0 + b0 * H : dh;
  for (int64_t b = 0; b < nb; ++b) {
    const bool cut = sc.cut[sc.at(t, b0 + b)];
    const T scale = sc.scale[sc.at(t, b0 + b)];
    T* out = target + b * H;
    const T* rec = dh + b * H;
    for (int64_t h = 0; h < H; ++h) {
      const T carried = dy ? dy[b * H + h] : T(0);
      out[h] = cut ? carried : carried + scale * rec[h];
    }
  }
}

// Step t of rows [b0, b0 + nb) of the reverse sweep. On entry S.dh holds dL/dh_t over every path (the
// output, step t+1's recurrent gradient, and for SAB the slot and attention paths, added by the caller) and
// S.dc dL/dc_t from step t+1. Writes the gate pre-activation gradients dG ([nb, 4H], row-major) and leaves
// S.dh = dL/dh_{t-1} = dy_{t-1} + (recurrent gradient into h_{t-1}), S.dc = dL/dc_{t-1} through this cell
// (t = 0: the recurrent gradient into h0 goes to S.dh0, S.dc holds dc0).
//
// The schedule acts here, and only here, where the reference's `recurrent_input` acts: on what flows from
// step t into step t-1 along h and c. Where cut[t] nothing crosses (the GEMM is skipped and the carried dc
// is set to exactly 0, so not even a NaN crosses a cut); otherwise both are multiplied by scale[t].
//
// A per-row schedule whose rows differ at step t splits the recurrent gradient by row (rows_into_previous_step).
template <typename T, class Product>
inline void lstm_step_backward(const LstmLayer<T>& L, const LstmSweep<T>& S, int64_t t, int64_t b0, int64_t nb,
                               T* dG, Product& recurrent) {
  const int64_t H = L.H, G = 4 * H;
  const Schedule<T>& sc = S.schedule;
  T* dh = S.dh + b0 * H;
  T* dc = S.dc + b0 * H;
  if (S.len) {  // dc_n of the rows whose last step is t (c_n of such a row is c_t)
    for (int64_t b = 0; b < nb; ++b)
      if (last_step(S.len, b0 + b, L.steps) == t)
        for (int64_t h = 0; h < H; ++h) dc[b * H + h] += S.dc_n[(b0 + b) * H + h];
  }
  const T* g = L.gates + L.row(t, b0, G);
  const T* cp = L.c_prev(t, b0);
  const T* c = L.c + L.row(t, b0, H);
  for (int64_t b = 0; b < nb; ++b)
    lstm_row_backward<T>(dh + b * H, dc + b * H, g + b * G, cp + b * H, c + b * H, dG + b * G, H,
                         sc.cut[sc.at(t, b0 + b)], sc.scale[sc.at(t, b0 + b)]);
  if (!sc.uniform(t, b0, nb)) {
    rows_into_previous_step(L, S, t, b0, nb, dG, recurrent);
    return;
  }
  const bool cut = sc.cut[sc.at(t, b0)];
  const T scale = sc.scale[sc.at(t, b0)];
  // dh for step t-1: its own output gradient plus the recurrent path, unless cut; at t = 0 the recurrent
  // path alone, into dh0 (beta = 0: written, never read).
  T* target = t == 0 ? S.dh0 + b0 * H : dh;
  if (t > 0) std::copy_n(S.dy + L.row(t - 1, b0, H), nb * H, target);
  if (!cut) {
    recurrent(dG, nb, G, scale, T(t > 0), target, H);
  } else if (t == 0) {
    std::fill_n(target, nb * H, T(0));
  }
}

// sums[g] += Σ_r rows[r, g] over `n` rows of G columns: the bias gradient of a chunk of gate gradients.
template <typename T>
inline void add_column_sums(const T* rows, int64_t n, int64_t G, T* sums) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < G; ++g) sums[g] += rows[r * G + g];
}

// The GEMMs of a finished chunk of the sweep: steps [t0, t0 + n) of rows [b0, b0 + R), whose gate
// gradients are dG (step-major, [n * R, 4H]). Accumulates dW_ih += dG_t^T x_t, dW_hh += dG_t^T h_{t-1}
// (h0 for t = 0) and writes the block's dx rows dx_t = dG_t W_ih (dx [T, B, I]). The emulated bfloat16
// path passes dG rounded to bfloat16 (the GEMMs' operand) and sums the bias gradient from the unrounded dG
// (it is no GEMM: float32).
// A block's rows of x and h_{t-1} are not one strided matrix across steps, so the GEMMs go step by step
// (K = R): copying the chunk's rows into one matrix for a single GEMM with K = n * R measured slower
// (39 against 34 ms per 1000 steps of a 16-row block at H = 128, float32; MKL's small-K GEMM beats copy
// plus packing).
template <typename T>
inline void fold_lstm_gemms(const LstmLayer<T>& L, const T* dG, int64_t t0, int64_t n, int64_t b0, int64_t R,
                            T* dx, T* dw_ih, T* dw_hh) {
  const int64_t I = L.I, H = L.H, G = 4 * H;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = t0 + i;
    const T* dG_t = dG + i * R * G;
    gemm<T>(true, false, G, I, R, T(1), dG_t, G, L.x + L.row(t, b0, I), I, T(1), dw_ih, I);
    gemm<T>(true, false, G, H, R, T(1), dG_t, G, L.h_prev(t, b0), H, T(1), dw_hh, H);
    gemm<T>(false, false, R, I, G, T(1), dG_t, G, L.w_ih, I, T(0), dx + L.row(t, b0, I), I);
  }
}

// The LSTM part of a finished chunk: fold_lstm_gemms, and db += the column sums of dG.
template <typename T>
inline void fold_lstm_chunk(const LstmLayer<T>& L, const T* dG, int64_t t0, int64_t n, int64_t b0, int64_t R,
                            T* dx, T* dw_ih, T* dw_hh, T* db) {
  fold_lstm_gemms(L, dG, t0, n, b0, R, dx, dw_ih, dw_hh);
  add_column_sums(dG, n * R, 4 * L.H, db);
}

// One thread's LSTM part of a backward sweep, float32/float64: the recurrent product for lstm_step_backward
// and the chunk fold. bf16_lstm.h's MixedLstmBackwardThread is the mixed one, with the same interface.
template <typename T>
struct LstmBackwardThread {
  RecurrentBackward<T> recurrent;
  void fold(const LstmLayer<T>& L, const T* dG, int64_t t0, int64_t n, int64_t b0, int64_t R, T* dx, T* dw_ih,
            T* dw_hh, T* db) const {
    fold_lstm_chunk(L, dG, t0, n, b0, R, dx, dw_ih, dw_hh, db);
  }
};

}  // namespace cpu
}  // namespace fastrnn
