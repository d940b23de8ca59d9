// CPU only: lstm_step.h's fold_lstm_chunk for the bfloat16 mixed path on the avx512bf16 and mkl kernels
// (bf16_gemm.h). The same sums (dW_ih += r(dG)^T r(x), dW_hh += r(dG)^T r(h_{t-1}), dx = r(dG) r(W_ih),
// db += column sums of dG, unrounded), but the weight gradients of a whole chunk of steps are one GEMM each
// (accumulate_outer, K = steps x rows) instead of one float32 GEMM per step with K = the block's rows.
// The emulated kernel folds with fold_lstm_chunk on operands rounded beforehand.
#pragma once

#include <cstdint>
#include <vector>

#include "bf16_gemm.h"
#include "lstm_step.h"

namespace fastrnn {
namespace cpu {

// Steps [t0, t0 + n) of rows [b0, b0 + R) with their gate gradients dG (step-major [n * R, 4H], float32,
// unrounded). dx_product multiplies by W_ih (Bf16Weights of W_ih^T [I, 4H]).
inline void fold_lstm_chunk_bf16(Bf16Kernel kernel, const LstmLayer<float>& L, const float* dG, int64_t t0, int64_t n, int64_t b0,
                                 int64_t R, float* dx, float* dw_ih, float* dw_hh, float* db,
                                 Bf16Product& dx_product, std::vector<uint16_t>& scratch) {
  const int64_t I = L.I, H = L.H, G = 4 * H;
  // row k of the chunk: step t0 + k / R, batch row b0 + k % R
  const auto dg_row = [&](int64_t k) { return dG + k * G; };
  const auto x_row = [&](int64_t k) { return L.x + L.row(t0 + k / R, b0, I) + k % R * I; };
  const auto h_row = [&](int64_t k) { return L.h_prev(t0 + k / R, b0) + k % R * H; };
  accumulate_outer(kernel, n * R, G, I, dg_row, x_row, dw_ih, I, scratch);
  accumulate_outer(kernel, n * R, G, H, dg_row, h_row, dw_hh, H, scratch);
  for (int64_t i = 0; i < n; ++i) dx_product(dG + i * R * G, R, G, 1.0f, 0.0f, dx + L.row(t0 + i, b0, I), I);
  add_column_sums(dG, n * R, G, db);
}

}  // namespace cpu
}  // namespace fastrnn
