// fastrnn::lstm_forward on CPU: a whole LSTM layer over the sequence in one call.
//
// One GEMM projects every step's input at once (gates = x W_ih^T + b_ih + b_hh, all T*B rows). Batch rows
// never interact, so the recurrence is split by batch: each thread takes a block of rows and runs the whole
// time loop on it (per step: a single-threaded recurrent GEMM accumulating h_{t-1} W_hh^T into its slice
// of the gates buffer, then the fused pointwise pass, at::vec over H), with no synchronisation per step.
// The first version ran one 2-thread GEMM and a parallel pointwise pass per step: two barriers per step,
// and its per-step GEMM profiled at 80-97 us against ~46 us of single-thread CPU time for the same shape.
// The time loop works on raw pointers with fastrnn::gemm (BLAS, no dispatcher, no tensor views).
// GEMM path, measured here (AMD EPYC, torch's MKL and oneDNN, B=32, H=128): MKL ~80-90 GFLOP/s per thread
// at the per-step shape; oneDNN (at::native::mkldnn_matmul) 35% slower there (call overhead) and MKL's
// packed-weight sgemm_compute only ~5% faster, so both stay unused.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastrnn/lstm_checks.h"
#include "fastrnn/lstm_rows.h"
#include "fastrnn/cpu_blas.h"
#include "huge_pages.h"
#include "lengths.h"

namespace fastrnn {
namespace {

// Returns (y [T,B,H], h_n [B,H], c_n [B,H], gates [T,B,4H] activated, cs [T,B,H]); the last two are what
// the backward needs. cut/scale are accepted so that autograd can keep them; the forward ignores them.
// lengths (optional, cpu/lengths.h): every step of every row is computed, then h_n/c_n are taken at each
// row's last step and y is zeroed past it.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths) {
  const LstmDims d = check_lstm_args(x, w_ih, w_hh, h0, c0, cut, scale);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "b_ih and b_hh must both be given or both be None");
  const int64_t T = d.T, B = d.B, H = d.H, G = 4 * H;
  const int64_t* len = cpu::check_lengths(lengths, T, B, "fastrnn::lstm_forward");
  const auto opts = x.options();

  auto gates = cpu::empty_huge({T, B, G}, opts);
  auto y = cpu::empty_huge({T, B, H}, opts);
  auto cs = cpu::empty_huge({T, B, H}, opts);
  auto gates2d = gates.view({T * B, G});
  const auto x2d = x.view({T * B, d.I});
  if (b_ih.has_value()) {
    check_tensor(*b_ih, "b_ih", x.scalar_type(), {G});
    check_tensor(*b_hh, "b_hh", x.scalar_type(), {G});
    at::addmm_out(gates2d, *b_ih + *b_hh, x2d, w_ih.t());
  } else {
    at::mm_out(gates2d, x2d, w_ih.t());
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward_cpu", [&] {
    const scalar_t* w = w_hh.const_data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
    const scalar_t* c0_p = c0.const_data_ptr<scalar_t>();
    scalar_t* g_all = gates.data_ptr<scalar_t>();
    scalar_t* y_all = y.data_ptr<scalar_t>();
    scalar_t* c_all = cs.data_ptr<scalar_t>();
    at::parallel_for(0, B, rows_per_thread(B), [&](int64_t b0, int64_t b1) {
      const SequentialBlasGuard one_blas_thread;  // this thread is already one of the team
      const int64_t nb = b1 - b0;
      for (int64_t t = 0; t < T; ++t) {
        scalar_t* g_ptr = g_all + (t * B + b0) * G;
        const scalar_t* h_prev = (t == 0 ? h0_p : y_all + (t - 1) * B * H) + b0 * H;
        const scalar_t* c_prev = (t == 0 ? c0_p : c_all + (t - 1) * B * H) + b0 * H;
        scalar_t* c_ptr = c_all + (t * B + b0) * H;
        scalar_t* h_ptr = y_all + (t * B + b0) * H;
        // gates_t += h_{t-1} W_hh^T (beta = 1 keeps the input projection already there)
        gemm<scalar_t>(false, true, nb, G, H, scalar_t(1), h_prev, H, w, H, scalar_t(1), g_ptr, G);
        for (int64_t b = 0; b < nb; ++b) {
          lstm_row_forward<scalar_t>(g_ptr + b * G, c_prev + b * H, c_ptr + b * H, h_ptr + b * H, H);
        }
      }
    });
  });
  if (len == nullptr) return {y, y[T - 1].clone(), cs[T - 1].clone(), gates, cs};
  auto h_n = at::empty({B, H}, opts), c_n = at::empty({B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward_cpu_lengths", [&] {
    cpu::finish_forward<scalar_t>(len, T, B, H, y.data_ptr<scalar_t>(), cs.const_data_ptr<scalar_t>(),
                                  h0.const_data_ptr<scalar_t>(), c0.const_data_ptr<scalar_t>(),
                                  h_n.data_ptr<scalar_t>(), c_n.data_ptr<scalar_t>());
  });
  return {y, h_n, c_n, gates, cs};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("lstm_forward", &lstm_forward_cpu); }

}  // namespace fastrnn
