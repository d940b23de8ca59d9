// The LSTM cell pointwise pass on the GPU: one thread per (batch row, hidden unit), grid-stride, running
// the same per-element math as the CPU kernels (fastrnn/lstm_cell.h, fastrnn/reverse_sweep.h). Compile-only
// on this machine (no GPU); the CPU tests exercise those headers themselves.
#include <cuda_runtime.h>

#include "cuda/launchers.h"
#include "fastrnn/lstm_cell.h"
#include "fastrnn/reverse_sweep.h"

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 ? (b > 0 ? b : 1) : 65535);  // grid-stride covers the rest
}

template <class T>
__global__ void forward_kernel(T* gates, const T* c_prev, T* c, T* h, int64_t B, int64_t H) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < B * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    T* g = gates + b * 4 * H;
    fastrnn::lstm_cell_forward<fastrnn::ScalarMath>(g[j], g[H + j], g[2 * H + j], g[3 * H + j], c_prev[e], g[j],
                                                    g[H + j], g[2 * H + j], g[3 * H + j], c[e], h[e]);
  }
}

template <class T>
__global__ void backward_kernel(const T* dh, T* dc, const T* gates, const T* c_prev, const T* c, T* dgates,
                                int64_t B, int64_t H, bool cut, T carry_scale) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < B * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    const T* g = gates + b * 4 * H;
    T* dg = dgates + b * 4 * H;
    T dc_prev;
    fastrnn::lstm_cell_backward<fastrnn::ScalarMath>(dh[e], dc[e], g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                                     c_prev[e], c[e], dg[j], dg[H + j], dg[2 * H + j],
                                                     dg[3 * H + j], dc_prev);
    dc[e] = fastrnn::carried_dc(dc_prev, cut, carry_scale);  // a cut is a detach: not even NaN crosses it
  }
}

template <class T>
int launch_forward(T* gates, const T* c_prev, T* c, T* h, int64_t B, int64_t H, void* stream) {
  forward_kernel<T><<<blocks_for(B * H), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(gates, c_prev, c, h, B, H);
  return static_cast<int>(cudaGetLastError());
}

template <class T>
int launch_backward(const T* dh, T* dc, const T* gates, const T* c_prev, const T* c, T* dgates, int64_t B,
                    int64_t H, bool cut, T carry_scale, void* stream) {
  backward_kernel<T><<<blocks_for(B * H), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      dh, dc, gates, c_prev, c, dgates, B, H, cut, carry_scale);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

int fastrnn_lstm_pointwise_forward_f32(float* gates, const float* c_prev, float* c, float* h, int64_t B,
                                       int64_t H, void* stream) {
  return launch_forward(gates, c_prev, c, h, B, H, stream);
}
int fastrnn_lstm_pointwise_forward_f64(double* gates, const double* c_prev, double* c, double* h, int64_t B,
                                       int64_t H, void* stream) {
  return launch_forward(gates, c_prev, c, h, B, H, stream);
}
int fastrnn_lstm_pointwise_backward_f32(const float* dh, float* dc, const float* gates, const float* c_prev,
                                        const float* c, float* dgates, int64_t B, int64_t H, bool cut,
                                        float carry_scale, void* stream) {
  return launch_backward(dh, dc, gates, c_prev, c, dgates, B, H, cut, carry_scale, stream);
}
int fastrnn_lstm_pointwise_backward_f64(const double* dh, double* dc, const double* gates,
                                        const double* c_prev, const double* c, double* dgates, int64_t B,
                                        int64_t H, bool cut, double carry_scale, void* stream) {
  return launch_backward(dh, dc, gates, c_prev, c, dgates, B, H, cut, carry_scale, stream);
}

}  // extern "C"
