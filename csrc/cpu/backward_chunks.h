// CPU only, shared by lstm_backward.cpp and sab_backward.cpp: the backward sweeps keep each thread's gate
// gradients for a chunk of steps only and fold every finished chunk into per-block weight-gradient
// accumulators (see the top of lstm_backward.cpp for why).
#pragma once

#include <ATen/ATen.h>

#include <fastrnn/cpu_blas.h>  // gemm<T>

#include <algorithm>
#include <cstdint>

namespace fastrnn {
namespace cpu {

// Steps per chunk, for a chunk of `bytes_per_step` (one block's gradient rows of one step). The sweep
// writes the chunk and the chunk's GEMMs read it back, so it should still be in the core's L2 (1 MiB here)
// then, next to W_hh (read every step, 256 KiB at H = 128) and the accumulators: it gets half of the L2,
// which is 16 steps at 16 rows per thread, H = 128, float32 (8 in float64). At most 64: the GEMMs go per
// step, so a longer chunk batches nothing more. Timing does not pick C: in a single-thread model of the
// LSTM sweep (16 rows, H = 128, float32) every C from 1 to 64 came within 3 % of the others.
inline int64_t chunk_steps(int64_t T, int64_t bytes_per_step) {
  const int64_t half_l2 = int64_t(512) << 10;
  return std::min(T, std::clamp<int64_t>(half_l2 / std::max<int64_t>(1, bytes_per_step), 1, 64));
}

// Σ_k acc[k] in block order k = 0, 1, ...: a fixed order, so reruns are bit-identical.
inline at::Tensor sum_blocks(const at::Tensor& acc) {
  at::Tensor s = at::zeros(acc.sizes().slice(1), acc.options());
  for (int64_t k = 0; k < acc.size(0); ++k) s.add_(acc[k]);
  return s;
}

// The LSTM part of a finished chunk: steps [t0, t0 + n) of rows [b0, b0 + R), whose gate gradients are
// dG (step-major, [n * R, 4H]). Accumulates dW_ih += dG_t^T x_t, dW_hh += dG_t^T h_{t-1} (h0 for t = 0),
// db += column sums of dG, and writes the block's dx rows dx_t = dG_t W_ih. x, y, dx are [T, B, .].
// A block's rows of x and h_{t-1} are not one strided matrix across steps, so the GEMMs go step by step
// (K = R): copying the chunk's rows into one matrix for a single GEMM with K = n * R measured slower
// (39 against 34 ms per 1000 steps of a 16-row block at H = 128, float32; MKL's small-K GEMM beats copy
// plus packing).
template <typename T>
void fold_lstm_chunk(const T* dG, int64_t t0, int64_t n, int64_t b0, int64_t R, int64_t B, int64_t I, int64_t H,
                     const T* x, const T* h0, const T* y, const T* w_ih, T* dx, T* dw_ih, T* dw_hh, T* db) {
  const int64_t G = 4 * H;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = t0 + i;
    const T* dG_t = dG + i * R * G;
    const T* h_prev = (t == 0 ? h0 : y + (t - 1) * B * H) + b0 * H;
    gemm<T>(true, false, G, I, R, T(1), dG_t, G, x + (t * B + b0) * I, I, T(1), dw_ih, I);
    gemm<T>(true, false, G, H, R, T(1), dG_t, G, h_prev, H, T(1), dw_hh, H);
    gemm<T>(false, false, R, I, G, T(1), dG_t, G, w_ih, I, T(0), dx + (t * B + b0) * I, I);
  }
  for (int64_t r = 0; r < n * R; ++r)
    for (int64_t g = 0; g < G; ++g) db[g] += dG[r * G + g];
}

}  // namespace cpu
}  // namespace fastrnn
