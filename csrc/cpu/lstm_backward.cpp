// fastrnn::lstm_backward on CPU: the gradient of lstm_forward under a truncation schedule, in one reverse
// sweep over the sequence; fastrnn::lstm_mixed_backward that of lstm_mixed_forward (bf16_gemm.h).
//
// Sweep, t = T-1 .. 0 (split by batch rows like the forward: each thread sweeps its own block of rows with
// single-threaded GEMMs, no per-step synchronisation): lstm_step_backward (lstm_step.h) turns (dh_t, dc
// carried) into the gate gradients dgates_t and the carried dh, dc for step t-1, applying the schedule.
//
// Weight gradients, in chunks of C steps: dx = dgates W_ih, dW_ih = dgates^T x, dW_hh = Σ_t dgates_t^T h_{t-1}
// (h0 for t = 0), db = column sums of dgates. Keeping dgates for the whole sequence to form them with a few
// large GEMMs after the sweep cost a [T, B, 4H] buffer (655 MB at T = 10000, B = 32, H = 128; 40 % of the
// backward's memory) whose fresh pages were faulted in and zeroed on every call, so the time per step grew
// with T. Instead each thread keeps the dgates of its rows for C steps only (a chunk, step-major), and when
// the sweep has filled it folds it into its block's own dW_ih, dW_hh, db accumulators and writes the block's
// dx rows, with single-threaded GEMMs while the chunk is still in cache (fold_lstm_chunk, shared with the
// SAB backward; backward_chunks.h). The accumulators are summed in block order after the sweep, so reruns at
// the same thread count are bit-identical.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <type_traits>

#include "backward_chunks.h"
#include "bf16_lstm.h"
#include "checks.h"
#include "huge_pages.h"
#include "lengths.h"
#include "lstm_step.h"

namespace fastrnn {
namespace cpu {
namespace {

// One block's reverse sweep, rows [b0, b0 + nb): the chunk dgc (step-major [C * nb, 4H]) holds its gate
// gradients; each complete chunk of steps [t0, t0 + n) is folded (thread.fold: LstmBackwardThread, or
// bf16_lstm.h's MixedLstmBackwardThread) into the block's weight gradients dw_ih, dw_hh, db and its dx rows.
template <typename Tv, class Thread>
void sweep_block(const LstmLayer<Tv>& L, const LstmSweep<Tv>& S, int64_t C, int64_t b0, int64_t nb, Tv* dgc,
                 Thread& thread, Tv* dx, Tv* dw_ih, Tv* dw_hh, Tv* db) {
  const int64_t T = L.steps, G = 4 * L.H;
  start_reverse_sweep(L, S, b0, nb);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t t0 = t / C * C;  // first step of t's chunk
    lstm_step_backward(L, S, t, b0, nb, dgc + (t - t0) * nb * G, thread.recurrent);
    if (t == t0) thread.fold(L, dgc, t0, std::min(T, t0 + C) - t0, b0, nb, dx, dw_ih, dw_hh, db);
  }
}

// Returns (dx, dw_ih, dw_hh, db, dh0, dc0); db is the gradient of both b_ih and b_hh. gemm (nullptr: the
// float32/float64 op) names the kernel of the bfloat16 mixed path (lstm_forward.cpp): every GEMM's operands
// rounded to bfloat16 (x, y, h0 and the weights once, dG every step), dG, dh, dc and the sums float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const char* op, const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths, const std::string* gemm) {
  ArgChecker ck = layer_checker(op, gemm);
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H;
  ck.tensor(dy, "dy", {T, B, H});
  ck.tensor(dh_n, "dh_n", {B, H});
  ck.tensor(dc_n, "dc_n", {B, H});
  ck.tensor(y, "y", {T, B, H});
  ck.tensor(gates, "gates", {T, B, G});
  ck.tensor(cs, "cs", {T, B, H});
  ck.lengths(lengths, d);
  const std::optional<Bf16Kernel> kernel = gemm ? std::optional(bf16_kernel(*gemm, op)) : std::nullopt;
  // With lengths (cpu/lengths.h): dy masked past each row's length with dh_n folded into its last step.
  const int64_t* len = lengths_data(lengths);
  const at::Tensor gy = len ? fold_output_grads(dy, dh_n, len) : dy;

  // Block k sweeps rows [k R, min(B, (k + 1) R)): one block per thread.
  const auto opts = x.options();
  const int64_t R = rows_per_thread(B), nblocks = (B + R - 1) / R;
  const int64_t C =
      chunk_steps(T, R * (G * x.element_size() + (kernel ? MixedLstmBackward::extra_chunk_bytes(G) : 0)));
  auto dg_chunk = at::empty({nblocks, C * R, G}, opts);
  auto acc_ih = at::zeros({nblocks, G, I}, opts);
  auto acc_hh = at::zeros({nblocks, G, H}, opts);
  auto acc_b = at::zeros({nblocks, G}, opts);
  auto dx = empty_huge({T, B, I}, opts);
  auto dh = at::empty({B, H}, opts), dc = at::empty({B, H}, opts), dh0 = at::empty({B, H}, opts);
  // Block k's sweep with the LstmLayer L and its thread's recurrent product and fold.
  const auto sweep = [&](const auto& L, const auto& S, int64_t k, int64_t b0, int64_t nb, auto& thread) {
    using Tv = std::remove_const_t<std::remove_pointer_t<decltype(L.x)>>;
    sweep_block(L, S, C, b0, nb, dg_chunk.data_ptr<Tv>() + k * C * R * G, thread, dx.data_ptr<Tv>(),
                acc_ih.data_ptr<Tv>() + k * G * I, acc_hh.data_ptr<Tv>() + k * G * H, acc_b.data_ptr<Tv>() + k * G);
  };

  if (kernel) {
    // bf16_lstm.h: the GEMM operands rounded as the kernel needs (x, h_{t-1} = y and h0, W_ih; dG per chunk)
    const MixedLstmBackward mixed(*kernel, w_ih, w_hh, nblocks, C * R);
    const at::Tensor xr = mixed.operand(x), yr = mixed.operand(y), h0r = mixed.operand(h0);
    const at::Tensor w_ih_r = mixed.operand(w_ih);
    const auto L = lstm_layer<float>(xr, w_ih_r, w_hh, h0r, c0, /*h=*/yr, gates, cs, /*h_cell=*/yr);
    const auto S = lstm_sweep<float>(gy, dh_n, dc_n, len, cut, scale, dh, dc, dh0);
    for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
      MixedLstmBackwardThread thread = mixed.thread(k);
      sweep(L, S, k, b0, nb, thread);
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::lstm_backward", [&] {
      const auto L = lstm_layer<scalar_t>(x, w_ih, w_hh, h0, c0, /*h=*/y, gates, cs, /*h_cell=*/y);
      const auto S = lstm_sweep<scalar_t>(gy, dh_n, dc_n, len, cut, scale, dh, dc, dh0);
      for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
        LstmBackwardThread<scalar_t> thread{{L.w_hh, H}};
        sweep(L, S, k, b0, nb, thread);
      });
    });
  }

  if (len) add_zero_length_grads(len, dh_n, dc_n, dh0, dc);
  return {dx, sum_blocks(acc_ih), sum_blocks(acc_hh), sum_blocks(acc_b), dh0, dc};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths) {
  return backward("fastrnn::lstm_backward", dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut, scale,
                  lengths, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_mixed_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths, const std::string& gemm) {
  return backward("fastrnn::lstm_mixed_backward", dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cs, cut,
                  scale, lengths, &gemm);
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_backward", &fastrnn::cpu::lstm_backward_cpu);
  m.impl("lstm_mixed_backward", &fastrnn::cpu::lstm_mixed_backward_cpu);
}
