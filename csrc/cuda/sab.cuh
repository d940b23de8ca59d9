// What the SAB forward and backward sweeps on the GPU share: the typed view of the C arguments (SabView, one
// for both) and the memory layout, fastrnn/memory_slots.h's and fastrnn/row_slots.h's as on the CPU (the
// call's memory is cat(carried, new slots): the carried slots are `memory` [B, S0, H] or h0, the new ones the
// states of the steps that wrote them, and with per-row resets a row's fresh slots, zeros; the slot values
// are not copied, they are read from there), and the preamble of the per-row kernels (RowBlock).
#pragma once

#include "cuda/common.cuh"
#include "cuda/launchers.h"
#include "fastrnn/memory_slots.h"
#include "fastrnn/reverse_sweep.h"
#include "fastrnn/row_slots.h"

namespace fastrnn {
namespace cuda {

constexpr int kRowThreads = 128;  // threads of the per-row attention kernels (a multiple of 32)

// Shared memory of the per-row kernels: ranking (K + 1 scores and slots), the selection (K slots and
// weights), and K more accumulators (dL/dw, dL/da in the backward), plus a 33-entry reduction buffer.
template <class A>
constexpr size_t row_smem(int64_t K) {
  return size_t(2 * K + 1) * sizeof(int64_t) + size_t(3 * K + 1 + 33) * sizeof(A);
}

// The shared memory any block may use without opting in (48 KiB, static and dynamic together, on every
// architecture; no cudaFuncAttributeMaxDynamicSharedMemorySize), less 256 bytes for the row kernels' static
// __shared__ variables: the dynamic part of the per-row kernels stays within it, which bounds K = k_top.
constexpr size_t kRowSmemLimit = 48 * 1024 - 256;

// The largest K whose row_smem<A>(K) fits kRowSmemLimit: 1741 for float accumulation (float32, bfloat16),
// 1215 for double (fastrnn_sab_max_k_top; the binding refuses a larger k_top with a message naming it).
template <class A>
constexpr int64_t row_max_k() {
  return int64_t((kRowSmemLimit - sizeof(int64_t) - 34 * sizeof(A)) / (2 * sizeof(int64_t) + 3 * sizeof(A)));
}
static_assert(row_smem<float>(row_max_k<float>()) <= kRowSmemLimit &&
                  row_smem<float>(row_max_k<float>() + 1) > kRowSmemLimit,
              "row_max_k<float>");
static_assert(row_smem<double>(row_max_k<double>()) <= kRowSmemLimit &&
                  row_smem<double>(row_max_k<double>() + 1) > kRowSmemLimit,
              "row_max_k<double>");

// The per-row kernels' dynamic shared memory (row_smem bytes).
__device__ inline unsigned char* row_smem_raw() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return smem_raw;
}

template <class T>
struct RowSmem {
  int64_t* rank_slot;  // [K + 1]
  int64_t* sel_idx;    // [K]
  acc_t<T>* rank_score;  // [K + 1]
  acc_t<T>* sel_w;       // [K]
  acc_t<T>* dw;          // [K] (backward)
  acc_t<T>* red;         // [33]
  __device__ static RowSmem make(unsigned char* raw, int64_t K) {
    RowSmem s;
    s.rank_slot = reinterpret_cast<int64_t*>(raw);
    s.sel_idx = s.rank_slot + (K + 1);
    s.rank_score = reinterpret_cast<acc_t<T>*>(s.sel_idx + K);
    s.sel_w = s.rank_score + (K + 1);
    s.dw = s.sel_w + K;
    s.red = s.dw + K;
    return s;
  }
};

// What both sweeps read the same way: the sizes and options, the carried slots and where every slot's value
// lies (docs/SPEC.md sections 1, 8 and 9): the uniform SlotGrid, or with per-row arguments each row's own
// table (fastrnn/row_slots.h; launchers.h fastrnn_sab_rows). Ptr: T* (the forward writes y and hhat) or
// const T* (the backward reads them).
template <class T, class Ptr>
struct SabView {
  int64_t steps, B, H, A, S, K, k_att, S0, step0;
  bool mlp, provisional;
  const T *h0, *c0;
  const T* carried;  // [B, S0, H]: memory, or h0 (S0 = 1)
  Ptr y, hhat;       // [T, B, H]: the final states h_t and the cell outputs ĥ_t (the slots' values)
  // per row (all nullptr without per-row arguments)
  const bool* reset;            // [T, B]: row b restarts before step t, or nullptr
  const int64_t *lo, *hi, *wr;  // [T, B]: the slots [lo, hi) step t scores, the slot written after it
  const int64_t* src;           // [B, S1]: the step whose state an appended slot holds, -1 zeros
  int64_t S1;
  const T* zeros;               // [H]

  FASTRNN_HD SlotGrid grid() const { return SlotGrid(S0, step0, k_att); }
  FASTRNN_HD bool per_row() const { return lo != nullptr; }
  // The slots step t of row b scores, [first_slot, n_slots) (SPEC step 4; per row: its current piece).
  FASTRNN_HD int64_t first_slot(int64_t t, int64_t b) const { return lo ? lo[t * B + b] : 0; }
  FASTRNN_HD int64_t n_slots(int64_t t, int64_t b) const { return hi ? hi[t * B + b] : grid().n_mem(t); }
  // The slot row b writes after step t (SPEC step 8), or -1.
  FASTRNN_HD int64_t written(int64_t t, int64_t b) const { return wr ? wr[t * B + b] : grid().written(t); }
  // Whether row b restarts before step t (its h_{t-1}, c_{t-1} are zeros; nothing crosses into t - 1).
  FASTRNN_HD bool reset_at(int64_t t, int64_t b) const { return reset != nullptr && reset[t * B + b]; }
  // The value m_j of slot j for batch row b (per row: entry j of its table).
  FASTRNN_HD const T* slot(int64_t j, int64_t b) const {
    return row_slot_value(grid(), src, S1, j, b, carried, y, hhat, provisional, B, H, zeros);
  }
};

// The view's fields from either launcher's arguments (fastrnn_sab_forward_args, fastrnn_sab_backward_args:
// the same names).
template <class T, class Ptr, class Args>
void view_of(const Args& a, SabView<T, Ptr>& f) {
  f.steps = a.T;
  f.B = a.B;
  f.H = a.H;
  f.A = a.A;
  f.S = a.S;
  f.K = a.K;
  f.k_att = a.k_att;
  f.S0 = a.S0;
  f.step0 = a.step0;
  f.mlp = a.mlp != 0;
  f.provisional = a.provisional != 0;
  f.h0 = static_cast<const T*>(a.h0);
  f.c0 = static_cast<const T*>(a.c0);
  f.carried = a.memory ? static_cast<const T*>(a.memory) : f.h0;
  f.y = static_cast<Ptr>(a.y);
  f.hhat = static_cast<Ptr>(a.hhat);
  f.reset = a.rows.reset;
  f.lo = a.rows.lo;
  f.hi = a.rows.hi;
  f.wr = a.rows.wr;
  f.src = a.rows.src;
  f.S1 = a.rows.S1;
  f.zeros = static_cast<const T*>(a.rows.zeros);
}

template <class T>
struct SabFwd : SabView<T, T*> {
  const acc_t<T>* xg;
  const T *w_hh, *att_wh, *att_wm, *att_vb;
  T *gates, *c;
  int64_t* idx;
  T* w;
  int64_t* thr;
  T* denom;
  T* slot_keys;
  acc_t<T>*q, *scores, *keep_score;
  int64_t* keep_slot;
  int32_t* keep_n;
};

template <class T>
SabFwd<T> typed(const fastrnn_sab_forward_args& a) {
  using Acc = acc_t<T>;
  SabFwd<T> f;
  view_of(a, f);
  f.xg = static_cast<const Acc*>(a.xg);
  f.w_hh = static_cast<const T*>(a.w_hh);
  f.att_wh = static_cast<const T*>(a.att_wh);
  f.att_wm = static_cast<const T*>(a.att_wm);
  f.att_vb = static_cast<const T*>(a.att_vb);
  f.gates = static_cast<T*>(a.gates);
  f.c = static_cast<T*>(a.c);
  f.idx = a.idx;
  f.w = static_cast<T*>(a.w);
  f.thr = a.thr;
  f.denom = static_cast<T*>(a.denom);
  f.slot_keys = static_cast<T*>(a.slot_keys);
  f.q = static_cast<Acc*>(a.q);
  f.scores = static_cast<Acc*>(a.scores);
  f.keep_score = static_cast<Acc*>(a.keep_score);
  f.keep_slot = a.keep_slot;
  f.keep_n = a.keep_n;
  return f;
}

template <class T>
struct SabBwd : SabView<T, const T*> {
  const T *gy, *ghn, *gcn;
  const int64_t* len;
  const T *w_hh, *att_wh, *att_wm, *att_vb, *scale;
  const bool* cut;
  bool cut_rows, scale_rows;  // the schedule per row ([T, B]) or every row's ([T])
  const T *gates, *c, *w, *denom, *slot_keys;
  const int64_t *idx, *thr;
  acc_t<T> *dG, *dQ, *dM, *dP, *dv, *acc_wm, *acc_wh, *acc_b, *q, *carry, *dhh, *dc;

  // The recurrent gradient's factor from step t into step t - 1 for row b (t < steps): 0 across a cut or a
  // reset of the row at t (nothing crosses, not even NaN: the caller skips the product), else scale.
  __device__ acc_t<T> carry_scale(int64_t t, int64_t b) const {
    if (this->reset_at(t, b) || cut[schedule_entry(t, b, this->B, cut_rows)]) return acc_t<T>(0);
    return to_acc(scale[schedule_entry(t, b, this->B, scale_rows)]);
  }
};

template <class T>
SabBwd<T> typed(const fastrnn_sab_backward_args& a) {
  using Acc = acc_t<T>;
  SabBwd<T> f;
  view_of(a, f);
  f.gy = static_cast<const T*>(a.grad_y);
  f.ghn = static_cast<const T*>(a.grad_hn);
  f.gcn = static_cast<const T*>(a.grad_cn);
  f.len = a.lengths;
  f.w_hh = static_cast<const T*>(a.w_hh);
  f.att_wh = static_cast<const T*>(a.att_wh);
  f.att_wm = static_cast<const T*>(a.att_wm);
  f.att_vb = static_cast<const T*>(a.att_vb);
  f.scale = static_cast<const T*>(a.scale);
  f.cut = a.cut;
  f.cut_rows = a.cut_rows != 0;
  f.scale_rows = a.scale_rows != 0;
  f.gates = static_cast<const T*>(a.gates);
  f.c = static_cast<const T*>(a.c);
  f.w = static_cast<const T*>(a.w);
  f.denom = static_cast<const T*>(a.denom);
  f.slot_keys = static_cast<const T*>(a.slot_keys);
  f.idx = a.idx;
  f.thr = a.thr;
  f.dG = static_cast<Acc*>(a.dG);
  f.dQ = static_cast<Acc*>(a.dQ);
  f.dM = static_cast<Acc*>(a.dM);
  f.dP = static_cast<Acc*>(a.dP);
  f.dv = static_cast<Acc*>(a.dv);
  f.acc_wm = static_cast<Acc*>(a.acc_wm);
  f.acc_wh = static_cast<Acc*>(a.acc_wh);
  f.acc_b = static_cast<Acc*>(a.acc_b);
  f.q = static_cast<Acc*>(a.q);
  f.carry = static_cast<Acc*>(a.carry);
  f.dhh = static_cast<Acc*>(a.dhh);
  f.dc = static_cast<Acc*>(a.dc);
  return f;
}

// What every per-row kernel (one block per batch row b at step t: the attention forward and backward)
// starts from: the row, its record row t * B + b, its ĥ_t, the slots it scores [first, n_mem) (SPEC step 4;
// per row: its current piece) and its shared memory (row_smem).
template <class T>
struct RowBlock {
  int64_t b, row, first, n_mem;
  const T* hh;
  RowSmem<T> sm;

  template <class View>
  __device__ RowBlock(const View& a, int64_t t)
      : b(blockIdx.x),
        row(t * a.B + blockIdx.x),
        first(a.first_slot(t, blockIdx.x)),
        n_mem(a.n_slots(t, blockIdx.x)),
        hh(a.hhat + (t * a.B + blockIdx.x) * a.H),
        sm(RowSmem<T>::make(row_smem_raw(), a.K)) {}
};

}  // namespace cuda
}  // namespace fastrnn
