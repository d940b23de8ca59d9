// CPU only: the avx512bf16 kernel of bf16_gemm.h, C[M, N] = alpha * A Bp + beta * C with bfloat16 A [M, Kp]
// and B packed [Kp/2, Np, 2], on _mm512_dpbf16_ps (VDPBF16PS: per float32 lane, acc += a0 b0 + a1 b1 over
// one pair of bfloat16 values; the products are exact, the sums float32, denormals flushed).
//
// Why our own: on AMD Zen 4 (AVX512_BF16, no AMX) MKL's cblas_gemm_bf16bf16f32 runs its AVX2 code at
// 55-73 GFLOP/s, below float32 sgemm; the LSTM's per-step shapes (M = one thread's rows, 16-32; N = 4H or
// H; K = H or 4H) are small, so B (the weights) is packed once per call and only A is converted per step.
//
// The pair-interleaved layout is also how the weight gradients' sums over a chunk of steps read their
// operands (accumulate_outer in bf16_gemm.h): A pairs may lie along A's rows (the weights' products) or
// across them (pack_pair_rows interleaves two rows, which transposes the gate gradients for free).
//
// Register blocking: a tile of kRows rows x kVecs vectors of 16 columns (6 x 4 = 24 zmm accumulators), over
// the K pairs: per pair, kVecs loads of B and kRows broadcasts of one A pair. Columns go outermost, so a
// 64-column panel of B (Kp/2 x 64 x 2 bfloat16: 16 KiB at K = 128) stays in L1 while every row tile uses it.
//
// Compiled only into a library built for AVX512 (FASTRNN_CPU_CAPABILITY; a DEFAULT or AVX2 build uses no
// wider registers than it names, tests/test_native_build.py), with AVX512_BF16 added by function
// attributes; bf16_gemm.cpp calls it only where the CPU has the instructions (cpu_has_avx512_bf16).
#include "bf16_gemm.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#if defined(__x86_64__) && defined(CPU_CAPABILITY_AVX512)
#define FASTRNN_DPBF16 1
#include <immintrin.h>
#endif

namespace fastrnn {
namespace cpu {

#if defined(FASTRNN_DPBF16)
bool dpbf16_built() { return true; }

namespace {

#define FASTRNN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int kRows = 6, kVecs = 4;

// Rows [0, R) x vectors [0, V) of the tile at A and Bp + 2 n0 (row stride 2 Np); the pair p of row r of A
// at A + r * a_row + p * a_pair; C at the tile's corner; the last vector stores only the columns in `last`
// (N not a multiple of 16).
template <int R, int V>
FASTRNN_BF16_TARGET void tile(int64_t Kp, int64_t Np, float alpha, const uint16_t* A, int64_t a_row,
                              int64_t a_pair, const uint16_t* Bp, float beta, float* C, int64_t ldc,
                              __mmask16 last) {
  __m512 acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < Kp / 2; ++p) {
    const uint16_t* b = Bp + p * 2 * Np;
    __m512bh bv[V];
    for (int v = 0; v < V; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 32 * v);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * a_row + p * a_pair, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, bv[v]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) {
      const __mmask16 mask = v == V - 1 ? last : __mmask16(0xFFFF);
      float* c = C + r * ldc + 16 * v;
      __m512 out = _mm512_mul_ps(va, acc[r][v]);
      if (beta != 0.0f) out = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask, c), out);   // beta = 0: C unread
      _mm512_mask_storeu_ps(c, mask, out);
    }
  }
}

using TileFn = void (*)(int64_t, int64_t, float, const uint16_t*, int64_t, int64_t, const uint16_t*, float, float*,
                        int64_t, __mmask16);

template <int R, int... V>
constexpr std::array<TileFn, kVecs> row_tiles(std::integer_sequence<int, V...>) {
  return {&tile<R, V + 1>...};
}

template <int... R>
constexpr std::array<std::array<TileFn, kVecs>, kRows> all_tiles(std::integer_sequence<int, R...>) {
  return {row_tiles<R + 1>(std::make_integer_sequence<int, kVecs>())...};
}

// kTiles[r - 1][v - 1]: the tile of r rows and v vectors.
constexpr auto kTiles = all_tiles(std::make_integer_sequence<int, kRows>());

// x rounded to bfloat16 (to nearest even) in the low 16 bits of each lane; NaN stays a NaN.
FASTRNN_BF16_TARGET inline __m512i round_bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
}

}  // namespace

FASTRNN_BF16_TARGET void dpbf16_gemm(int64_t M, int64_t N, int64_t Kp, int64_t Np, float alpha, const uint16_t* A,
                                     int64_t a_row, int64_t a_pair, const uint16_t* Bp, float beta, float* C,
                                     int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += 16 * kVecs) {
    const int64_t cols = std::min<int64_t>(N - n0, 16 * kVecs);
    const int v = int((cols + 15) / 16);
    const __mmask16 last = __mmask16((1u << (cols - 16 * (v - 1))) - 1u);
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
      const int r = int(std::min<int64_t>(M - m0, kRows));
      kTiles[r - 1][v - 1](Kp, Np, alpha, A + m0 * a_row, a_row, a_pair, Bp + 2 * n0, beta, C + m0 * ldc + n0,
                           ldc, last);
    }
  }
}

FASTRNN_BF16_TARGET void pack_pair_rows(const float* row0, const float* row1, int64_t n, int64_t n_padded,
                                        uint16_t* dst) {
  auto* out = reinterpret_cast<uint32_t*>(dst);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i lo = round_bits(_mm512_loadu_ps(row0 + i));
    const __m512i hi = row1 ? round_bits(_mm512_loadu_ps(row1 + i)) : _mm512_setzero_si512();
    _mm512_storeu_si512(out + i, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
  for (; i < n; ++i) {
    const uint32_t lo = c10::BFloat16(row0[i]).x, hi = row1 ? c10::BFloat16(row1[i]).x : 0;
    out[i] = lo | (hi << 16);
  }
  std::fill(out + n, out + n_padded, 0u);
}

#else
bool dpbf16_built() { return false; }

void dpbf16_gemm(int64_t, int64_t, int64_t, int64_t, float, const uint16_t*, int64_t, int64_t, const uint16_t*,
                 float, float*, int64_t) {
  TORCH_CHECK(false, "fastrnn: the avx512bf16 kernel is not in this build (x86-64, FASTRNN_CPU_CAPABILITY=AVX512)");
}

void pack_pair_rows(const float*, const float*, int64_t, int64_t, uint16_t*) {
  TORCH_CHECK(false, "fastrnn: the avx512bf16 kernel is not in this build (x86-64, FASTRNN_CPU_CAPABILITY=AVX512)");
}

#endif

}  // namespace cpu
}  // namespace fastrnn
