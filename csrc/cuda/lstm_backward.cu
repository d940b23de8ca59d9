// The LSTM layer's reverse sweep behind the C API: persistent kernel or one fused launch per step
// (lstm_step.cuh, lstm_launch.cuh).
#include "cuda/lstm_launch.cuh"

using fastrnn::cuda::BwdSeq;
using fastrnn::cuda::bf16;
using fastrnn::cuda::lstm_backward;

namespace {

template <class T>
int backward(const T* dy, const T* dh_n, const T* dc_n, const int64_t* lengths, const T* w_hh, const T* c0,
             const T* gates, const T* cs, const bool* cut, const T* scale, fastrnn::cuda::acc_t<T>* dG,
             fastrnn::cuda::acc_t<T>* dc, int64_t T_, int64_t B, int64_t H, int mode, void* stream) {
  BwdSeq<T> q;
  q.steps = T_;
  q.B = B;
  q.H = H;
  q.dy = dy;
  q.dh_n = dh_n;
  q.dc_n = dc_n;
  q.c0 = c0;
  q.gates = gates;
  q.cs = cs;
  q.scale = scale;
  q.len = lengths;
  q.cut = cut;
  q.dG = dG;
  q.dc = dc;
  return lstm_backward<T>(q, w_hh, mode, static_cast<cudaStream_t>(stream));
}

}  // namespace

extern "C" {

int fastrnn_lstm_backward_f32(const float* dy, const float* dh_n, const float* dc_n, const int64_t* lengths,
                              const float* w_hh, const float* c0, const float* gates, const float* cs,
                              const bool* cut, const float* scale, float* dG, float* dc, int64_t T, int64_t B,
                              int64_t H, int mode, void* stream) {
  return backward<float>(dy, dh_n, dc_n, lengths, w_hh, c0, gates, cs, cut, scale, dG, dc, T, B, H, mode, stream);
}
int fastrnn_lstm_backward_f64(const double* dy, const double* dh_n, const double* dc_n, const int64_t* lengths,
                              const double* w_hh, const double* c0, const double* gates, const double* cs,
                              const bool* cut, const double* scale, double* dG, double* dc, int64_t T, int64_t B,
                              int64_t H, int mode, void* stream) {
  return backward<double>(dy, dh_n, dc_n, lengths, w_hh, c0, gates, cs, cut, scale, dG, dc, T, B, H, mode, stream);
}
int fastrnn_lstm_backward_bf16(const void* dy, const void* dh_n, const void* dc_n, const int64_t* lengths,
                               const void* w_hh, const void* c0, const void* gates, const void* cs,
                               const bool* cut, const void* scale, float* dG, float* dc, int64_t T, int64_t B,
                               int64_t H, int mode, void* stream) {
  using P = const bf16*;
  return backward<bf16>(P(dy), P(dh_n), P(dc_n), lengths, P(w_hh), P(c0), P(gates), P(cs), cut, P(scale), dG, dc,
                        T, B, H, mode, stream);
}

}  // extern "C"
