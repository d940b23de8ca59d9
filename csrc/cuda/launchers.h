// C launcher API of fastrnn's CUDA kernels (libfastrnn_cuda.so). Plain C types only: the CUDA library is
// built without torch headers (the CPU torch wheel ships none for CUDA), so a future torch-side
// registration calls these with raw device pointers and a cudaStream_t passed as void*.
// Every launcher returns the cudaError_t of the launch (0 = cudaSuccess), as an int.
// Layouts are the CPU op's: gates [B, 4H] (i, f, g, o blocks per row), c/h rows [B, H], all contiguous.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One step's cell pointwise forward: gates (pre-activations in, activated i,f,g,o out), c_t, h_t.
int fastrnn_lstm_pointwise_forward_f32(float* gates, const float* c_prev, float* c, float* h, int64_t B,
                                       int64_t H, void* stream);
int fastrnn_lstm_pointwise_forward_f64(double* gates, const double* c_prev, double* c, double* h, int64_t B,
                                       int64_t H, void* stream);

// One step's cell pointwise backward: dgates out; dc in (from step t+1), out (into step t-1: times
// carry_scale, or exactly 0 when cut), as in the CPU op.
int fastrnn_lstm_pointwise_backward_f32(const float* dh, float* dc, const float* gates, const float* c_prev,
                                        const float* c, float* dgates, int64_t B, int64_t H, bool cut,
                                        float carry_scale, void* stream);
int fastrnn_lstm_pointwise_backward_f64(const double* dh, double* dc, const double* gates,
                                        const double* c_prev, const double* c, double* dgates, int64_t B,
                                        int64_t H, bool cut, double carry_scale, void* stream);

#ifdef __cplusplus
}
#endif
