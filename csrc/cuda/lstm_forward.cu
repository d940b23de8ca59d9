// The LSTM layer's forward sweep behind the C API: persistent kernel or one fused launch per step
// (lstm_step.cuh, lstm_launch.cuh).
#include "cuda/lstm_launch.cuh"

using fastrnn::cuda::bf16;
using fastrnn::cuda::lstm_forward;
using fastrnn::cuda::persistent_units;

extern "C" {

int fastrnn_lstm_forward_f32(const float* xg, const float* w_hh, const float* h0, const float* c0, float* gates,
                             float* cs, float* y, int64_t T, int64_t B, int64_t H, int mode, void* stream) {
  return lstm_forward<float>(xg, w_hh, h0, c0, gates, cs, y, T, B, H, mode, static_cast<cudaStream_t>(stream));
}
int fastrnn_lstm_forward_f64(const double* xg, const double* w_hh, const double* h0, const double* c0,
                             double* gates, double* cs, double* y, int64_t T, int64_t B, int64_t H, int mode,
                             void* stream) {
  return lstm_forward<double>(xg, w_hh, h0, c0, gates, cs, y, T, B, H, mode, static_cast<cudaStream_t>(stream));
}
int fastrnn_lstm_forward_bf16(const float* xg, const void* w_hh, const void* h0, const void* c0, void* gates,
                              void* cs, void* y, int64_t T, int64_t B, int64_t H, int mode, void* stream) {
  return lstm_forward<bf16>(xg, static_cast<const bf16*>(w_hh), static_cast<const bf16*>(h0),
                            static_cast<const bf16*>(c0), static_cast<bf16*>(gates), static_cast<bf16*>(cs),
                            static_cast<bf16*>(y), T, B, H, mode, static_cast<cudaStream_t>(stream));
}

int fastrnn_lstm_persistent_units(int64_t B, int64_t H, int dtype, int forward) {
  if (dtype == 1) return persistent_units<double>(B, H, forward != 0);
  if (dtype == 2) return persistent_units<bf16>(B, H, forward != 0);
  return persistent_units<float>(B, H, forward != 0);
}

}  // extern "C"
