// The strided GEMM of gemm.cuh behind the C API (launchers.h): the variants the sweeps use.
#include "cuda/gemm.cuh"
#include "cuda/launchers.h"

using fastrnn::cuda::bf16;
using fastrnn::cuda::launch_gemm;

extern "C" {

int fastrnn_gemm_f32(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sam, int64_t sak,
                     const float* B, int64_t sbk, int64_t sbn, float beta, float* C, int64_t ldc, void* stream) {
  return launch_gemm(M, N, K, alpha, A, sam, sak, B, sbk, sbn, beta, C, ldc, static_cast<cudaStream_t>(stream));
}
int fastrnn_gemm_f64(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t sam, int64_t sak,
                     const double* B, int64_t sbk, int64_t sbn, double beta, double* C, int64_t ldc, void* stream) {
  return launch_gemm(M, N, K, alpha, A, sam, sak, B, sbk, sbn, beta, C, ldc, static_cast<cudaStream_t>(stream));
}
int fastrnn_gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t sam, int64_t sak,
                      const void* B, int64_t sbk, int64_t sbn, float beta, float* C, int64_t ldc, void* stream) {
  return launch_gemm(M, N, K, alpha, static_cast<const bf16*>(A), sam, sak, static_cast<const bf16*>(B), sbk, sbn,
                     beta, C, ldc, static_cast<cudaStream_t>(stream));
}

}  // extern "C"
