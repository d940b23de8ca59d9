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

#include "backward_chunks.h"
#include "bf16_fold.h"
#include "bf16_gemm.h"
#include "checks.h"
#include "huge_pages.h"
#include "lengths.h"
#include "lstm_step.h"

namespace fastrnn {
namespace cpu {
namespace {

// One block's reverse sweep, rows [b0, b0 + nb): the chunk dgc (step-major [C * nb, 4H]) holds its gate
// gradients; fold(t0, n) folds the complete chunk of steps [t0, t0 + n) into the block's weight gradients.
template <typename Tv, class Product, class Fold>
void sweep_block(const LstmLayer<Tv>& L, const LstmSweep<Tv>& S, int64_t C, int64_t b0, int64_t nb, Tv* dgc,
                 Product& recurrent, const Fold& fold) {
  const int64_t T = L.steps, G = 4 * L.H;
  start_reverse_sweep(L, S, b0, nb);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t t0 = t / C * C;  // first step of t's chunk
    lstm_step_backward(L, S, t, b0, nb, dgc + (t - t0) * nb * G, recurrent);
    if (t == t0) fold(t0, std::min(T, t0 + C) - t0);
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
  ArgChecker ck = gemm ? ArgChecker(op, at::kCPU, {at::kFloat}) : ArgChecker(op, at::kCPU);
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
  const int64_t C = chunk_steps(T, R * G * x.element_size() * (kernel ? 2 : 1));
  auto dg_chunk = at::empty({nblocks, C * R, G}, opts);
  auto acc_ih = at::zeros({nblocks, G, I}, opts);
  auto acc_hh = at::zeros({nblocks, G, H}, opts);
  auto acc_b = at::zeros({nblocks, G}, opts);
  auto dx = empty_huge({T, B, I}, opts);
  auto dh = at::empty({B, H}, opts), dc = at::empty({B, H}, opts), dh0 = at::empty({B, H}, opts);

  if (kernel) {
    // avx512bf16 and mkl fold whole chunks on their bfloat16 GEMM (bf16_fold.h), rounding as they convert;
    // emulated folds with the float32 BLAS on operands rounded here: x, h_{t-1} (y and h0), W_ih, and dG
    // per chunk.
    const bool packed = *kernel != Bf16Kernel::Emulated;
    const auto round = [&](const at::Tensor& t) { return packed ? t : rounded(t); };
    const at::Tensor xr = round(x), yr = round(y), h0r = round(h0), w_ih_r = round(w_ih);
    const Bf16Weights w(*kernel, w_hh.t().contiguous());   // dh = dG W_hh
    std::optional<Bf16Weights> w_ih_t;                      // dx = dG W_ih
    if (packed) w_ih_t.emplace(*kernel, w_ih.t().contiguous());
    auto dg_round = packed ? at::Tensor() : at::empty_like(dg_chunk);
    const auto L = lstm_layer<float>(xr, w_ih_r, w_hh, h0r, c0, /*h=*/yr, gates, cs, /*h_cell=*/yr);
    const auto S = lstm_sweep<float>(gy, dh_n, dc_n, len, cut, scale, dh, dc, dh0);
    for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
      float* dgc = dg_chunk.data_ptr<float>() + k * C * R * G;
      float* dxp = dx.data_ptr<float>();
      float* dw_ih = acc_ih.data_ptr<float>() + k * G * I;
      float* dw_hh = acc_hh.data_ptr<float>() + k * G * H;
      float* db = acc_b.data_ptr<float>() + k * G;
      Bf16Product recurrent(w);
      if (packed) {
        Bf16Product dx_product(*w_ih_t);
        std::vector<uint16_t> scratch;
        sweep_block(L, S, C, b0, nb, dgc, recurrent, [&](int64_t t0, int64_t n) {
          fold_lstm_chunk_bf16(*kernel, L, dgc, t0, n, b0, nb, dxp, dw_ih, dw_hh, db, dx_product, scratch);
        });
      } else {
        float* dgr = dg_round.data_ptr<float>() + k * C * R * G;
        sweep_block(L, S, C, b0, nb, dgc, recurrent, [&](int64_t t0, int64_t n) {
          round_to_bf16_float(dgc, dgr, n * nb * G);
          fold_lstm_chunk(L, dgr, t0, n, b0, nb, dxp, dw_ih, dw_hh, db, /*dG_sum=*/dgc);
        });
      }
    });
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::lstm_backward", [&] {
      using Tv = scalar_t;
      const auto L = lstm_layer<Tv>(x, w_ih, w_hh, h0, c0, /*h=*/y, gates, cs, /*h_cell=*/y);
      const auto S = lstm_sweep<Tv>(gy, dh_n, dc_n, len, cut, scale, dh, dc, dh0);
      for_each_row_block(B, [&](int64_t k, int64_t b0, int64_t nb) {
        Tv* dgc = dg_chunk.data_ptr<Tv>() + k * C * R * G;
        RecurrentBackward<Tv> recurrent{L.w_hh, H};
        sweep_block(L, S, C, b0, nb, dgc, recurrent, [&](int64_t t0, int64_t n) {
          fold_lstm_chunk(L, dgc, t0, n, b0, nb, dx.data_ptr<Tv>(), acc_ih.data_ptr<Tv>() + k * G * I,
                          acc_hh.data_ptr<Tv>() + k * G * H, acc_b.data_ptr<Tv>() + k * G);
        });
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
