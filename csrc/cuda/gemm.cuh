// A small strided GEMM for the per-step products of the sweeps (the launch-per-step path: the SAB query,
// slot projections and their backward, the recurrent gradient of the SAB backward):
//   C[m * ldc + n] = alpha * sum_k A[m * sam + k * sak] * B[k * sbk + n * sbn]  (+ beta * C when beta != 0)
// Strides give transposes for free. Accumulates in acc_t of C's type (float for bfloat16 operands).
// launch_gemm_batched runs `batch` such products in one launch (grid z), the z-th with A + z * saz and
// C + z * scz (B shared).
// beta == 0 never reads C, so C may hold garbage (even NaN) then.
// Tile: 32 x 32 outputs per block of 16 x 16 threads (2 x 2 per thread), K in chunks of 32 through shared
// memory. Bound by shared-memory bandwidth, not tensor cores: these products are small ([B, <=4H] x
// [<=4H, <=H] per step); the large ones (input projection, weight gradients) go to cuBLAS via torch.
#pragma once

#include "cuda/common.cuh"

namespace fastrnn {
namespace cuda {

constexpr int kGemmTile = 32, kGemmK = 32;

template <class TA, class TB, class TC>
__global__ void __launch_bounds__(256) gemm_kernel(int64_t M, int64_t N, int64_t K, acc_t<TC> alpha, const TA* A,
                                                   int64_t sam, int64_t sak, const TB* B, int64_t sbk, int64_t sbn,
                                                   acc_t<TC> beta, TC* C, int64_t ldc, int64_t saz, int64_t scz) {
  using Acc = acc_t<TC>;
  A += int64_t(blockIdx.z) * saz;
  C += int64_t(blockIdx.z) * scz;
  __shared__ Acc As[kGemmTile][kGemmK + 1];
  __shared__ Acc Bs[kGemmK][kGemmTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = int64_t(blockIdx.y) * kGemmTile, n0 = int64_t(blockIdx.x) * kGemmTile;
  Acc acc[2][2] = {{Acc(0), Acc(0)}, {Acc(0), Acc(0)}};
  for (int64_t k0 = 0; k0 < K; k0 += kGemmK) {
    for (int e = threadIdx.x; e < kGemmTile * kGemmK; e += 256) {
      const int r = e / kGemmK, kk = e % kGemmK;  // A: k fastest (coalesced when sak == 1)
      const int64_t m = m0 + r, k = k0 + kk;
      As[r][kk] = (m < M && k < K) ? Acc(to_acc(A[m * sam + k * sak])) : Acc(0);
      const int kb = e / kGemmTile, c = e % kGemmTile;  // B: n fastest (coalesced when sbn == 1)
      const int64_t kB = k0 + kb, n = n0 + c;
      Bs[kb][c] = (kB < K && n < N) ? Acc(to_acc(B[kB * sbk + n * sbn])) : Acc(0);
    }
    __syncthreads();
    for (int kk = 0; kk < kGemmK; ++kk) {
      const Acc a0 = As[ty][kk], a1 = As[ty + 16][kk];
      const Acc b0 = Bs[kk][tx], b1 = Bs[kk][tx + 16];
      acc[0][0] += a0 * b0;
      acc[0][1] += a0 * b1;
      acc[1][0] += a1 * b0;
      acc[1][1] += a1 * b1;
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int jj = 0; jj < 2; ++jj) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * jj;
      if (m < M && n < N) {
        Acc v = alpha * acc[i][jj];
        if (beta != Acc(0)) v += beta * Acc(to_acc(C[m * ldc + n]));
        C[m * ldc + n] = from_acc<TC>(v);
      }
    }
}

template <class TA, class TB, class TC>
int launch_gemm(int64_t M, int64_t N, int64_t K, acc_t<TC> alpha, const TA* A, int64_t sam, int64_t sak,
                const TB* B, int64_t sbk, int64_t sbn, acc_t<TC> beta, TC* C, int64_t ldc, cudaStream_t stream) {
  if (M == 0 || N == 0) return 0;
  const int64_t gy = ceil_div(M, kGemmTile), gx = ceil_div(N, kGemmTile);
  if (gy > 65535 || gx > 2147483647) return static_cast<int>(cudaErrorInvalidValue);
  gemm_kernel<TA, TB, TC><<<dim3(unsigned(gx), unsigned(gy)), 256, 0, stream>>>(M, N, K, alpha, A, sam, sak, B, sbk,
                                                                               sbn, beta, C, ldc, 0, 0);
  return last_error();
}

template <class TA, class TB, class TC>
int launch_gemm_batched(int64_t batch, int64_t M, int64_t N, int64_t K, acc_t<TC> alpha, const TA* A, int64_t sam,
                        int64_t sak, int64_t saz, const TB* B, int64_t sbk, int64_t sbn, acc_t<TC> beta, TC* C,
                        int64_t ldc, int64_t scz, cudaStream_t stream) {
  if (batch == 0 || M == 0 || N == 0) return 0;
  const int64_t gy = ceil_div(M, kGemmTile), gx = ceil_div(N, kGemmTile);
  if (gy > 65535 || gx > 2147483647) return static_cast<int>(cudaErrorInvalidValue);
  constexpr int64_t kMaxZ = 65535;
  for (int64_t z0 = 0; z0 < batch; z0 += kMaxZ) {
    const int64_t gz = batch - z0 < kMaxZ ? batch - z0 : kMaxZ;
    gemm_kernel<TA, TB, TC><<<dim3(unsigned(gx), unsigned(gy), unsigned(gz)), 256, 0, stream>>>(
        M, N, K, alpha, A + z0 * saz, sam, sak, B, sbk, sbn, beta, C + z0 * scz, ldc, saz, scz);
    if (const int err = last_error()) return err;
  }
  return 0;
}

}  // namespace cuda
}  // namespace fastrnn
