// CPU only: the LSTM part of a layer in bfloat16 mixed precision (docs/SPEC.md "bfloat16 mixed precision"),
// shared by both mixed layer ops (lstm_forward.cpp / lstm_backward.cpp: lstm_mixed_*, sab_forward.cpp /
// sab_backward.cpp: sab_mixed_*). The same per-thread interface as lstm_step.h's float32/float64 LstmCell and
// LstmBackwardThread, so that one sweep template runs either:
//   MixedLstmCell            step t of a block: the input projection x_t W_ih^T + b (per step, on the kernel)
//                            then lstm_step_forward with the recurrent product h_{t-1} W_hh^T on the kernel
//   MixedLstmBackward        the call's weights rounded once (and the emulated kernel's rounded operands);
//   MixedLstmBackwardThread  one thread's recurrent product dG W_hh and its chunk fold (bf16_fold.h)
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bf16_fold.h"
#include "bf16_gemm.h"
#include "checks.h"
#include "lstm_step.h"

namespace fastrnn {
namespace cpu {

// The argument checks of a layer op `op`: its mixed form (gemm, the kernel name, given) takes float32
// tensors only, the float form float32 and float64.
inline ArgChecker layer_checker(const char* op, const std::string* gemm) {
  return gemm ? ArgChecker(op, at::kCPU, {at::kFloat}) : ArgChecker(op, at::kCPU);
}

// The kernel name of an op implemented once for both its schemas, the float one (no Gemm) and the mixed
// one (Gemm = std::string, the name last): nullptr, or the name.
template <class... Gemm>
inline const std::string* kernel_name(const Gemm&... gemm) {
  static_assert(sizeof...(Gemm) <= 1, "one kernel name at most");
  const std::string* name = nullptr;
  ((name = &gemm), ...);
  return name;
}

// One thread's forward step of the LSTM part. The input projection goes step by step inside each block's
// time loop, on the same kernel as the recurrent product: one multi-threaded float32 GEMM up front (the
// float32 ops' input_projection) would need x rounded in a copy first. L.gates of step t receives
// b_ih + b_hh (bias: their sum [4H], nullptr without biases) + r(x_t) r(W_ih)^T, then lstm_step_forward adds
// r(h_{t-1}) r(W_hh)^T and runs the cell.
class MixedLstmCell {
 public:
  MixedLstmCell(const LstmLayer<float>& L, const Bf16Weights& w_ih, const Bf16Weights& w_hh, const float* bias)
      : L_(L), projection_(w_ih), recurrent_(w_hh), bias_(bias) {}

  void operator()(int64_t t, int64_t b0, int64_t nb) {
    const int64_t I = L_.I, G = 4 * L_.H;
    float* g = L_.gates + L_.row(t, b0, G);
    if (bias_)
      for (int64_t b = 0; b < nb; ++b) std::copy_n(bias_, G, g + b * G);
    projection_(L_.x + L_.row(t, b0, I), nb, I, 1.0f, bias_ ? 1.0f : 0.0f, g, G);
    lstm_step_forward(L_, t, b0, nb, recurrent_);
  }

 private:
  const LstmLayer<float>& L_;
  Bf16Product projection_, recurrent_;
  const float* bias_;
};

// b_ih + b_hh, the bias MixedLstmCell adds (None without biases).
inline std::optional<at::Tensor> summed_bias(const std::optional<at::Tensor>& b_ih,
                                             const std::optional<at::Tensor>& b_hh) {
  return b_ih ? std::optional(*b_ih + *b_hh) : std::nullopt;
}

// One thread's part of the mixed backward: `recurrent` is dh_{t-1} = r(dG) r(W_hh) for lstm_step_backward;
// fold() folds a finished chunk of gate gradients into the block's dW_ih, dW_hh, db and dx rows, as
// fold_lstm_chunk does for float32 (the bias gradient from the unrounded dG).
struct MixedLstmBackwardThread {
  Bf16Kernel kernel;
  Bf16Product recurrent;
  std::optional<Bf16Product> dx_product;  // avx512bf16 / mkl: dx = r(dG) r(W_ih)
  float* dg_round;                        // emulated: the block's chunk of r(dG) [C * R, 4H]
  std::vector<uint16_t> scratch;

  void fold(const LstmLayer<float>& L, const float* dG, int64_t t0, int64_t n, int64_t b0, int64_t R, float* dx,
            float* dw_ih, float* dw_hh, float* db) {
    if (dx_product) {
      fold_lstm_chunk_bf16(kernel, L, dG, t0, n, b0, R, dx, dw_ih, dw_hh, db, *dx_product, scratch);
      return;
    }
    round_to_bf16_float(dG, dg_round, n * R * 4 * L.H);
    fold_lstm_gemms(L, dg_round, t0, n, b0, R, dx, dw_ih, dw_hh);
    add_column_sums(dG, n * R, 4 * L.H, db);
  }
};

// The call-wide part of the mixed backward. avx512bf16 and mkl fold whole chunks on their bfloat16 GEMM
// (bf16_fold.h), rounding as they convert; emulated folds with the float32 BLAS on operands rounded
// beforehand: the caller builds its LstmLayer from operand() of x, W_ih, h0 and the h_{t-1} it feeds back
// (the recurrent product rounds its own operands on every kernel), and dG is rounded per chunk into the
// buffer of `blocks` chunks of `chunk_rows` x 4H floats.
class MixedLstmBackward {
 public:
  MixedLstmBackward(Bf16Kernel kernel, const at::Tensor& w_ih, const at::Tensor& w_hh, int64_t blocks,
                    int64_t chunk_rows)
      : kernel_(kernel),
        w_hh_t_(kernel, w_hh.t().contiguous()),
        chunk_rows_(chunk_rows),
        G_(w_hh.size(0)) {
    if (packed()) w_ih_t_.emplace(kernel, w_ih.t().contiguous());
    else dg_round_ = at::empty({blocks, chunk_rows, G_}, w_hh.options());
  }

  // t as the float32 fold reads it: rounded for the emulated kernel, t itself for the packed ones.
  at::Tensor operand(const at::Tensor& t) const { return packed() ? t : rounded(t); }

  // Block k's thread.
  MixedLstmBackwardThread thread(int64_t k) const {
    return {kernel_, Bf16Product(w_hh_t_), packed() ? std::optional(Bf16Product(*w_ih_t_)) : std::nullopt,
            packed() ? nullptr : dg_round_.data_ptr<float>() + k * chunk_rows_ * G_, {}};
  }

  // The chunk bytes per step and row beyond dG itself (chunk_steps): the emulated kernel's r(dG).
  static int64_t extra_chunk_bytes(int64_t G) { return G * int64_t(sizeof(float)); }

 private:
  // avx512bf16 and mkl fold on their own bfloat16 GEMM; emulated on the float32 BLAS
  bool packed() const { return kernel_ != Bf16Kernel::Emulated; }

  Bf16Kernel kernel_;
  Bf16Weights w_hh_t_;                   // dh = r(dG) r(W_hh): B = W_hh^T [H, 4H]
  std::optional<Bf16Weights> w_ih_t_;    // dx = r(dG) r(W_ih): B = W_ih^T [I, 4H]
  at::Tensor dg_round_;
  int64_t chunk_rows_, G_;
};

}  // namespace cpu
}  // namespace fastrnn
