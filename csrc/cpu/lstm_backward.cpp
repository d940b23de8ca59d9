// fastrnn::lstm_backward on CPU: the gradient of lstm_forward under a truncation schedule, in one reverse
// sweep over the sequence.
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

#include "backward_chunks.h"
#include "checks.h"
#include "huge_pages.h"
#include "lengths.h"
#include "lstm_step.h"

namespace fastrnn {
namespace cpu {
namespace {

// Returns (dx, dw_ih, dw_hh, db, dh0, dc0); db is the gradient of both b_ih and b_hh.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths) {
  ArgChecker ck("fastrnn::lstm_backward", at::kCPU);
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H;
  ck.tensor(dy, "dy", {T, B, H});
  ck.tensor(dh_n, "dh_n", {B, H});
  ck.tensor(dc_n, "dc_n", {B, H});
  ck.tensor(y, "y", {T, B, H});
  ck.tensor(gates, "gates", {T, B, G});
  ck.tensor(cs, "cs", {T, B, H});
  ck.lengths(lengths, d);
  // With lengths (cpu/lengths.h): dy masked past each row's length with dh_n folded into its last step.
  const int64_t* len = lengths_data(lengths);
  const at::Tensor gy = len ? fold_output_grads(dy, dh_n, len) : dy;

  // Block k sweeps rows [k R, min(B, (k + 1) R)): one block per thread.
  const auto opts = x.options();
  const int64_t R = rows_per_thread(B), nblocks = (B + R - 1) / R;
  const int64_t C = chunk_steps(T, R * G * x.element_size());
  auto dg_chunk = at::empty({nblocks, C * R, G}, opts);
  auto acc_ih = at::zeros({nblocks, G, I}, opts);
  auto acc_hh = at::zeros({nblocks, G, H}, opts);
  auto acc_b = at::zeros({nblocks, G}, opts);
  auto dx = empty_huge({T, B, I}, opts);
  auto dh = at::empty({B, H}, opts), dc = at::empty({B, H}, opts), dh0 = at::empty({B, H}, opts);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::lstm_backward", [&] {
    using Tv = scalar_t;
    const auto L = lstm_layer<Tv>(x, w_ih, w_hh, h0, c0, /*h=*/y, gates, cs, /*h_cell=*/y);
    const auto S = lstm_sweep<Tv>(gy, dh_n, dc_n, len, cut, scale, dh, dc, dh0);
    for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
      Tv* dgc = dg_chunk.data_ptr<Tv>() + k * C * R * G;
      Tv* dw_ih = acc_ih.data_ptr<Tv>() + k * G * I;
      Tv* dw_hh = acc_hh.data_ptr<Tv>() + k * G * H;
      Tv* db = acc_b.data_ptr<Tv>() + k * G;
      start_reverse_sweep(L, S, b0, nb);
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t t0 = t / C * C;  // first step of t's chunk
        lstm_step_backward(L, S, t, b0, nb, dgc + (t - t0) * nb * G);
        if (t == t0)  // the chunk [t0, t0 + C) is complete: fold it into the block's weight gradients
          fold_lstm_chunk(L, dgc, t0, std::min(T, t0 + C) - t0, b0, nb, dx.data_ptr<Tv>(), dw_ih, dw_hh, db);
      }
    });
  });

  if (len) add_zero_length_grads(len, dh_n, dc_n, dh0, dc);
  return {dx, sum_blocks(acc_ih), sum_blocks(acc_hh), sum_blocks(acc_b), dh0, dc};
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("lstm_backward", &fastrnn::cpu::lstm_backward_cpu); }
