// fastrnn::lstm_backward on CPU: the gradient of lstm_forward under a truncation schedule, in one reverse
// sweep over the sequence followed by a few large GEMMs.
//
// Sweep, t = T-1 .. 0 (split by batch rows like the forward: each thread sweeps its own block of rows with
// single-threaded GEMMs, no per-step synchronisation): the pointwise cell backward turns (dh_t, dc carried) into
// the gate gradients dgates_t (kept for all t) and the carried dc for step t-1; one GEMM then forms
// dh_{t-1} = dy_{t-1} + scale[t] * dgates_t W_hh. The schedule acts exactly where the reference's
// `recurrent_input` does: on the gradient from step t into step t-1 (t = 0: into h0, c0), zero where
// cut[t] (the GEMM is skipped, the carried dc is set to 0), else times scale[t].
// After the sweep: dx = dgates W_ih, dW_ih = dgates^T x, dW_hh = dgates_t^T h_{t-1} summed over t (two
// GEMMs: step 0 against h0, steps 1.. against y[0..T-2]), db = column sums of dgates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastrnn/lstm_checks.h"
#include "fastrnn/lstm_rows.h"
#include "fastrnn/cpu_blas.h"

namespace fastrnn {
namespace {

// Returns (dx, dw_ih, dw_hh, db, dh0, dc0); db is the gradient of both b_ih and b_hh.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& cut,
    const at::Tensor& scale) {
  const LstmDims d = check_lstm_args(x, w_ih, w_hh, h0, c0, cut, scale);
  const int64_t T = d.T, B = d.B, H = d.H, G = 4 * H;
  const auto dt = x.scalar_type();
  check_tensor(dy, "dy", dt, {T, B, H});
  check_tensor(dh_n, "dh_n", dt, {B, H});
  check_tensor(dc_n, "dc_n", dt, {B, H});
  check_tensor(y, "y", dt, {T, B, H});
  check_tensor(gates, "gates", dt, {T, B, G});
  check_tensor(cs, "cs", dt, {T, B, H});

  auto dgates = at::empty({T, B, G}, x.options());
  auto dh = dy[T - 1] + dh_n;  // dL/dh_{T-1}, all paths; then reused as the carried dh buffer
  auto dc = dc_n.clone();      // dL/dc carried from step t+1, updated in place by each pointwise pass
  auto dh0 = at::empty({B, H}, x.options());
  const bool* cut_p = cut.const_data_ptr<bool>();

  AT_DISPATCH_FLOATING_TYPES(dt, "lstm_backward_cpu", [&] {
    const scalar_t* scale_p = scale.const_data_ptr<scalar_t>();
    const scalar_t* w = w_hh.const_data_ptr<scalar_t>();
    const scalar_t* g_all = gates.const_data_ptr<scalar_t>();
    const scalar_t* c_all = cs.const_data_ptr<scalar_t>();
    const scalar_t* c0_p = c0.const_data_ptr<scalar_t>();
    const scalar_t* dy_all = dy.const_data_ptr<scalar_t>();
    scalar_t* dg_all = dgates.data_ptr<scalar_t>();
    scalar_t* dh_all = dh.data_ptr<scalar_t>();
    scalar_t* dh0_all = dh0.data_ptr<scalar_t>();
    scalar_t* dc_all = dc.data_ptr<scalar_t>();
    at::parallel_for(0, B, rows_per_thread(B), [&](int64_t b0, int64_t b1) {
      const SequentialBlasGuard one_blas_thread;  // this thread is already one of the team
      const int64_t nb = b1 - b0;
      scalar_t* dh_ptr = dh_all + b0 * H;
      scalar_t* dc_ptr = dc_all + b0 * H;
      for (int64_t t = T - 1; t >= 0; --t) {
        const bool cut_t = cut_p[t];
        const scalar_t s = scale_p[t];
        const scalar_t* g_ptr = g_all + (t * B + b0) * G;
        const scalar_t* cp_ptr = (t == 0 ? c0_p : c_all + (t - 1) * B * H) + b0 * H;
        const scalar_t* c_ptr = c_all + (t * B + b0) * H;
        scalar_t* dg_ptr = dg_all + (t * B + b0) * G;
        for (int64_t b = 0; b < nb; ++b) {
          lstm_row_backward<scalar_t>(dh_ptr + b * H, dc_ptr + b * H, g_ptr + b * G, cp_ptr + b * H,
                                      c_ptr + b * H, dg_ptr + b * G, H, cut_t, s);
        }
        // dh for step t-1 (or h0): its own output gradient plus the recurrent path, unless cut.
        scalar_t* target = t == 0 ? dh0_all + b0 * H : dh_ptr;
        if (t > 0) std::copy_n(dy_all + ((t - 1) * B + b0) * H, nb * H, target);
        else if (cut_t) std::fill_n(target, nb * H, scalar_t(0));
        if (!cut_t) {
          // beta = 0 at t = 0: dh0 is written, never read
          gemm<scalar_t>(false, false, nb, H, G, s, dg_ptr, G, w, H, scalar_t(t > 0), target, H);
        }
      }
    });
  });

  const auto dg2d = dgates.view({T * B, G});
  auto dx = at::mm(dg2d, w_ih).view({T, B, d.I});
  auto dw_ih = at::mm(dg2d.t(), x.view({T * B, d.I}));
  auto dw_hh = at::mm(dgates[0].t(), h0);
  if (T > 1) {
    at::addmm_out(dw_hh, dw_hh, dgates.narrow(0, 1, T - 1).view({(T - 1) * B, G}).t(),
                  y.narrow(0, 0, T - 1).view({(T - 1) * B, H}));
  }
  auto db = dg2d.sum(0);
  return {dx, dw_ih, dw_hh, db, dh0, dc};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("lstm_backward", &lstm_backward_cpu); }

}  // namespace fastrnn
