// Host-side exercise of the per-element math the CPU and CUDA backends share (csrc/include/fastrnn/*.h,
// and with FASTRNN_WITH_CUDA_HEADERS the host/device helpers of csrc/cuda/sab.cuh). Compiled and run by
// tests/test_shared_math.py, which checks what this prints (one JSON object per line) against Python.
#include <math.h>
#include <stdio.h>
#include <stdint.h>

#include "fastrnn/lstm_cell.h"
#include "fastrnn/sparse_attention.h"
#ifdef FASTRNN_WITH_CUDA_HEADERS
#include "cuda/sab.cuh"
#endif

using fastrnn::ScalarMath;

static uint64_t state = 88172645463325252ull;
static double uniform() {  // xorshift64, in [-2, 2)
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return double(state >> 11) / double(1ull << 53) * 4.0 - 2.0;
}

static void cell_cases() {
  for (int n = 0; n < 20; ++n) {
    double p[5], dh = uniform(), dcn = uniform();
    for (double& v : p) v = uniform();
    double i, f, g, o, c, h, di, df, dg, d_o, dcp;
    fastrnn::lstm_cell_forward<ScalarMath>(p[0], p[1], p[2], p[3], p[4], i, f, g, o, c, h);
    fastrnn::lstm_cell_backward<ScalarMath>(dh, dcn, i, f, g, o, p[4], c, di, df, dg, d_o, dcp);
    float fi, ff, fg, fo, fc, fh;
    fastrnn::lstm_cell_forward<ScalarMath>(float(p[0]), float(p[1]), float(p[2]), float(p[3]), float(p[4]), fi, ff,
                                           fg, fo, fc, fh);
    printf("{\"kind\": \"cell\", \"pre\": [%.17g, %.17g, %.17g, %.17g], \"c_prev\": %.17g, \"dh\": %.17g, "
           "\"dc_next\": %.17g, \"fwd\": [%.17g, %.17g, %.17g, %.17g, %.17g, %.17g], "
           "\"bwd\": [%.17g, %.17g, %.17g, %.17g, %.17g], \"fwd_f32\": [%.9g, %.9g]}\n",
           p[0], p[1], p[2], p[3], p[4], dh, dcn, i, f, g, o, c, h, di, df, dg, d_o, dcp, double(fc), double(fh));
  }
}

// Scores with many ties (drawn from a few values), pushed in ascending slot order as the kernels do.
static void selection_cases() {
  for (int n = 0; n < 60; ++n) {
    const int n_mem = 1 + n % 9, k_top = 1 + (n / 9) % 4;
    double scores[16];
    for (int j = 0; j < n_mem; ++j) scores[j] = double(int((uniform() + 2.0) * 1.5)) * 0.5;  // few values
    double rs[8];
    int64_t rj[8], idx[8];
    double w[8];
    fastrnn::sparse::TopList<double> list{rs, rj, 0, k_top + 1};
    for (int j = 0; j < n_mem; ++j) list.push(scores[j], j);
    const auto sel = fastrnn::sparse::select_and_weigh(list, n_mem, k_top, idx, w);
    double dw[8], da[8];
    for (int p = 0; p < k_top; ++p) dw[p] = uniform();
    const double dtau = fastrnn::sparse::weights_backward(w, dw, sel.count, sel.denom, da);
    printf("{\"kind\": \"select\", \"k_top\": %d, \"scores\": [", k_top);
    for (int j = 0; j < n_mem; ++j) printf("%s%.17g", j ? ", " : "", scores[j]);
    printf("], \"idx\": [");
    for (int p = 0; p < k_top; ++p) printf("%s%lld", p ? ", " : "", (long long)idx[p]);
    printf("], \"w\": [");
    for (int p = 0; p < k_top; ++p) printf("%s%.17g", p ? ", " : "", w[p]);
    printf("], \"tau\": %.17g, \"thr\": %lld, \"denom\": %.17g, \"count\": %d, \"dw\": [", sel.tau,
           (long long)sel.thr_slot, sel.denom, sel.count);
    for (int p = 0; p < sel.count; ++p) printf("%s%.17g", p ? ", " : "", dw[p]);
    printf("], \"da\": [");
    for (int p = 0; p < sel.count; ++p) printf("%s%.17g", p ? ", " : "", da[p]);
    printf("], \"dtau\": %.17g}\n", dtau);
  }
}

#ifdef FASTRNN_WITH_CUDA_HEADERS
static void slot_cases() {
  // Slot values point into [T, B, H] buffers: h0, y and hhat are three regions of one array.
  static double buf[3000];
  const double *h0 = buf, *y = buf + 1000, *hhat = buf + 2000;
  static const char* names[] = {"h0", "y", "hhat"};
  for (int64_t k_att = 1; k_att <= 3; ++k_att)
    for (int64_t j = 0; j < 4; ++j)
      for (int prov = 0; prov < 2; ++prov) {
        const int64_t B = 3, H = 5, b = 2;
        const int64_t at = fastrnn::cuda::slot_value<double>(j, b, h0, y, hhat, prov != 0, k_att, B, H) - buf;
        printf("{\"kind\": \"slot\", \"j\": %lld, \"k_att\": %lld, \"provisional\": %d, \"base\": \"%s\", "
               "\"offset\": %lld}\n", (long long)j, (long long)k_att, prov, names[at / 1000], (long long)(at % 1000));
      }
  for (int64_t k_att = 1; k_att <= 3; ++k_att)
    for (int64_t t = 0; t < 7; ++t)
      printf("{\"kind\": \"written\", \"t\": %lld, \"k_att\": %lld, \"slot\": %lld}\n", (long long)t,
             (long long)k_att, (long long)fastrnn::cuda::slot_written_at(t, k_att));
}
#endif

int main() {
  cell_cases();
  selection_cases();
#ifdef FASTRNN_WITH_CUDA_HEADERS
  slot_cases();
#endif
  return 0;
}
