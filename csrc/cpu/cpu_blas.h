// CPU only: BLAS for the time loops, which split the batch into blocks of rows, one per thread
// (for_each_row_block), and run small GEMMs on each worker every step.
//
// gemm<T>: a row-major GEMM on raw pointers, calling the BLAS that libtorch_cpu exports (MKL on x86
// wheels, OpenBLAS on aarch64; both export the Fortran symbols, LP64). Going through at::mm_out instead
// would build tensor views and pass the dispatcher every step, on threads that do not carry the caller's
// dispatch state.
//
// SequentialBlasGuard: makes BLAS calls on the current thread single-threaded for the guard's lifetime.
// Why: each worker thread calls a GEMM per time step. torch's MKL is set up with mkl_set_dynamic(false) by at::set_num_threads, so
// MKL does not notice it is already inside a parallel region: every small GEMM started its own team of
// threads. Measured here (2 threads, 300 GEMMs [16x128]x[128x512] per thread): 42-57 ms of CPU and
// 63-87 ms wall without this guard, 14 ms of CPU (equal to one thread doing all the work) with it.
//
// MKL_Set_Num_Threads_Local is MKL's per-thread setting. It is declared weak: with a torch built on
// MKL (the x86 wheels) the dynamic linker finds it in libtorch_cpu; elsewhere it stays null and the guard
// does nothing.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

extern "C" int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

namespace fastrnn {
namespace cpu {

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C. op(A) is [M,K] (A stored [K,M] if ta);
// op(B) is [K,N] (B stored [N,K] if tb). Column-major BLAS computes C^T = op(B)^T op(A)^T,
// and a row-major matrix read column-major is its transpose, so the flags pass through.
// beta = 0 never reads C (BLAS semantics), so C may be uninitialised then.
template <typename T>
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // e.g. I = 0: BLAS rejects a leading dimension of 0. C = beta * C (beta 0 ignores C)
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < N; ++c) C[r * ldc + c] = beta == T(0) ? T(0) : beta * C[r * ldc + c];
    return;
  }
  TORCH_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && lda <= INT32_MAX &&
                  ldb <= INT32_MAX && ldc <= INT32_MAX,
              "fastrnn: matrix too large for 32-bit BLAS");
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int m = int(M), n = int(N), k = int(K), la = int(lda), lb = int(ldb), lc = int(ldc);
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ctb, &cta, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
  } else {
    dgemm_(&ctb, &cta, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
  }
}

class SequentialBlasGuard {
 public:
  SequentialBlasGuard() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);  // 0 = back to the global setting
  }
  SequentialBlasGuard(const SequentialBlasGuard&) = delete;
  SequentialBlasGuard& operator=(const SequentialBlasGuard&) = delete;

 private:
  int previous_;
};

// One block of batch rows per thread: each thread runs the whole time loop on its block, with no
// synchronisation per step (a barrier per step costs more than the step when the machine is busy).
inline int64_t rows_per_thread(int64_t B) {
  const int64_t n = at::get_num_threads();
  return std::max<int64_t>(1, (B + n - 1) / n);
}

// Calls fn(k, b0, nb) for every block k of rows [b0, b0 + nb), blocks of rows_per_thread(B) rows, in
// parallel, with the block's BLAS calls single-threaded on its thread (SequentialBlasGuard). The blocks
// depend only on B and the thread count, so reruns at the same thread count are bit-identical.
template <class F>
inline void for_each_row_block(int64_t B, const F& fn) {
  const int64_t R = rows_per_thread(B), nblocks = (B + R - 1) / R;
  at::parallel_for(0, nblocks, 1, [&](int64_t k0, int64_t k1) {
    const SequentialBlasGuard one_blas_thread;  // this thread is already one of the team
    for (int64_t k = k0; k < k1; ++k) fn(k, k * R, std::min(B, (k + 1) * R) - k * R);
  });
}

}  // namespace cpu
}  // namespace fastrnn
