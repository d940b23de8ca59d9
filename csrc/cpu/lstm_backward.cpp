// fastrnn::lstm_backward on CPU: the gradient of lstm_forward under a truncation schedule, in one reverse
// sweep over the sequence.
//
// Sweep, t = T-1 .. 0 (split by batch rows like the forward: each thread sweeps its own block of rows with
// single-threaded GEMMs, no per-step synchronisation): the pointwise cell backward turns (dh_t, dc carried) into
// the gate gradients dgates_t and the carried dc for step t-1; one GEMM then forms
// dh_{t-1} = dy_{t-1} + scale[t] * dgates_t W_hh. The schedule acts exactly where the reference's
// `recurrent_input` does: on the gradient from step t into step t-1 (t = 0: into h0, c0), zero where
// cut[t] (the GEMM is skipped, the carried dc is set to 0), else times scale[t].
//
// Weight gradients, in chunks of C steps: dx = dgates W_ih, dW_ih = dgates^T x, dW_hh = Σ_t dgates_t^T h_{t-1}
// (h0 for t = 0), db = column sums of dgates. Keeping dgates for the whole sequence to form them with a few
// large GEMMs after the sweep cost a [T, B, 4H] buffer (655 MB at T = 10000, B = 32, H = 128; 40 % of the
// backward's memory) whose fresh pages were faulted in and zeroed on every call, so the time per step grew
// with T. Instead each thread keeps the dgates of its rows for C steps only (a chunk, step-major), and when
// the sweep has filled it folds it into its block's own dW_ih, dW_hh, db accumulators and writes the block's
// dx rows, with single-threaded GEMMs while the chunk is still in cache (backward_chunks.h, shared with the
// SAB backward). The accumulators are summed in block order after the sweep, so reruns at the same thread
// count are bit-identical.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastrnn/lstm_checks.h"
#include "fastrnn/lstm_rows.h"
#include "fastrnn/cpu_blas.h"
#include "backward_chunks.h"
#include "huge_pages.h"
#include "lengths.h"

namespace fastrnn {
namespace {

using cpu::chunk_steps;
using cpu::sum_blocks;

// Returns (dx, dw_ih, dw_hh, db, dh0, dc0); db is the gradient of both b_ih and b_hh.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_backward_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& x,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths) {
  const LstmDims d = check_lstm_args(x, w_ih, w_hh, h0, c0, cut, scale);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H;
  const auto dt = x.scalar_type();
  check_tensor(dy, "dy", dt, {T, B, H});
  check_tensor(dh_n, "dh_n", dt, {B, H});
  check_tensor(dc_n, "dc_n", dt, {B, H});
  check_tensor(y, "y", dt, {T, B, H});
  check_tensor(gates, "gates", dt, {T, B, G});
  check_tensor(cs, "cs", dt, {T, B, H});
  // With lengths (cpu/lengths.h): dy masked past each row's length with dh_n folded into its last step; the
  // carried dc starts at zero and takes dc_n[b] when the sweep reaches step lengths[b] - 1.
  const int64_t* len = cpu::check_lengths(lengths, T, B, "fastrnn::lstm_backward");
  const at::Tensor gy = len ? cpu::fold_output_grads(dy, dh_n, len) : dy;

  // Block k sweeps rows [k R, min(B, (k + 1) R)): one block per thread.
  const int64_t R = rows_per_thread(B), nblocks = (B + R - 1) / R;
  const int64_t C = chunk_steps(T, R * G * x.element_size());
  auto dg_chunk = at::empty({nblocks, C * R, G}, x.options());
  auto acc_ih = at::zeros({nblocks, G, I}, x.options());
  auto acc_hh = at::zeros({nblocks, G, H}, x.options());
  auto acc_b = at::zeros({nblocks, G}, x.options());
  auto dx = cpu::empty_huge({T, B, I}, x.options());
  // dL/dh_{T-1}, all paths; then reused as the carried dh buffer
  auto dh = len ? gy[T - 1].clone() : dy[T - 1] + dh_n;
  auto dc = len ? at::zeros_like(dc_n) : dc_n.clone();  // dL/dc carried from step t+1, updated in place
  auto dh0 = at::empty({B, H}, x.options());
  const bool* cut_p = cut.const_data_ptr<bool>();

  AT_DISPATCH_FLOATING_TYPES(dt, "lstm_backward_cpu", [&] {
    const scalar_t* scale_p = scale.const_data_ptr<scalar_t>();
    const scalar_t* w = w_hh.const_data_ptr<scalar_t>();
    const scalar_t* wi = w_ih.const_data_ptr<scalar_t>();
    const scalar_t* x_all = x.const_data_ptr<scalar_t>();
    const scalar_t* y_all = y.const_data_ptr<scalar_t>();
    const scalar_t* h0_p = h0.const_data_ptr<scalar_t>();
    const scalar_t* g_all = gates.const_data_ptr<scalar_t>();
    const scalar_t* c_all = cs.const_data_ptr<scalar_t>();
    const scalar_t* c0_p = c0.const_data_ptr<scalar_t>();
    const scalar_t* dy_all = gy.const_data_ptr<scalar_t>();
    const scalar_t* dcn_all = dc_n.const_data_ptr<scalar_t>();
    scalar_t* dx_all = dx.data_ptr<scalar_t>();
    scalar_t* dh_all = dh.data_ptr<scalar_t>();
    scalar_t* dh0_all = dh0.data_ptr<scalar_t>();
    scalar_t* dc_all = dc.data_ptr<scalar_t>();
    at::parallel_for(0, nblocks, 1, [&](int64_t k0, int64_t k1) {
      const SequentialBlasGuard one_blas_thread;  // this thread is already one of the team
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t b0 = k * R, nb = std::min(B, b0 + R) - b0;
        scalar_t* dh_ptr = dh_all + b0 * H;
        scalar_t* dc_ptr = dc_all + b0 * H;
        scalar_t* dgc = dg_chunk.data_ptr<scalar_t>() + k * C * R * G;
        scalar_t* dw_ih = acc_ih.data_ptr<scalar_t>() + k * G * I;
        scalar_t* dw_hh = acc_hh.data_ptr<scalar_t>() + k * G * H;
        scalar_t* db = acc_b.data_ptr<scalar_t>() + k * G;
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t t0 = t / C * C;  // first step of t's chunk
          const bool cut_t = cut_p[t];
          const scalar_t s = scale_p[t];
          const scalar_t* g_ptr = g_all + (t * B + b0) * G;
          const scalar_t* cp_ptr = (t == 0 ? c0_p : c_all + (t - 1) * B * H) + b0 * H;
          const scalar_t* c_ptr = c_all + (t * B + b0) * H;
          scalar_t* dg_ptr = dgc + (t - t0) * nb * G;
          if (len) {  // dc_n of the rows whose last step is t
            for (int64_t b = 0; b < nb; ++b)
              if (len[b0 + b] - 1 == t)
                for (int64_t h = 0; h < H; ++h) dc_ptr[b * H + h] += dcn_all[(b0 + b) * H + h];
          }
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
          if (t == t0)  // the chunk [t0, t0 + C) is complete: fold it into the block's weight gradients
            cpu::fold_lstm_chunk<scalar_t>(dgc, t0, std::min(T, t0 + C) - t0, b0, nb, B, I, H, x_all, h0_p,
                                           y_all, wi, dx_all, dw_ih, dw_hh, db);
        }
      }
    });
  });

  if (len) cpu::add_zero_length_grads(len, dh_n, dc_n, dh0, dc);
  return {dx, sum_blocks(acc_ih), sum_blocks(acc_hh), sum_blocks(acc_b), dh0, dc};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) { m.impl("lstm_backward", &lstm_backward_cpu); }

}  // namespace fastrnn
