// The mlp scorer's kernels alone, built by bench/scorer_tanh.py against one copy of csrc/ (this tree's, or
// another revision's for a before/after comparison) with the SIMD flags of the library's CMakeLists.txt.
// Arguments: rounds, scale (work per round), A (128). Prints one line per measurement, "<name> <G tanh/s
// per core>" (best of `rounds`, per-thread CPU time), then "ulp <max> <mean>" for the float tanh against tanh
// in double.
//
//   tanh          score_tanh<float> on an L1-resident array (four independent sums): the tanh alone
//   scores_<KB>   one row's scores over n slots of A = 128 keys (the forward's scan at one step), n such
//                 that the keys take KB kilobytes: L1/L2, L3, and DRAM sized; mlp_scores where the
//                 sources have it (FASTRNN_BENCH_TILE), else mlp_score slot by slot (the old loop)
//   read_65536    the DRAM-sized keys summed, nothing else: the rate at which one core streams the keys in (G
//                 floats/s; a scorer reads one key float per tanh, so no scan from DRAM beats this)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "cpu/sab_rows.h"

using fastrnn::cpu::Vectorized;

namespace {

double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

volatile float sink;

template <typename F>
double best_rate(double work, int rounds, F&& f) {  // work: tanh per call of f
  f();
  double best = 1e30;
  for (int r = 0; r < rounds; ++r) {
    const double t0 = cpu_seconds();
    f();
    best = std::min(best, cpu_seconds() - t0);
  }
  return work / best / 1e9;
}

uint32_t rng_state = 12345u;
float uniform(float lo, float hi) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return lo + (hi - lo) * float(rng_state >> 8) / float(1u << 24);
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const double scale = argc > 2 ? std::atof(argv[2]) : 1.0;  // work per round
  using V = Vectorized<float>;

  {  // the tanh alone
    const int n = 4096;
    std::vector<float> x(n);
    for (auto& e : x) e = uniform(-4.0f, 4.0f);
    const long reps = std::max(1L, long(scale * 20000));
    const double rate = best_rate(double(reps) * n, rounds, [&] {
      V a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
      for (long r = 0; r < reps; ++r) {
        for (int i = 0; i < n; i += 4 * V::size()) {
          a0 = a0 + fastrnn::cpu::score_tanh<float>(V::loadu(x.data() + i));
          a1 = a1 + fastrnn::cpu::score_tanh<float>(V::loadu(x.data() + i + V::size()));
          a2 = a2 + fastrnn::cpu::score_tanh<float>(V::loadu(x.data() + i + 2 * V::size()));
          a3 = a3 + fastrnn::cpu::score_tanh<float>(V::loadu(x.data() + i + 3 * V::size()));
        }
      }
      sink = fastrnn::cpu::hsum(a0 + a1 + a2 + a3);
    });
    std::printf("tanh %.3f\n", rate);
  }

  // A at run time, as the library gets it (a constant here would let the compiler unroll what it cannot there)
  volatile int64_t attn_size = argc > 3 ? std::atol(argv[3]) : 128;
  const int64_t A = attn_size;
  std::vector<float> q(A), v(A);
  for (auto& e : q) e = uniform(-1.0f, 1.0f);
  for (auto& e : v) e = uniform(-0.09f, 0.09f);
  for (const int64_t kb : {32, 2048, 65536}) {
    const int64_t n = kb * 1024 / (A * 4);
    std::vector<float> keys(n * A), scores(n);
    for (auto& e : keys) e = uniform(-1.5f, 1.5f);
    const long reps = std::max(1L, long(scale * 3e7 / double(n * A)));
    const double rate = best_rate(double(reps) * n * A, rounds, [&] {
      for (long r = 0; r < reps; ++r) {
#ifdef FASTRNN_BENCH_TILE
        fastrnn::cpu::mlp_scores(q.data(), keys.data(), v.data(), A, n, [&](int64_t j, float s) { scores[j] = s; });
#else
        for (int64_t j = 0; j < n; ++j) scores[j] = fastrnn::cpu::mlp_score(q.data(), keys.data() + j * A, v.data(), A);
#endif
        sink = scores[r % n];
      }
    });
    // the scores against double
    double err = 0.0;
    for (int64_t j = 0; j < n; j += std::max<int64_t>(1, n / 64)) {
      double s = 0.0;
      for (int64_t i = 0; i < A; ++i) s += double(v[i]) * std::tanh(double(q[i]) + double(keys[j * A + i]));
      err = std::max(err, std::fabs(double(scores[j]) - s));
    }
    std::printf("scores_%ld %.3f %.3g\n", long(kb), rate, err);
    if (kb != 65536) continue;
    const double read = best_rate(double(reps) * n * A, rounds, [&] {
      V a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
      for (long r = 0; r < reps; ++r) {
        for (int64_t i = 0; i + 4 * V::size() <= n * A; i += 4 * V::size()) {
          a0 = a0 + V::loadu(keys.data() + i);
          a1 = a1 + V::loadu(keys.data() + i + V::size());
          a2 = a2 + V::loadu(keys.data() + i + 2 * V::size());
          a3 = a3 + V::loadu(keys.data() + i + 3 * V::size());
        }
      }
      sink = fastrnn::cpu::hsum(a0 + a1 + a2 + a3);
    });
    std::printf("read_%ld %.3f 0\n", long(kb), read);
  }

  {  // accuracy: every 61st float in [0, 20] (all exponents, odd strides through the mantissas)
    double worst = 0.0, total = 0.0;
    long count = 0;
    uint32_t hi;
    const float top = 20.0f;
    std::memcpy(&hi, &top, 4);
    float xs[V::size()], ys[V::size()];
    for (uint32_t b = 1; b < hi; b += 61 * V::size()) {
      for (int k = 0; k < V::size(); ++k) {
        const uint32_t u = std::min(hi - 1, b + 61u * uint32_t(k));
        std::memcpy(&xs[k], &u, 4);
      }
      fastrnn::cpu::score_tanh<float>(V::loadu(xs)).store(ys);
      for (int k = 0; k < V::size(); ++k) {
        const double ref = std::tanh(double(xs[k]));
        const float rf = float(ref);
        const double ulp =
            rf >= 1.0f ? 1.0 - double(std::nextafter(1.0f, 0.0f)) : double(std::nextafter(rf, 2.0f)) - rf;
        const double e = std::fabs(double(ys[k]) - ref) / ulp;
        worst = std::max(worst, e);
        total += e;
        ++count;
      }
    }
    std::printf("ulp %.2f %.3f\n", worst, total / double(count));
  }
  return 0;
}
