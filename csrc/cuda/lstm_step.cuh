// The LSTM recurrence on the GPU: one step of the forward (h_{t-1} W_hh^T added to the precomputed input
// projection, then the cell, fused in one pass) and one step of the backward (dG_{t+1} W_hh, then the cell
// backward, fused), each as a device function over a tile of RB batch rows x UJ hidden units, used by
//   - the step kernels (one launch per step; W_hh streamed through shared memory in chunks), and
//   - the persistent kernels (one launch per sequence; each block keeps its W_hh slice in shared memory for
//     every step and the grid synchronises between steps, cooperative launch).
// The forward tile owns hidden units [j0, j0 + UJ) of all four gates, so the cell runs in registers right
// after the dot products; the backward tile owns the same units of dh. The per-element math is the CPU
// backend's: fastrnn/lstm_cell.h (the cell) and fastrnn/reverse_sweep.h (lengths and schedule in the sweep).
// Layouts (the CPU op's): xg, gates, dG [T, B, 4H] (i, f, g, o blocks), c, y [T, B, H], W_hh [4H, H].
#pragma once

#include <cooperative_groups.h>

#include "cuda/common.cuh"
#include "fastrnn/lstm_cell.h"
#include "fastrnn/reverse_sweep.h"

namespace fastrnn {
namespace cuda {

constexpr int kStepThreads = 256;  // threads of every LSTM step block
constexpr int kChunk = 32;         // K chunk staged through shared memory

template <int UJ>
struct Tile {
  static constexpr int RB = kStepThreads / UJ;  // batch rows per pass
};

// Shared memory of a tile: the staged activations Xs [RB][kChunk + 1] (acc) then W: the resident slice
// (K x 4UJ forward with K = H, 4H x UJ backward: 4 H UJ entries either way) or one staged chunk.
template <class T, int UJ>
inline size_t tile_smem(int64_t H, bool resident) {
  const size_t xs = size_t(Tile<UJ>::RB) * (kChunk + 1) * sizeof(acc_t<T>);
  const size_t ws = (resident ? size_t(H) : size_t(kChunk)) * 4 * UJ * sizeof(T);
  return xs + ws;
}

// ---- forward -----------------------------------------------------------------------------------------
// Fills Ws (resident) with W_hh rows g*H + j0 + u, all columns, as Ws[k * 4UJ + g * UJ + u].
template <class T, int UJ>
__device__ void load_fwd_weights(const T* w_hh, int64_t j0, int64_t H, T* Ws) {
  const int64_t n = int64_t(4 * UJ) * H;
  for (int64_t e = threadIdx.x; e < n; e += kStepThreads) {
    const int row = int(e / H);  // g * UJ + u
    const int64_t k = e % H;     // k fastest: coalesced reads
    const int g = row / UJ, u = row % UJ;
    const int64_t j = j0 + u;
    Ws[k * 4 * UJ + row] = j < H ? w_hh[(g * H + j) * H + k] : from_acc<T>(acc_t<T>(0));
  }
}

// One pass: rows [rb0, rb0 + RB) x units [j0, j0 + UJ) of step t.
// xg_t [B, 4H] (acc: input projection + biases), h_prev/c_prev [B, H], outputs gates_t [B, 4H] (activated),
// c_t, h_t [B, H]. zero_rows [B] (or nullptr): rows whose h_prev, c_prev read as zeros (the SAB layer's rows
// reset at step t, docs/SPEC.md section 9). Must be called by all threads of the block (it synchronises).
template <class T, int UJ>
__device__ void lstm_fwd_pass(int64_t rb0, int64_t j0, const acc_t<T>* xg_t, const T* w_hh, const T* h_prev,
                              const T* c_prev, T* gates_t, T* c_t, T* h_t, int64_t B, int64_t H, acc_t<T>* Xs,
                              T* Ws, bool resident, const bool* zero_rows) {
  using Acc = acc_t<T>;
  constexpr int RB = Tile<UJ>::RB, W4 = 4 * UJ;
  const int u = threadIdx.x % UJ, r = threadIdx.x / UJ;
  const int64_t b = rb0 + r, j = j0 + u;
  Acc a0 = Acc(0), a1 = Acc(0), a2 = Acc(0), a3 = Acc(0);
  for (int64_t k0 = 0; k0 < H; k0 += kChunk) {
    __syncthreads();  // the previous chunk has been consumed
    for (int e = threadIdx.x; e < RB * kChunk; e += kStepThreads) {
      const int rr = e / kChunk, kk = e % kChunk;
      const int64_t bb = rb0 + rr, k = k0 + kk;
      const bool live = bb < B && k < H && !(zero_rows && zero_rows[bb]);
      Xs[rr * (kChunk + 1) + kk] = live ? to_acc(load_cg(h_prev + bb * H + k)) : Acc(0);
    }
    if (!resident) {
      for (int e = threadIdx.x; e < W4 * kChunk; e += kStepThreads) {
        const int row = e / kChunk, kk = e % kChunk;  // kk fastest: coalesced reads of W_hh rows
        const int g = row / UJ, uu = row % UJ;
        const int64_t jj = j0 + uu, k = k0 + kk;
        Ws[kk * W4 + row] = (jj < H && k < H) ? w_hh[(g * H + jj) * H + k] : from_acc<T>(Acc(0));
      }
    }
    __syncthreads();
    const T* Wc = resident ? Ws + k0 * W4 : Ws;
    const int kn = int(H - k0 < kChunk ? H - k0 : kChunk);
    const Acc* xr = Xs + r * (kChunk + 1);
    for (int kk = 0; kk < kn; ++kk) {
      const Acc hv = xr[kk];
      const T* wr = Wc + kk * W4;
      a0 += to_acc(wr[u]) * hv;
      a1 += to_acc(wr[UJ + u]) * hv;
      a2 += to_acc(wr[2 * UJ + u]) * hv;
      a3 += to_acc(wr[3 * UJ + u]) * hv;
    }
  }
  if (b < B && j < H) {
    const int64_t G = 4 * H;
    const Acc* x = xg_t + b * G;
    Acc i, f, g, o, c, h;
    const Acc cp = zero_rows && zero_rows[b] ? Acc(0) : to_acc(load_cg(c_prev + b * H + j));
    lstm_cell_forward<ScalarMath>(x[j] + a0, x[H + j] + a1, x[2 * H + j] + a2, x[3 * H + j] + a3, cp, i, f, g, o,
                                  c, h);
    T* gr = gates_t + b * G;
    gr[j] = from_acc<T>(i);
    gr[H + j] = from_acc<T>(f);
    gr[2 * H + j] = from_acc<T>(g);
    gr[3 * H + j] = from_acc<T>(o);
    c_t[b * H + j] = from_acc<T>(c);
    h_t[b * H + j] = from_acc<T>(h);
  }
}

// Launch per step: grid (ceil(H / UJ), ceil(B / RB)), one pass per block. zero_rows: as lstm_fwd_pass.
template <class T, int UJ>
__global__ void __launch_bounds__(kStepThreads)
    lstm_fwd_step_kernel(const acc_t<T>* xg_t, const T* w_hh, const T* h_prev, const T* c_prev, T* gates_t, T* c_t,
                         T* h_t, int64_t B, int64_t H, const bool* zero_rows) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t<T>* Xs = reinterpret_cast<acc_t<T>*>(smem_raw);
  T* Ws = reinterpret_cast<T*>(Xs + Tile<UJ>::RB * (kChunk + 1));
  lstm_fwd_pass<T, UJ>(int64_t(blockIdx.y) * Tile<UJ>::RB, int64_t(blockIdx.x) * UJ, xg_t, w_hh, h_prev, c_prev,
                       gates_t, c_t, h_t, B, H, Xs, Ws, false, zero_rows);
}

// Persistent: grid ceil(H / UJ) co-resident blocks, the whole sequence in one launch.
template <class T, int UJ>
__global__ void __launch_bounds__(kStepThreads)
    lstm_fwd_persistent_kernel(const acc_t<T>* xg, const T* w_hh, const T* h0, const T* c0, T* gates, T* cs, T* y,
                               int64_t steps, int64_t B, int64_t H) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t<T>* Xs = reinterpret_cast<acc_t<T>*>(smem_raw);
  T* Ws = reinterpret_cast<T*>(Xs + Tile<UJ>::RB * (kChunk + 1));
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int64_t j0 = int64_t(blockIdx.x) * UJ, G = 4 * H;
  load_fwd_weights<T, UJ>(w_hh, j0, H, Ws);  // visible after the first pass's __syncthreads
  for (int64_t t = 0; t < steps; ++t) {
    const T* h_prev = t == 0 ? h0 : y + (t - 1) * B * H;
    const T* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
    for (int64_t rb0 = 0; rb0 < B; rb0 += Tile<UJ>::RB)
      lstm_fwd_pass<T, UJ>(rb0, j0, xg + t * B * G, w_hh, h_prev, c_prev, gates + t * B * G, cs + t * B * H,
                           y + t * B * H, B, H, Xs, Ws, true, nullptr);
    grid.sync();  // h_t complete (and visible) before any block reads it
  }
}

// ---- backward ----------------------------------------------------------------------------------------
// Fills Ws (resident) with W_hh columns j0 + u, all 4H rows, as Ws[k * UJ + u].
template <class T, int UJ>
__device__ void load_bwd_weights(const T* w_hh, int64_t j0, int64_t H, T* Ws) {
  const int64_t n = int64_t(UJ) * 4 * H;
  for (int64_t e = threadIdx.x; e < n; e += kStepThreads) {
    const int64_t k = e / UJ;
    const int u = int(e % UJ);
    const int64_t j = j0 + u;
    Ws[k * UJ + u] = j < H ? w_hh[k * H + j] : from_acc<T>(acc_t<T>(0));
  }
}

// The backward's per-step arguments (pointers already at step t, except the sequence-wide ones).
template <class T>
struct BwdStep {
  int64_t t, steps, B, H;
  const acc_t<T>* dG_next;  // [B, 4H] of step t + 1, or nullptr (t = T - 1)
  const T* dy_t;            // [B, H]
  const T* dh_n;            // [B, H]
  const T* dc_n;            // [B, H]
  const int64_t* len;       // [B] or nullptr
  const bool* cut;          // [T], or [T, B] (cut_rows: the SAB op)
  const T* scale;           // [T], or [T, B] (scale_rows: the SAB op)
  bool cut_rows, scale_rows;
  const bool* reset_t;      // [B]: rows reset at step t (the SAB op: c_{t-1} reads as zero, no dc crosses), or nullptr
  const T* gates_t;         // [B, 4H] activated
  const T* c_prev;          // [B, H] c_{t-1} (c0 at t = 0)
  const T* c_t;             // [B, H]
  acc_t<T>* dG_t;           // [B, 4H] out
  acc_t<T>* dc;             // [B, H] carried dL/dc: in from step t+1, out into step t-1 (cut/scaled)
};

// dL/dh_t of element e = (b, j) from the output: dy (ignored past a row's length) plus dh_n where the row
// ends (docs/CONTRACT.md), fastrnn/reverse_sweep.h's output_grad.
template <class T>
__device__ __forceinline__ acc_t<T> load_output_grad(const T* dy_t, const T* dh_n, const int64_t* len, int64_t t,
                                                     int64_t steps, int64_t b, int64_t e) {
  return output_grad(to_acc(dy_t[e]), to_acc(dh_n[e]), t, last_step(len, b, steps));
}

// The cell backward of element (b, j) given dL/dh_t (all paths): dc_n enters at the row's last step, the
// carried dc leaves cut (exactly 0: a detach) or scaled by row b's scale[t]. A row reset at step t read
// c_{t-1} as zero and passes nothing into step t - 1 (exactly 0, as a cut).
template <class T>
__device__ __forceinline__ void cell_backward_element(const BwdStep<T>& s, int64_t b, int64_t j, acc_t<T> dh) {
  using Acc = acc_t<T>;
  const int64_t H = s.H, G = 4 * H, e = b * H + j;
  const bool fresh = s.reset_t != nullptr && s.reset_t[b];
  Acc dc = s.dc[e];  // without lengths it started as dc_n (the caller's), with them dc_n enters here
  if (s.len && last_step(s.len, b, s.steps) == s.t) dc += to_acc(s.dc_n[e]);
  const T* gr = s.gates_t + b * G;
  Acc di, df, dg, d_o, dcp;
  lstm_cell_backward<ScalarMath>(dh, dc, to_acc(gr[j]), to_acc(gr[H + j]), to_acc(gr[2 * H + j]),
                                 to_acc(gr[3 * H + j]), fresh ? Acc(0) : to_acc(s.c_prev[e]), to_acc(s.c_t[e]), di,
                                 df, dg, d_o, dcp);
  Acc* dgr = s.dG_t + b * G;
  dgr[j] = di;
  dgr[H + j] = df;
  dgr[2 * H + j] = dg;
  dgr[3 * H + j] = d_o;
  s.dc[e] = carried_dc(dcp, fresh || s.cut[schedule_entry(s.t, b, s.B, s.cut_rows)],
                       to_acc(s.scale[schedule_entry(s.t, b, s.B, s.scale_rows)]));
}

// One pass of the fused backward step: rec = dG_{t+1} W_hh (K = 4H) for rows [rb0, rb0 + RB) x units
// [j0, j0 + UJ), dh = output grad + scale[t+1] rec (nothing when cut[t+1]), then the cell backward. The LSTM
// op's: a [T] schedule (cut[t+1] is the block's), no resets.
template <class T, int UJ>
__device__ void lstm_bwd_pass(const BwdStep<T>& s, int64_t rb0, int64_t j0, const T* w_hh, acc_t<T>* Xs, T* Ws,
                              bool resident) {
  using Acc = acc_t<T>;
  constexpr int RB = Tile<UJ>::RB;
  const int64_t B = s.B, H = s.H, G = 4 * H;
  const int u = threadIdx.x % UJ, r = threadIdx.x / UJ;
  const int64_t b = rb0 + r, j = j0 + u;
  // uniform over the block: every thread reads the same flag
  const bool has_rec = s.dG_next != nullptr && !s.cut[s.t + 1];
  Acc rec = Acc(0);
  if (has_rec) {
    for (int64_t k0 = 0; k0 < G; k0 += kChunk) {
      __syncthreads();
      for (int e = threadIdx.x; e < RB * kChunk; e += kStepThreads) {
        const int rr = e / kChunk, kk = e % kChunk;
        const int64_t bb = rb0 + rr, k = k0 + kk;
        Xs[rr * (kChunk + 1) + kk] = (bb < B && k < G) ? load_cg(s.dG_next + bb * G + k) : Acc(0);
      }
      if (!resident) {
        for (int e = threadIdx.x; e < UJ * kChunk; e += kStepThreads) {
          const int kk = e / UJ, uu = e % UJ;  // uu fastest: coalesced along a W_hh row
          const int64_t k = k0 + kk, jj = j0 + uu;
          Ws[kk * UJ + uu] = (k < G && jj < H) ? w_hh[k * H + jj] : from_acc<T>(Acc(0));
        }
      }
      __syncthreads();
      const T* Wc = resident ? Ws + k0 * UJ : Ws;
      const int kn = int(G - k0 < kChunk ? G - k0 : kChunk);
      const Acc* xr = Xs + r * (kChunk + 1);
      for (int kk = 0; kk < kn; ++kk) rec += to_acc(Wc[kk * UJ + u]) * xr[kk];
    }
  }
  if (b < B && j < H) {
    Acc dh = load_output_grad(s.dy_t, s.dh_n, s.len, s.t, s.steps, b, b * H + j);
    if (has_rec) dh += to_acc(s.scale[s.t + 1]) * rec;
    cell_backward_element(s, b, j, dh);
  }
}

template <class T, int UJ>
__global__ void __launch_bounds__(kStepThreads) lstm_bwd_step_kernel(BwdStep<T> s, const T* w_hh) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t<T>* Xs = reinterpret_cast<acc_t<T>*>(smem_raw);
  T* Ws = reinterpret_cast<T*>(Xs + Tile<UJ>::RB * (kChunk + 1));
  lstm_bwd_pass<T, UJ>(s, int64_t(blockIdx.y) * Tile<UJ>::RB, int64_t(blockIdx.x) * UJ, w_hh, Xs, Ws, false);
}

// The sequence-wide backward arguments of the persistent kernel.
template <class T>
struct BwdSeq {
  int64_t steps, B, H;
  const T *dy, *dh_n, *dc_n, *c0, *gates, *cs, *scale;
  const int64_t* len;
  const bool* cut;
  acc_t<T>* dG;  // [T, B, 4H]
  acc_t<T>* dc;  // [B, H]
  // The SAB op's per-row schedule ([T, B]) and resets ([T, B]); the LSTM op's sweep has neither.
  bool cut_rows = false, scale_rows = false;
  const bool* reset = nullptr;
};

template <class T>
__host__ __device__ inline BwdStep<T> step_args(const BwdSeq<T>& q, int64_t t) {
  const int64_t B = q.B, H = q.H, G = 4 * H;
  BwdStep<T> s;
  s.t = t;
  s.steps = q.steps;
  s.B = B;
  s.H = H;
  s.dG_next = t + 1 < q.steps ? q.dG + (t + 1) * B * G : nullptr;
  s.dy_t = q.dy + t * B * H;
  s.dh_n = q.dh_n;
  s.dc_n = q.dc_n;
  s.len = q.len;
  s.cut = q.cut;
  s.scale = q.scale;
  s.cut_rows = q.cut_rows;
  s.scale_rows = q.scale_rows;
  s.reset_t = q.reset ? q.reset + t * B : nullptr;
  s.gates_t = q.gates + t * B * G;
  s.c_prev = t == 0 ? q.c0 : q.cs + (t - 1) * B * H;
  s.c_t = q.cs + t * B * H;
  s.dG_t = q.dG + t * B * G;
  s.dc = q.dc;
  return s;
}

template <class T, int UJ>
__global__ void __launch_bounds__(kStepThreads) lstm_bwd_persistent_kernel(BwdSeq<T> q, const T* w_hh) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t<T>* Xs = reinterpret_cast<acc_t<T>*>(smem_raw);
  T* Ws = reinterpret_cast<T*>(Xs + Tile<UJ>::RB * (kChunk + 1));
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int64_t j0 = int64_t(blockIdx.x) * UJ;
  load_bwd_weights<T, UJ>(w_hh, j0, q.H, Ws);
  __syncthreads();  // the first step may skip the staged loop (no dG_{t+1}) and so its __syncthreads
  for (int64_t t = q.steps - 1; t >= 0; --t) {
    const BwdStep<T> s = step_args(q, t);
    for (int64_t rb0 = 0; rb0 < q.B; rb0 += Tile<UJ>::RB) lstm_bwd_pass<T, UJ>(s, rb0, j0, w_hh, Xs, Ws, true);
    grid.sync();  // dG_t complete before step t - 1 reads it
  }
}

// ---- host side: plans and launches ------------------------------------------------------------------
// Units per block tried by the persistent path, smallest first (most blocks).
constexpr int kPersistentUnits[] = {4, 8, 16, 32};

// The largest dynamic shared memory a block may opt into on the current device.
inline int max_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
  return v;
}

// Whether `kernel` with `smem` bytes can run `blocks` blocks all resident at once (cooperative launch).
inline bool fits_coresident(const void* kernel, size_t smem, int64_t blocks) {
  int dev = 0, sms = 0, coop = 0, per_sm = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop) return false;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return false;
  if (smem > size_t(max_smem_optin())) return false;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kStepThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return int64_t(per_sm) * sms >= blocks;
}

}  // namespace cuda
}  // namespace fastrnn
