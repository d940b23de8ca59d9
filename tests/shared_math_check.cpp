// Host-side exercise of every function of the per-element math the CPU and CUDA backends share
// (csrc/include/fastrnn/*.h, FASTRNN_HD). Compiled and run by tests/test_shared_math.py, which checks what
// this prints (one JSON object per line) against Python, and that every FASTRNN_HD function of those headers
// is called here. Under nvcc (-x cu) the headers are compiled for the device too, and the CUDA sweeps' view
// of the slots (csrc/cuda/sab.cuh) is included to check that it compiles on the host.
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "fastrnn/attention_score.h"
#include "fastrnn/lstm_cell.h"
#include "fastrnn/memory_slots.h"
#include "fastrnn/reverse_sweep.h"
#include "fastrnn/row_slots.h"
#include "fastrnn/scalar_math.h"
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

// A double as JSON (NaN and infinities as the tokens Python's json reads).
static void num(double v) {
  if (isnan(v)) {
    printf("NaN");
  } else if (isinf(v)) {
    printf(v > 0 ? "Infinity" : "-Infinity");
  } else {
    printf("%.17g", v);
  }
}

static void scalar_math_cases() {
  for (int n = 0; n < 12; ++n) {
    const double x = 4.0 * uniform(), a = uniform(), b = uniform();
    const float xf = float(x), af = float(a), bf = float(b);
    printf("{\"kind\": \"scalar\", \"x\": %.17g, \"a\": %.17g, \"b\": %.17g, \"sigmoid\": %.17g, \"tanh\": %.17g, "
           "\"fma\": %.17g, \"sigmoid_f32\": %.9g, \"tanh_f32\": %.9g, \"fma_f32\": %.9g}\n",
           x, a, b, ScalarMath::sigmoid(x), ScalarMath::tanh(x), ScalarMath::fma(a, b, x),
           double(ScalarMath::sigmoid(xf)), double(ScalarMath::tanh(xf)), double(ScalarMath::fma(af, bf, xf)));
  }
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

// The scorers' terms: mlp a += v tanh(q + p) and its backward (accumulating onto nonzero dv, dq, dp), linear.
static void score_cases() {
  for (int n = 0; n < 16; ++n) {
    const double q = uniform(), p = uniform(), v = uniform(), acc = uniform(), da = uniform();
    double dv = uniform(), dq = uniform(), dp = uniform();
    const double dv0 = dv, dq0 = dq, dp0 = dp;
    const double term = fastrnn::mlp_score_term<ScalarMath>(q, p, v, acc);
    fastrnn::mlp_score_term_backward<ScalarMath>(q, p, v, da, dv, dq, dp);
    float dvf = float(dv0), dqf = float(dq0), dpf = float(dp0);
    const float term_f = fastrnn::mlp_score_term<ScalarMath>(float(q), float(p), float(v), float(acc));
    fastrnn::mlp_score_term_backward<ScalarMath>(float(q), float(p), float(v), float(da), dvf, dqf, dpf);
    const double key = uniform(), query = uniform(), bias = uniform();
    printf("{\"kind\": \"score\", \"q\": %.17g, \"p\": %.17g, \"v\": %.17g, \"acc\": %.17g, \"da\": %.17g, "
           "\"d0\": [%.17g, %.17g, %.17g], \"term\": %.17g, \"d\": [%.17g, %.17g, %.17g], \"term_f32\": %.9g, "
           "\"d_f32\": [%.9g, %.9g, %.9g], \"key\": %.17g, \"query\": %.17g, \"bias\": %.17g, \"linear\": %.17g}\n",
           q, p, v, acc, da, dv0, dq0, dp0, term, dv, dq, dp, double(term_f), double(dvf), double(dqf), double(dpf),
           key, query, bias, fastrnn::linear_score(key, query, bias));
  }
}

// Scores with many ties (drawn from a few values), pushed in ascending slot order as the kernels do; the
// record row's count, and the threshold slot's share of dL/dtau.
static void selection_cases() {
  for (int n = 0; n < 60; ++n) {
    const int n_mem = 1 + n % 9, k_top = 1 + (n / 9) % 4;
    double scores[16];
    for (int j = 0; j < n_mem; ++j) scores[j] = double(int((uniform() + 2.0) * 1.5)) * 0.5;  // few values
    double rs[8];
    int64_t rj[8], idx[8];
    double w[8];
    fastrnn::sparse::TopList<double> list{rs, rj, 0, k_top + 1};
    list.push(100.0, 99);  // a stale entry, which clear() must drop (the kernels reuse one list per row)
    list.clear();
    for (int j = 0; j < n_mem; ++j) list.push(scores[j], j);
    const auto sel = fastrnn::sparse::select_and_weigh(list, n_mem, k_top, idx, w);
    double dw[8], da[8];
    for (int p = 0; p < k_top; ++p) dw[p] = uniform();
    const double dtau = fastrnn::sparse::weights_backward(w, dw, sel.count, sel.denom, da);
    const int count = fastrnn::sparse::selected_count(idx, k_top);
    double da_thr[8];
    for (int p = 0; p < sel.count; ++p) da_thr[p] = da[p];
    const bool thr_selected = fastrnn::sparse::add_threshold_grad(idx, sel.count, sel.thr_slot, dtau, da_thr);
    printf("{\"kind\": \"select\", \"k_top\": %d, \"scores\": [", k_top);
    for (int j = 0; j < n_mem; ++j) printf("%s%.17g", j ? ", " : "", scores[j]);
    printf("], \"idx\": [");
    for (int p = 0; p < k_top; ++p) printf("%s%lld", p ? ", " : "", (long long)idx[p]);
    printf("], \"w\": [");
    for (int p = 0; p < k_top; ++p) printf("%s%.17g", p ? ", " : "", w[p]);
    printf("], \"tau\": %.17g, \"thr\": %lld, \"denom\": %.17g, \"count\": %d, \"selected_count\": %d, \"dw\": [",
           sel.tau, (long long)sel.thr_slot, sel.denom, sel.count, count);
    for (int p = 0; p < sel.count; ++p) printf("%s%.17g", p ? ", " : "", dw[p]);
    printf("], \"da\": [");
    for (int p = 0; p < sel.count; ++p) printf("%s%.17g", p ? ", " : "", da[p]);
    printf("], \"dtau\": %.17g, \"thr_selected\": %s, \"da_thr\": [", dtau, thr_selected ? "true" : "false");
    for (int p = 0; p < sel.count; ++p) printf("%s%.17g", p ? ", " : "", da_thr[p]);
    printf("]}\n");
  }
}

// NaN and infinite scores: ranks_above puts NaN above every number (as torch.sort(descending=True)), equal
// NaNs by slot order, and a NaN ã keeps the row's weights NaN (as the reference's relu). Prints the ranked
// slots, ranks_above on a few pairs, and whether any selected weight is NaN.
static void nan_ranking_cases() {
  const double nan = NAN, inf = INFINITY;
  const double cases[][5] = {{1.0, nan, 2.0, nan, 0.5}, {nan, 3.0, 1.0, 2.0, 0.0}, {1.0, 2.0, 3.0, 4.0, inf},
                             {1.0, -inf, 2.0, 3.0, 0.0}, {0.5, 2.0, 0.5, 1.0, 2.0}};
  for (int c = 0; c < 5; ++c) {
    for (int k_top = 1; k_top <= 4; ++k_top) {
      double rs[8], w[8];
      int64_t rj[8], idx[8];
      fastrnn::sparse::TopList<double> list{rs, rj, 0, k_top + 1};
      for (int j = 0; j < 5; ++j) list.push(cases[c][j], j);
      const auto sel = fastrnn::sparse::select_and_weigh(list, 5, k_top, idx, w);
      bool any_nan = false;
      for (int p = 0; p < sel.count; ++p) any_nan = any_nan || w[p] != w[p];
      printf("{\"kind\": \"rank_nan\", \"case\": %d, \"k_top\": %d, \"ranked\": [", c, k_top);
      for (int r = 0; r < list.n; ++r) printf("%s%lld", r ? ", " : "", (long long)rj[r]);
      printf("], \"any_nan\": %s}\n", any_nan ? "true" : "false");
    }
  }
  namespace sp = fastrnn::sparse;
  printf("{\"kind\": \"ranks_above\", \"pairs\": [%d, %d, %d, %d, %d, %d]}\n", sp::ranks_above(nan, 1.0),
         sp::ranks_above(1.0, nan), sp::ranks_above(nan, nan), sp::ranks_above(2.0, 1.0), sp::ranks_above(1.0, 1.0),
         sp::ranks_above(float(nan), -float(inf)));
}

// The slot numbering of a call (S0 carried slots, global step0) and where each slot's value is read: h0 /
// memory, y and hhat are three regions of one array, so a pointer says which region and offset.
static void slot_cases() {
  static double buf[3 * 100000];
  const double *carried = buf, *y = buf + 100000, *hhat = buf + 200000;
  static const char* names[] = {"carried", "y", "hhat"};
  const int64_t T = 7, B = 3, H = 5, b = 2;
  const int64_t step0s[] = {0, 1, 5, 6};
  for (int64_t S0 = 1; S0 <= 3; S0 += 2)
    for (int64_t step0 : step0s)
      for (int64_t k_att = 1; k_att <= 3; ++k_att) {
        const fastrnn::SlotGrid grid(S0, step0, k_att);
        printf("{\"kind\": \"slots\", \"T\": %lld, \"S0\": %lld, \"step0\": %lld, \"k_att\": %lld, \"n_mem\": [",
               (long long)T, (long long)S0, (long long)step0, (long long)k_att);
        for (int64_t t = 0; t <= T; ++t) printf("%s%lld", t ? ", " : "", (long long)grid.n_mem(t));
        printf("], \"written\": [");
        for (int64_t t = 0; t < T; ++t) printf("%s%lld", t ? ", " : "", (long long)grid.written(t));
        printf("], \"step_of\": [");
        for (int64_t j = S0; j < grid.n_mem(T); ++j) printf("%s%lld", j > S0 ? ", " : "", (long long)grid.step_of(j));
        printf("], \"value\": [");
        for (int64_t j = 0; j < grid.n_mem(T); ++j)
          for (int prov = 0; prov < 2; ++prov) {
            const int64_t at = fastrnn::slot_value(grid, j, b, carried, y, hhat, prov != 0, B, H) - buf;
            printf("%s[%lld, %d, \"%s\", %lld]", j || prov ? ", " : "", (long long)j, prov, names[at / 100000],
                   (long long)(at % 100000));
          }
        printf("], \"B\": %lld, \"H\": %lld, \"b\": %lld}\n", (long long)B, (long long)H, (long long)b);
      }
}

// Per-row slot tables (row_slots.h): the walk of every row of a few calls (resets, left-padded carried
// memory, per-row counters; the first pass without src as the ops run it, then with it), row_step on its
// own, and where each table entry's value lies (row_slot_value; zeros: a fourth region of the buffer).
static void row_slot_cases() {
  struct Case {
    int64_t T, B, S0, step0, k_att;
    const char* reset;       // T x B characters, step-major ('1': a reset), or nullptr
    const int64_t* offset;   // [B] or nullptr
    const int64_t* counter;  // [B] or nullptr (every row at step0)
  };
  static const int64_t off_a[] = {1, 0, 3}, cnt_a[] = {5, 7, 0}, off_b[] = {0, 0, 0, 0}, cnt_b[] = {0, 3, 1, 2};
  const Case cases[] = {
      {11, 4, 1, 0, 2, "0100" "0000" "0000" "0010" "1000" "1000" "0000" "0000" "0000" "1000" "0010", nullptr, nullptr},
      {9, 3, 4, 9, 2, "000" "000" "100" "000" "000" "000" "001" "000" "000", off_a, cnt_a},
      {7, 4, 1, 0, 3, "1111" "0000" "1010" "1100" "0000" "0001" "1111", off_b, cnt_b},
      {6, 2, 2, 5, 1, nullptr, nullptr, nullptr},
      {5, 3, 4, 4, 4, "001" "010" "100" "000" "010", off_a, nullptr},
  };
  static double buf[4 * 100000];
  const double *carried = buf, *y = buf + 100000, *hhat = buf + 200000, *zeros = buf + 300000;
  static const char* names[] = {"carried", "y", "hhat", "zeros"};
  for (const Case& c : cases) {
    bool reset[64];
    for (int64_t i = 0; i < c.T * c.B; ++i) reset[i] = c.reset != nullptr && c.reset[i] == '1';
    int64_t lo[64], hi[64], wr[64], appended[8], src[8 * 32], S1 = 0;
    for (int64_t b = 0; b < c.B; ++b) {
      appended[b] = fastrnn::row_slot_walk(c.reset ? reset : nullptr, c.T, c.B, b, c.S0, c.offset ? c.offset[b] : 0,
                                           c.counter ? c.counter[b] : c.step0, c.k_att, lo, hi, wr, nullptr);
      S1 = appended[b] > S1 ? appended[b] : S1;
    }
    for (int64_t i = 0; i < c.B * S1; ++i) src[i] = -1;
    for (int64_t b = 0; b < c.B; ++b)
      fastrnn::row_slot_walk(c.reset ? reset : nullptr, c.T, c.B, b, c.S0, c.offset ? c.offset[b] : 0,
                             c.counter ? c.counter[b] : c.step0, c.k_att, nullptr, nullptr, nullptr, src + b * S1);
    printf("{\"kind\": \"row_slots\", \"T\": %lld, \"B\": %lld, \"S0\": %lld, \"step0\": %lld, \"k_att\": %lld, "
           "\"reset\": [", (long long)c.T, (long long)c.B, (long long)c.S0, (long long)c.step0, (long long)c.k_att);
    for (int64_t i = 0; i < c.T * c.B; ++i) printf("%s%d", i ? ", " : "", int(reset[i]));
    printf("], \"has_reset\": %s, \"offset\": ", c.reset ? "true" : "false");
    if (c.offset) {
      for (int64_t b = 0; b < c.B; ++b) printf("%s%lld", b ? ", " : "[", (long long)c.offset[b]);
      printf("]");
    } else {
      printf("null");
    }
    printf(", \"counter\": ");
    if (c.counter) {
      for (int64_t b = 0; b < c.B; ++b) printf("%s%lld", b ? ", " : "[", (long long)c.counter[b]);
      printf("]");
    } else {
      printf("null");
    }
    const int64_t* tables[] = {lo, hi, wr};
    const char* table_names[] = {"lo", "hi", "wr"};
    for (int k = 0; k < 3; ++k) {
      printf(", \"%s\": [", table_names[k]);
      for (int64_t i = 0; i < c.T * c.B; ++i) printf("%s%lld", i ? ", " : "", (long long)tables[k][i]);
      printf("]");
    }
    printf(", \"appended\": [");
    for (int64_t b = 0; b < c.B; ++b) printf("%s%lld", b ? ", " : "", (long long)appended[b]);
    printf("], \"src\": [");
    for (int64_t i = 0; i < c.B * S1; ++i) printf("%s%lld", i ? ", " : "", (long long)src[i]);
    // row_step alone along row 0: each step's fresh slot (the walk does not print it)
    printf("], \"steps_row0\": [");
    fastrnn::RowWalk w{c.S0, c.offset ? c.offset[0] : 0, c.counter ? c.counter[0] : c.step0};
    for (int64_t t = 0; t < c.T; ++t) {
      const fastrnn::RowStep st = fastrnn::row_step(w, reset[t * c.B] && c.reset, c.k_att);
      printf("%s[%lld, %lld, %lld, %lld]", t ? ", " : "", (long long)st.lo, (long long)st.hi, (long long)st.fresh,
             (long long)st.wr);
    }
    // every entry of every row's table, final and provisional: [b, j, prov, region, offset]
    const int64_t H = 5;
    const fastrnn::SlotGrid grid(c.S0, c.step0, c.k_att);
    printf("], \"H\": %lld, \"value\": [", (long long)H);
    bool first_entry = true;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = 0; j < c.S0 + S1; ++j)
        for (int prov = 0; prov < 2; ++prov) {
          const int64_t at =
              fastrnn::row_slot_value(grid, src, S1, j, b, carried, y, hhat, prov != 0, c.B, H, zeros) - buf;
          printf("%s[%lld, %lld, %d, \"%s\", %lld]", first_entry ? "" : ", ", (long long)b, (long long)j, prov,
                 names[at / 100000], (long long)(at % 100000));
          first_entry = false;
        }
    // without tables (src nullptr): slot_value's, for the slots of the uniform grid
    bool plain_same = true;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t j = 0; j < grid.n_mem(c.T); ++j)
        plain_same = plain_same && fastrnn::row_slot_value<double>(grid, nullptr, 0, j, b, carried, y, hhat, true,
                                                                   c.B, H, zeros) ==
                                       fastrnn::slot_value(grid, j, b, carried, y, hhat, true, c.B, H);
    printf("], \"plain_same\": %s}\n", plain_same ? "true" : "false");
  }
}

// The reverse sweep's lengths and schedule at one element: last_step, output_grad, carried_dc.
static void sweep_cases() {
  const int64_t len[] = {4, 0, 7};
  for (int64_t b = 0; b < 3; ++b) {
    printf("{\"kind\": \"last\", \"len\": %lld, \"steps\": 7, \"last\": %lld, \"last_no_len\": %lld}\n",
           (long long)len[b], (long long)fastrnn::last_step(len, b, 7), (long long)fastrnn::last_step(nullptr, b, 7));
  }
  const double nan = NAN;
  for (int64_t last = -1; last <= 3; ++last)
    for (int64_t t = 0; t < 5; ++t) {
      const double dy = uniform(), dh_n = uniform();
      const double g = fastrnn::output_grad(dy, dh_n, t, last);
      const double g_nan = fastrnn::output_grad(nan, dh_n, t, last);  // dy past the length may be anything
      const float g_f32 = fastrnn::output_grad(float(dy), float(dh_n), t, last);
      printf("{\"kind\": \"output_grad\", \"t\": %lld, \"last\": %lld, \"dy\": %.17g, \"dh_n\": %.17g, \"g\": ",
             (long long)t, (long long)last, dy, dh_n);
      num(g);
      printf(", \"g_nan_dy\": ");
      num(g_nan);
      printf(", \"g_f32\": %.9g}\n", double(g_f32));
    }
  for (int64_t rows = 0; rows < 2; ++rows)
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t b = 0; b < 4; ++b)
        printf("{\"kind\": \"schedule_entry\", \"t\": %lld, \"b\": %lld, \"B\": 4, \"rows\": %s, \"entry\": %lld}\n",
               (long long)t, (long long)b, rows ? "true" : "false",
               (long long)fastrnn::schedule_entry(t, b, 4, rows != 0));
  for (int n = 0; n < 8; ++n) {
    const bool cut = n % 2 == 1;
    const double dcp = n >= 6 ? nan : uniform(), scale = uniform();
    printf("{\"kind\": \"carried_dc\", \"cut\": %s, \"dc_prev\": ", cut ? "true" : "false");
    num(dcp);
    printf(", \"scale\": %.17g, \"out\": ", scale);
    num(fastrnn::carried_dc(dcp, cut, scale));
    printf(", \"out_f32\": ");
    num(double(fastrnn::carried_dc(float(dcp), cut, float(scale))));
    printf("}\n");
  }
}

int main() {
  scalar_math_cases();
  cell_cases();
  score_cases();
  selection_cases();
  nan_ranking_cases();
  slot_cases();
  row_slot_cases();
  sweep_cases();
  return 0;
}
