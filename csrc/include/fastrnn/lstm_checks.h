// Input validation shared by the LSTM sequence ops: every tensor argument is checked for device, dtype,
// shape and contiguity, and the error names the argument (the ops index raw pointers, so a wrong
// stride would silently read garbage rather than fail).
#pragma once

#include <ATen/ATen.h>

namespace fastrnn {

struct LstmDims {
  int64_t T, B, I, H;
};

// A CPU tensor of `dtype`, contiguous, with exactly the shape `sizes`.
inline void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef sizes) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, " (the dtype of x), got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == sizes, name, " must have shape ", sizes, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The per-layer arguments of docs/CONTRACT.md (biases are checked by the forward only).
inline LstmDims check_lstm_args(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
                                const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 3, "x must be [T, B, I], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) >= 1, "x must have at least one time step (T >= 1), got shape ", x.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0 && w_hh.size(0) == 4 * w_hh.size(1),
              "w_hh must be [4H, H], got shape ", w_hh.sizes());
  const LstmDims d{x.size(0), x.size(1), x.size(2), w_hh.size(1)};
  const auto dt = x.scalar_type();
  check_tensor(x, "x", dt, {d.T, d.B, d.I});
  check_tensor(w_ih, "w_ih", dt, {4 * d.H, d.I});
  check_tensor(w_hh, "w_hh", dt, {4 * d.H, d.H});
  check_tensor(h0, "h0", dt, {d.B, d.H});
  check_tensor(c0, "c0", dt, {d.B, d.H});
  check_tensor(cut, "cut", at::kBool, {d.T});
  check_tensor(scale, "scale", dt, {d.T});
  return d;
}

}  // namespace fastrnn
