// CPU only: the kernel choice and the emulated and MKL kernels of bf16_gemm.h (the avx512bf16 kernel is
// bf16_dpbf16.cpp), and the op fastrnn::bf16_capabilities that reports what this machine can run.
#include "bf16_gemm.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <climits>
#include <cstring>

#include "cpu_blas.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

// MKL's bfloat16 GEMM (CBLAS, LP64), declared weak as cpu_blas.h's MKL_Set_Num_Threads_Local: found in
// libtorch_cpu on x86 builds of torch, null elsewhere (then "mkl" is refused).
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                       float* c, int ldc) __attribute__((weak));

namespace fastrnn {
namespace cpu {
namespace {

constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;

#if defined(__x86_64__)
// CPUID leaf 7: sub-leaf 0 EDX bit 22 is AMX-BF16; sub-leaf 1 EAX bit 5 is AVX512_BF16.
bool cpuid7(unsigned subleaf, unsigned reg, unsigned bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(7, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}
#endif

}  // namespace

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  // avx512f through __builtin_cpu_supports, which also asks whether the OS saves the AVX-512 state
  static const bool has = dpbf16_built() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && cpuid7(1, 0, 5);
  return has;
#else
  return false;
#endif
}

bool cpu_has_amx_bf16() {
#if defined(__x86_64__)
  static const bool has = cpuid7(0, 3, 22);
  return has;
#else
  return false;
#endif
}

bool mkl_bf16_gemm_available() { return cblas_gemm_bf16bf16f32 != nullptr; }

Bf16Kernel bf16_kernel(const std::string& name, const char* op) {
  if (name == "emulated") return Bf16Kernel::Emulated;
  if (name == "mkl") {
    TORCH_CHECK(mkl_bf16_gemm_available(), op, ": gemm='mkl' needs MKL's cblas_gemm_bf16bf16f32, which this "
                "torch's libtorch_cpu does not export; use gemm='auto' or 'emulated'");
    return Bf16Kernel::Mkl;
  }
  if (name == "avx512bf16") {
    TORCH_CHECK(cpu_has_avx512_bf16(), op, ": gemm='avx512bf16' needs a CPU with AVX512_BF16 and a library "
                "built for AVX512 (FASTRNN_CPU_CAPABILITY); ", dpbf16_built() ? "this CPU lacks AVX512_BF16" :
                "this build is not for AVX512", "; use gemm='auto' or 'emulated'");
    return Bf16Kernel::Avx512Bf16;
  }
  TORCH_CHECK(name == "auto", op, ": gemm must be 'auto', 'emulated', 'mkl' or 'avx512bf16', got '", name, "'");
  if (cpu_has_amx_bf16() && mkl_bf16_gemm_available()) return Bf16Kernel::Mkl;
  if (cpu_has_avx512_bf16()) return Bf16Kernel::Avx512Bf16;
  return Bf16Kernel::Emulated;
}

Bf16Weights::Bf16Weights(Bf16Kernel kernel, const at::Tensor& b)
    : N(b.size(0)), K(b.size(1)), kernel_(kernel), Kp_(K + K % 2), Np_((N + 15) / 16 * 16) {
  TORCH_CHECK(b.scalar_type() == at::kFloat && b.dim() == 2 && b.is_contiguous(),
              "fastrnn: Bf16Weights takes a contiguous float32 matrix");
  if (kernel_ == Bf16Kernel::Emulated) {
    b_ = rounded(b);
  } else if (kernel_ == Bf16Kernel::Mkl) {
    TORCH_CHECK(N <= INT32_MAX && K <= INT32_MAX, "fastrnn: matrix too large for 32-bit BLAS");
    b_ = b.to(at::kBFloat16);
  } else {
    // Bp[p][n][j] = r(B[n][2p + j]): the two values one dpbf16 lane multiplies, side by side.
    const at::Tensor padded = at::constant_pad_nd(b, {0, Kp_ - K, 0, Np_ - N});   // [Np, Kp]
    b_ = padded.to(at::kBFloat16).view({Np_, Kp_ / 2, 2}).permute({1, 0, 2}).contiguous();
  }
}

void Bf16Weights::multiply(const float* A, int64_t M, int64_t lda, float alpha, float beta, float* C,
                           int64_t ldc, std::vector<uint16_t>& scratch) const {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // e.g. I = 0: C = beta * C, which gemm() does without reading A or B (MKL would refuse lda 0)
    gemm<float>(false, true, M, N, 0, alpha, A, 1, A, 1, beta, C, ldc);
    return;
  }
  if (kernel_ == Bf16Kernel::Emulated) {
    scratch.resize(2 * M * K);   // r(A) as float32: two uint16 per value
    float* a = reinterpret_cast<float*>(scratch.data());
    for (int64_t m = 0; m < M; ++m) round_to_bf16_float(A + m * lda, a + m * K, K);
    gemm<float>(false, true, M, N, K, alpha, a, K, b_.const_data_ptr<float>(), K, beta, C, ldc);
    return;
  }
  const int64_t ld = kernel_ == Bf16Kernel::Mkl ? K : Kp_;
  scratch.resize(M * ld);
  round_rows(A, M, K, lda, scratch.data(), ld);
  const auto* b = reinterpret_cast<const uint16_t*>(b_.const_data_ptr<at::BFloat16>());
  if (kernel_ == Bf16Kernel::Mkl) {
    TORCH_CHECK(M <= INT32_MAX && ldc <= INT32_MAX, "fastrnn: matrix too large for 32-bit BLAS");
    cblas_gemm_bf16bf16f32(kCblasRowMajor, kCblasNoTrans, kCblasTrans, int(M), int(N), int(K), alpha,
                           scratch.data(), int(K), b, int(K), beta, C, int(ldc));
  } else {
    dpbf16_gemm(M, N, Kp_, Np_, alpha, scratch.data(), Kp_, 2, b, beta, C, ldc);
  }
}

void round_rows(const float* src, int64_t M, int64_t n, int64_t lda, uint16_t* dst, int64_t ld) {
  static_assert(sizeof(c10::BFloat16) == sizeof(uint16_t));
  for (int64_t m = 0; m < M; ++m) {
    at::vec::convert(src + m * lda, reinterpret_cast<c10::BFloat16*>(dst + m * ld), n);
    std::fill(dst + m * ld + n, dst + (m + 1) * ld, uint16_t(0));
  }
}

void mkl_gemm_tn_accumulate(int64_t M, int64_t N, int64_t K, const uint16_t* A, const uint16_t* B, float* C,
                            int64_t ldc) {
  TORCH_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && ldc <= INT32_MAX,
              "fastrnn: matrix too large for 32-bit BLAS");
  cblas_gemm_bf16bf16f32(kCblasRowMajor, kCblasTrans, kCblasNoTrans, int(M), int(N), int(K), 1.0f, A, int(M), B,
                         int(N), 1.0f, C, int(ldc));
}

void round_to_bf16_float(const float* src, float* dst, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  // r(x) as float32 is x with its low 16 bits rounded off; at::vec's conversion pair does it as torch does
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(src + i);
    const auto r = at::vec::convert_float_bfloat16(v, v);
    Vec lo, hi;
    std::tie(lo, hi) = at::vec::convert_bfloat16_float(r);
    lo.store(dst + i);
  }
  for (; i < n; ++i) dst[i] = float(c10::BFloat16(src[i]));
}

namespace {

// (avx512_bf16, amx_bf16, mkl_bf16_gemm, the kernel "auto" picks) for tests and benchmarks.
std::tuple<bool, bool, bool, std::string> bf16_capabilities() {
  const char* names[] = {"emulated", "mkl", "avx512bf16"};
  return {cpu_has_avx512_bf16(), cpu_has_amx_bf16(), mkl_bf16_gemm_available(),
          names[int(bf16_kernel("auto", "fastrnn::bf16_capabilities"))]};
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CatchAll, m) { m.impl("bf16_capabilities", &fastrnn::cpu::bf16_capabilities); }
