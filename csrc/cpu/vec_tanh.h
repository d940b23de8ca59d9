// CPU only: the float32 tanh of the mlp scorer on at::vec lanes, and the sums of a tile of slots'
// accumulators (sab_rows.h's mlp_scores, the mlp forward's hot loop; the backward uses the same tanh).
// Compiled at every capability level: AVX-512 and AVX2 reduce a tile with shuffles, DEFAULT lane by lane.
//
// tanh(x) = x P(x^2) / Q(x^2) with x clamped to [-9, 9]: P of degree 4 and Q monic of degree 4 in x^2, with
// the same constant term (so tanh(x) = x to rounding for tiny x). The coefficients minimise the largest
// relative error on [0, 9] (2.1e-8 before rounding to float); tanh(9) rounds to the float below 1, so the
// clamp costs at most an ulp. Against tanh in double over every float in [0, 20]: at most 5.5 ulp (3.3e-7
// relative), 0.20 ulp on average; the rational it replaces (Eigen's generic_fast_tanh_float, with a
// reciprocal estimate) measured 6.0 ulp and 0.16. Odd; tanh(+-0) = +-0; NaN stays NaN (the clamp passes
// it); tanh(+-inf) = +-(1 - 2^-24).
//
// Per vector: the clamp (max, min), 10 multiplies or FMAs, an add and one exact division. On AMD Zen 4 the
// division runs beside the FMAs and measured faster than the reciprocal estimate with a Newton step (three
// more FMA-pipe operations); bench/scorer_tanh.py measures it.
#pragma once

#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace fastrnn {
namespace cpu {

// v, which the compiler must now keep in a register (or spill) instead of broadcasting the constant from
// memory again at each use inside a loop (GCC 12 did, three more instructions per vector: the scorer ran
// at 3.5 instead of 4.5 G tanh/s per core).
inline at::vec::Vectorized<float> opaque(at::vec::Vectorized<float> v) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 r = v;
  asm("" : "+v"(r));
  return r;
#elif defined(CPU_CAPABILITY_AVX2)
  __m256 r = v;
  asm("" : "+x"(r));
  return r;
#else
  return v;
#endif
}

// The tanh with its constants built once: construct it before a loop, call it inside.
struct TanhRational {
  using V = at::vec::Vectorized<float>;
  V lo = opaque(V(-9.0f)), hi = opaque(V(9.0f));
  V p4 = opaque(V(0.017194467101628575f)), p3 = opaque(V(26.472755780875396f)),
    p2 = opaque(V(4483.1775223651175f)), p1 = opaque(V(171485.6753430236f));
  V c0 = opaque(V(1281275.679682433f));  // P(0) = Q(0)
  V q3 = opaque(V(421.67256989729844f)), q2 = opaque(V(33172.48776891019f)), q1 = opaque(V(598577.416720544f));

  V operator()(const V& a) const {
    const V x = at::vec::clamp(a, lo, hi);
    const V s = x * x;
    V p = at::vec::fmadd(s, p4, p3);
    p = at::vec::fmadd(s, p, p2);
    p = at::vec::fmadd(s, p, p1);
    p = at::vec::fmadd(s, p, c0);
    V q = s + q3;
    q = at::vec::fmadd(s, q, q2);
    q = at::vec::fmadd(s, q, q1);
    q = at::vec::fmadd(s, q, c0);
    return (x * p) / q;
  }
};

inline at::vec::Vectorized<float> tanh_rational(const at::vec::Vectorized<float>& a) { return TanhRational()(a); }

// A tile: the scorer sums this many slots' terms in as many accumulators, then reduces them together.
constexpr int kScoreTile = 8;

// sums[j] = the sum of the lanes of acc[j], j < kScoreTile, each in the same fixed order whatever the other
// accumulators hold: a slot's score does not depend on the tile it was scored in.
inline void tile_sums(const at::vec::Vectorized<float>* acc, float* sums) {
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(kScoreTile == 8 && at::vec::Vectorized<float>::size() == 16);
  // lane l + 8 onto lane l (two accumulators to a vector), then l + 4, then l + 2 and l + 1 within 128 bits
  __m512 u[4];
  for (int k = 0; k < 4; ++k) {
    const __m512 a = acc[2 * k], b = acc[2 * k + 1];
    u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  // 128-bit block k of w0 (w1): 4 partial sums of accumulator k (k + 4)
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(w0, w1, 0x44), _mm512_shuffle_ps(w0, w1, 0xEE));
  const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(z, z, 0x88), _mm512_shuffle_ps(z, z, 0xDD));
  // block k of t: [sum k, sum k + 4, sum k, sum k + 4]
  const __m512 order = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), t);
  _mm256_storeu_ps(sums, _mm512_castps512_ps256(order));
#elif defined(CPU_CAPABILITY_AVX2)
  static_assert(kScoreTile == 8 && at::vec::Vectorized<float>::size() == 8);
  // adjacent lanes, then adjacent pairs (hadd), then the two 128-bit halves
  const __m256 h0 = _mm256_hadd_ps(acc[0], acc[1]), h1 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 h2 = _mm256_hadd_ps(acc[4], acc[5]), h3 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 g0 = _mm256_hadd_ps(h0, h1), g1 = _mm256_hadd_ps(h2, h3);  // [0..3 | 0..3], [4..7 | 4..7]
  _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31)));
#else
  using V = at::vec::Vectorized<float>;
  for (int j = 0; j < kScoreTile; ++j) {
    float buf[V::size()];
    acc[j].store(buf);
    float s = 0.0f;
    for (int i = 0; i < V::size(); ++i) s += buf[i];
    sums[j] = s;
  }
#endif
}

}  // namespace cpu
}  // namespace fastrnn
