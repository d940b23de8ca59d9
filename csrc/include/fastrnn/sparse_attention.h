// One batch row's sparse attention (SPEC section 1, steps 5-6; tie rules in docs/CONTRACT.md):
// the running top-(k_top+1) of the slot scores, the threshold, the sparse normalised weights,
// and the backward of the weights. Plain scalar code with no library calls so that the CPU
// kernels and the CUDA kernels share exactly the same selection logic.
#pragma once

#include <stdint.h>

#include "fastrnn/hd.h"

namespace fastrnn {
namespace sparse {

// The epsilon of w_j = ã_j / (Σ ã + eps), SPEC step 6.
constexpr double kWeightEps = 1e-7;

// Whether score `a` ranks strictly above score `b` in a descending sort: a > b, with NaN above every
// number, as torch.sort(descending=True) puts it (two NaNs are equal). x != x is the NaN test: no library call.
template <typename T>
FASTRNN_HD inline bool ranks_above(T a, T b) {
  return a > b || (a != a && b == b);
}

// A ranking of at most `cap` (score, slot) pairs, best first: score descending (NaN first, ranks_above),
// ties broken by the lower slot index (a stable descending sort). Slots must be pushed in ascending slot
// order, so a new slot goes after every kept slot with a score that does not rank below its own.
template <typename T>
struct TopList {
  T* score;       // [cap]
  int64_t* slot;  // [cap]
  int n;          // entries in use
  int cap;        // k_top + 1

  FASTRNN_HD void clear() { n = 0; }

  FASTRNN_HD void push(T a, int64_t j) {
    // Fast reject: a full list keeps a later slot only if it beats the last entry strictly.
    if (n == cap && !ranks_above(a, score[cap - 1])) return;
    int pos = n < cap ? n : cap - 1;  // slot where the new entry lands before moving up
    while (pos > 0 && ranks_above(a, score[pos - 1])) {
      score[pos] = score[pos - 1];
      slot[pos] = slot[pos - 1];
      --pos;
    }
    // When the list was full, the entry at cap-1 was overwritten by the shift (it drops out).
    score[pos] = a;
    slot[pos] = j;
    if (n < cap) ++n;
  }
};

// Result of the threshold step for one row.
template <typename T>
struct Selection {
  T tau;             // the threshold
  int64_t thr_slot;  // the slot that receives the gradient of tau
  T denom;           // Σ ã + eps
  int count;         // slots with ã > 0 (<= k_top)
};

// Given the ranking of a memory of `n_mem` slots (list.n == min(n_mem, k_top + 1)) with `score`
// already holding the full scores a_j, write the selected slots in ascending slot order to
// idx[0..k_top) (padded with -1) and their weights to w[0..k_top) (padded with 0).
template <typename T>
FASTRNN_HD inline Selection<T> select_and_weigh(const TopList<T>& list, int64_t n_mem, int k_top,
                                                int64_t* idx, T* w) {
  Selection<T> sel;
  int kept;  // ranking entries that can have ã > 0
  if (n_mem > k_top) {
    sel.tau = list.score[k_top];
    sel.thr_slot = list.slot[k_top];
    kept = k_top;
  } else {
    // tau = min - 1: the minimum is the last entry of the ranking (the highest slot among equal minima).
    sel.tau = list.score[list.n - 1] - T(1);
    sel.thr_slot = list.slot[list.n - 1];
    kept = list.n;
  }
  int count = 0;
  for (int r = 0; r < kept; ++r) {
    T a = list.score[r] - sel.tau;
    // relu with relu'(0) = 0: a slot exactly at tau is not selected. A NaN ã (a NaN or infinite score) is
    // kept, as torch.relu keeps NaN: the row's weights are then NaN, as the reference's.
    if (!(a <= T(0))) {
      // Insertion by slot index keeps the output in ascending slot order.
      int p = count++;
      while (p > 0 && idx[p - 1] > list.slot[r]) {
        idx[p] = idx[p - 1];
        w[p] = w[p - 1];
        --p;
      }
      idx[p] = list.slot[r];
      w[p] = a;  // ã for now
    }
  }
  T sum = T(0);
  for (int p = 0; p < count; ++p) sum += w[p];  // ascending slot order, as the reference sums
  sel.denom = sum + T(kWeightEps);
  for (int p = 0; p < count; ++p) w[p] = w[p] / sel.denom;
  for (int p = count; p < k_top; ++p) {
    idx[p] = -1;
    w[p] = T(0);
  }
  sel.count = count;
  return sel;
}

// Backward of w = ã / (Σ ã + eps) and ã = relu(a - tau) for one row.
// In: the `count` selected weights w and dL/dw. Out: da[p] = dL/da of selected slot p (through ã),
// and the return value dL/dtau, which the caller adds to the threshold slot's dL/da.
template <typename T>
FASTRNN_HD inline T weights_backward(const T* w, const T* dw, int count, T denom, T* da) {
  T wdw = T(0);
  for (int p = 0; p < count; ++p) wdw += w[p] * dw[p];
  T dtau = T(0);
  for (int p = 0; p < count; ++p) {
    da[p] = (dw[p] - wdw) / denom;
    dtau -= da[p];
  }
  return dtau;
}

// The selected slots of a record row idx[0..k_top) (ascending, -1 padding): how many there are.
FASTRNN_HD inline int selected_count(const int64_t* idx, int64_t k_top) {
  int count = 0;
  while (count < k_top && idx[count] >= 0) ++count;
  return count;
}

// dL/dtau goes to the threshold slot `thr` only. When it is one of the `count` selected slots idx[], it is
// added to that slot's dL/da (da[], as weights_backward left it) and this returns true; otherwise the
// caller takes the threshold slot's score backward on its own, with dL/da = dtau, and this returns false.
template <typename T>
FASTRNN_HD inline bool add_threshold_grad(const int64_t* idx, int count, int64_t thr, T dtau, T* da) {
  bool selected = false;
  for (int p = 0; p < count; ++p) {
    if (idx[p] == thr) {
      da[p] += dtau;
      selected = true;
    }
  }
  return selected;
}

}  // namespace sparse
}  // namespace fastrnn
