// What every fastrnn CUDA kernel shares: the dtype traits (bfloat16 computes in float32, float32 in float32,
// float64 in float64), conversions that work under torch's -D__CUDA_NO_BFLOAT16_CONVERSIONS__, coherent
// loads for data written earlier in the same (persistent) kernel, and block reductions.
// Device-only helpers; the per-element math shared with the CPU is in csrc/include/fastrnn/*.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace fastrnn {
namespace cuda {

using bf16 = __nv_bfloat16;

// The accumulation type of a storage type.
template <class T>
struct AccOf {
  using type = T;
};
template <>
struct AccOf<bf16> {
  using type = float;
};
template <class T>
using acc_t = typename AccOf<T>::type;

// storage -> accumulation and back (round to nearest even for bfloat16).
__device__ __forceinline__ float to_acc(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <class T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ bf16 from_acc<bf16>(float v) { return __float2bfloat16(v); }

// A load that bypasses the non-coherent read-only path and L1 (ld.global.cg): for tensors that other
// blocks of the same persistent kernel wrote before a grid barrier.
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double load_cg(const double* p) { return __ldcg(p); }
__device__ __forceinline__ bf16 load_cg(const bf16* p) {
  return __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;  // lane 0 holds the sum (fixed order: deterministic)
}

// Sum of one value per thread over the block; every thread gets the result. `red` is >= 33 entries of
// shared memory. blockDim.x must be a multiple of 32. Contains __syncthreads: call from all threads.
template <class A>
__device__ __forceinline__ A block_sum(A v, A* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    A s = A(0);
    for (int w = 0; w < nwarps; ++w) s += red[w];  // warp order: deterministic
    red[32] = s;
  }
  __syncthreads();
  return red[32];
}

// Dot product of two vectors of length n over the block (a and b in storage types).
template <class A, class TA, class TB>
__device__ __forceinline__ A block_dot(const TA* a, const TB* b, int64_t n, A* red) {
  A s = A(0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += A(to_acc(a[i])) * A(to_acc(b[i]));
  return block_sum(s, red);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int last_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace cuda
}  // namespace fastrnn
