// CPU only: the GEMMs of the bfloat16 mixed-precision LSTM (docs/SPEC.md "bfloat16 mixed precision"):
// C = alpha * r(A) r(B)^T + beta * C with float32 A, B, C, where r rounds to bfloat16 (to nearest even, as
// torch's .bfloat16()) and the products are summed in float32. A product of two bfloat16 values is exact in
// float32, so every kernel below computes the same math; results differ between kernels only in the order
// of the float32 sums (and in float32 denormals: the AVX512-BF16 instructions flush them).
//
// The kernels (Bf16Kernel), chosen per call by name (the op's `gemm` argument):
//   emulated    r(A), r(B) kept as float32, multiplied by the float32 BLAS (cpu_blas.h): every CPU.
//   mkl         MKL's cblas_gemm_bf16bf16f32 (bfloat16 operands, float32 C), exported by libtorch_cpu on
//               x86 builds; MKL runs it on AMX tiles where the CPU has them (Sapphire Rapids and later).
//               On AMD Zen 4 it measured 55-73 GFLOP/s (its AVX2 code path), below float32 sgemm.
//   avx512bf16  our register-blocked kernel on _mm512_dpbf16_ps (bf16_dpbf16.cpp), B packed once per
//               call in the pair-interleaved layout the instruction reads.
//   auto        mkl where AMX is present, else avx512bf16 where the CPU has AVX512_BF16, else emulated.
// A kernel the CPU cannot run is refused by name (bf16_kernel), never run.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fastrnn {
namespace cpu {

enum class Bf16Kernel { Emulated, Mkl, Avx512Bf16 };

// What this CPU (and this torch's BLAS, and this build) can run; the op reports them
// (fastrnn::bf16_capabilities). cpu_has_avx512_bf16: the CPU has AVX512_BF16 and the library was built
// with the avx512bf16 kernel (FASTRNN_CPU_CAPABILITY=AVX512 on x86-64: dpbf16_built).
bool cpu_has_avx512_bf16();
bool dpbf16_built();
bool cpu_has_amx_bf16();
bool mkl_bf16_gemm_available();

// The kernel named `name` ("auto", "emulated", "mkl", "avx512bf16"); `op` starts the error message for an
// unknown name or a kernel this machine cannot run.
Bf16Kernel bf16_kernel(const std::string& name, const char* op);

// B [N, K] (float32, row-major), rounded to bfloat16 once in the layout `kernel` reads; then multiply()
// any number of times, from any thread.
class Bf16Weights {
 public:
  Bf16Weights(Bf16Kernel kernel, const at::Tensor& b);

  // C[M, N] = alpha * r(A) r(B)^T + beta * C, A [M, K] with row stride lda, C with row stride ldc; beta = 0
  // never reads C. `scratch` is the caller's (one per thread), resized here to hold r(A).
  void multiply(const float* A, int64_t M, int64_t lda, float alpha, float beta, float* C, int64_t ldc,
                std::vector<uint16_t>& scratch) const;

  int64_t N, K;

 private:
  Bf16Kernel kernel_;
  int64_t Kp_, Np_;   // avx512bf16: K rounded up to even, N up to a multiple of 16 (zero padding)
  at::Tensor b_;      // emulated: r(B) float32 [N, K]; mkl: bfloat16 [N, K]; avx512bf16: bfloat16 [Kp/2, Np, 2]
};

// One thread's product with fixed weights, called as the float32 GEMM of lstm_step.h is:
// (A, M, lda, alpha, beta, C, ldc).
class Bf16Product {
 public:
  explicit Bf16Product(const Bf16Weights& w) : w_(w) {}
  void operator()(const float* A, int64_t M, int64_t lda, float alpha, float beta, float* C, int64_t ldc) {
    w_.multiply(A, M, lda, alpha, beta, C, ldc, scratch_);
  }

 private:
  const Bf16Weights& w_;
  std::vector<uint16_t> scratch_;
};

// dst[i] = r(src[i]) as float32, n values (src == dst allowed).
void round_to_bf16_float(const float* src, float* dst, int64_t n);

// t rounded to bfloat16 and back to float32 (a new tensor): the operands of the float32 GEMMs.
inline at::Tensor rounded(const at::Tensor& t) { return t.to(at::kBFloat16).to(at::kFloat); }

// The avx512bf16 kernel (bf16_dpbf16.cpp): C[M, N] = alpha * A Bp + beta * C (beta = 0: C unread), Bp
// bfloat16 packed [Kp/2, Np, 2] (Kp even, Np a multiple of 16 >= N, zero padding), A bfloat16 with the pair
// (A[m, 2p], A[m, 2p + 1]) at A + m * a_row + p * a_pair (row-major [M, Kp]: a_row = Kp, a_pair = 2;
// pair-interleaved [Kp/2, M, 2]: a_row = 2, a_pair = 2 M). Only called where cpu_has_avx512_bf16().
void dpbf16_gemm(int64_t M, int64_t N, int64_t Kp, int64_t Np, float alpha, const uint16_t* A, int64_t a_row,
                 int64_t a_pair, const uint16_t* Bp, float beta, float* C, int64_t ldc);

// dst[2 i] = r(row0[i]), dst[2 i + 1] = r(row1[i]) (0 if row1 is null) for i < n, then zero pairs up to
// n_padded: one pair-row of the packed layout. Only called where cpu_has_avx512_bf16().
void pack_pair_rows(const float* row0, const float* row1, int64_t n, int64_t n_padded, uint16_t* dst);

// src rows [M, n] (row stride lda) -> r(src) as bfloat16 in dst [M, ld] (ld >= n; columns n.. zeroed).
void round_rows(const float* src, int64_t M, int64_t n, int64_t lda, uint16_t* dst, int64_t ld);

// MKL's C[M, N] += A^T B, A bfloat16 [K, M], B bfloat16 [K, N], both row-major. mkl kernel only.
void mkl_gemm_tn_accumulate(int64_t M, int64_t N, int64_t K, const uint16_t* A, const uint16_t* B, float* C,
                            int64_t ldc);

// C[M, N] += Σ_k r(a(k))^T r(b(k)) over k < K, a(k) -> float32 row [M], b(k) -> float32 row [N]: a weight
// gradient's sum over the rows of a chunk of steps, as one GEMM with K = steps x rows (per step, K would
// be the block's 16-32 rows and C would be read and written once per step). The mkl and avx512bf16
// kernels (the emulated one folds with the float32 BLAS: bf16_fold.h).
template <class RowA, class RowB>
void accumulate_outer(Bf16Kernel kernel, int64_t K, int64_t M, int64_t N, const RowA& a, const RowB& b, float* C,
                      int64_t ldc, std::vector<uint16_t>& scratch) {
  if (K == 0 || M == 0 || N == 0) return;
  if (kernel == Bf16Kernel::Mkl) {
    scratch.resize(K * (M + N));
    uint16_t* A = scratch.data();
    uint16_t* Bm = A + K * M;
    for (int64_t k = 0; k < K; ++k) {
      round_rows(a(k), 1, M, M, A + k * M, M);
      round_rows(b(k), 1, N, N, Bm + k * N, N);
    }
    mkl_gemm_tn_accumulate(M, N, K, A, Bm, C, ldc);
    return;
  }
  const int64_t pairs = (K + 1) / 2, Np = (N + 15) / 16 * 16;
  scratch.resize(pairs * 2 * (M + Np));
  uint16_t* A = scratch.data();
  uint16_t* Bp = A + pairs * 2 * M;
  for (int64_t p = 0; p < pairs; ++p) {
    const bool full = 2 * p + 1 < K;
    pack_pair_rows(a(2 * p), full ? a(2 * p + 1) : nullptr, M, M, A + p * 2 * M);
    pack_pair_rows(b(2 * p), full ? b(2 * p + 1) : nullptr, N, Np, Bp + p * 2 * Np);
  }
  dpbf16_gemm(M, N, 2 * pairs, Np, 1.0f, A, 2, 2 * M, Bp, 1.0f, C, ldc);
}

}  // namespace cpu
}  // namespace fastrnn
