// CPU only, shared by lstm_backward.cpp and sab_backward.cpp: the backward sweeps keep each thread's gate
// gradients for a chunk of steps only and fold every finished chunk into per-block weight-gradient
// accumulators (see the top of lstm_backward.cpp for why; lstm_step.h's fold_lstm_chunk folds the LSTM
// part). Here: how long a chunk is, and the fixed-order sum of the per-block accumulators.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace cpu
}  // namespace fastrnn
