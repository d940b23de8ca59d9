// The SAB-LSTM layer's forward sweep on the GPU (SPEC sections 1 and 8). First the keys of the carried
// slots (the memory of earlier calls, or h0: mlp, one batched GEMM; linear, in the first step's row kernel),
// then per step:
//   1. the fused LSTM step (lstm_step.cuh) writes gates_t, c_t and ĥ_t;
//   2. mlp: q_t = ĥ_t att_wh^T (gemm.cuh, all rows);
//   3. one block per batch row (sab_attention_fwd_kernel): the scores of every slot (mlp: one warp per
//      slot, a = att_v · tanh(q_t + P_j), fastrnn/attention_score.h's mlp_score_term; linear: the row's
//      running top-(k_top+1) of att_wm · m_j plus the query term, linear_score, as the CPU keeps it), the
//      ranking and the threshold with the tie rules of docs/CONTRACT.md (fastrnn/sparse_attention.h's
//      TopList and select_and_weigh, the CPU's code), the sparse weights, the summary
//      y_t = ĥ_t + Σ w_j m_j, and the linear scorer's slot write;
//   4. mlp, on steps that write a slot: its projection P_j = m_j att_wm^T into the slot_keys (gemm.cuh).
// Slots are numbered by fastrnn/memory_slots.h's SlotGrid, as on the CPU.
#include "cuda/gemm.cuh"
#include "cuda/lstm_step.cuh"
#include "cuda/sab.cuh"
#include "fastrnn/attention_score.h"
#include "fastrnn/sparse_attention.h"

namespace fastrnn {
namespace cuda {
namespace {

// The linear scorer's slot write for row b: slot_keys[b, j] = att_wm · m_j, and j joins the row's running
// ranking (slots are pushed in ascending order, as TopList requires). All threads of the block call it.
template <class T>
__device__ void linear_write_slot(const SabFwd<T>& a, int64_t b, int64_t j, const T* m, acc_t<T>* red) {
  using Acc = acc_t<T>;
  const Acc s = block_dot<Acc>(a.att_wm, m, a.H, red);
  if (threadIdx.x == 0) {
    const int64_t cap = a.K + 1;
    a.slot_keys[b * a.S + j] = from_acc<T>(s);
    sparse::TopList<Acc> list{a.keep_score + b * cap, a.keep_slot + b * cap, a.keep_n[b], int(cap)};
    list.push(s, j);
    a.keep_n[b] = list.n;
  }
}

template <class T>
__global__ void __launch_bounds__(kRowThreads) sab_attention_fwd_kernel(SabFwd<T> a, int64_t t) {
  using Acc = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int s_count;
  const RowSmem<T> sm = RowSmem<T>::make(smem_raw, a.K);
  const int64_t b = blockIdx.x, B = a.B, H = a.H, A = a.A, S = a.S, K = a.K, cap = K + 1;
  const SlotGrid grid = a.grid();
  const int64_t n_mem = grid.n_mem(t);  // the carried slots and those written before step t
  const int64_t row = t * B + b;
  const T* hh = a.hhat + row * H;
  if (!a.mlp) {
    if (t == 0)  // the carried slots, in ascending order
      for (int64_t j = 0; j < a.S0; ++j) linear_write_slot(a, b, j, a.slot(j, b), sm.red);
    const Acc query = block_dot<Acc>(a.att_wh, hh, H, sm.red);  // synchronises: thread 0 pushed, reads below
    if (threadIdx.x == 0) {
      // The ranking by the slot part is the ranking by the full score (the query term is shared).
      const int n = a.keep_n[b];
      const Acc att_b = to_acc(a.att_vb[0]);
      for (int r = 0; r < n; ++r) {
        sm.rank_score[r] = linear_score(a.keep_score[b * cap + r], query, att_b);
        sm.rank_slot[r] = a.keep_slot[b * cap + r];
      }
      const sparse::TopList<Acc> ranked{sm.rank_score, sm.rank_slot, n, int(cap)};
      const sparse::Selection<Acc> sel = sparse::select_and_weigh(ranked, n_mem, int(K), sm.sel_idx, sm.sel_w);
      s_count = sel.count;
      a.thr[row] = sel.thr_slot;
      a.denom[row] = from_acc<T>(sel.denom);
    }
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const Acc* qb = a.q + b * A;
    for (int64_t j = warp; j < n_mem; j += nwarps) {
      const T* P = a.slot_keys + (b * S + j) * A;
      Acc s = Acc(0);
      for (int64_t i = lane; i < A; i += 32)
        s = mlp_score_term<ScalarMath>(qb[i], to_acc(P[i]), to_acc(a.att_vb[i]), s);
      s = warp_sum(s);
      if (lane == 0) a.scores[b * S + j] = s;
    }
    __syncthreads();  // the scores (global, this block's) are visible to thread 0
    if (threadIdx.x == 0) {
      sparse::TopList<Acc> list{sm.rank_score, sm.rank_slot, 0, int(cap)};
      for (int64_t j = 0; j < n_mem; ++j) list.push(a.scores[b * S + j], j);  // ascending slot order
      const sparse::Selection<Acc> sel = sparse::select_and_weigh(list, n_mem, int(K), sm.sel_idx, sm.sel_w);
      s_count = sel.count;
      a.thr[row] = sel.thr_slot;
      a.denom[row] = from_acc<T>(sel.denom);
    }
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < K; p += blockDim.x) {
    a.idx[row * K + p] = sm.sel_idx[p];
    a.w[row * K + p] = from_acc<T>(sm.sel_w[p]);
  }
  // SPEC step 7: y_t = ĥ_t + Σ_p w_p m_{idx_p} (the sum first, in ascending slot order, as the CPU).
  const int count = s_count;
  T* yt = a.y + row * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    Acc s = Acc(0);
    for (int p = 0; p < count; ++p) s += sm.sel_w[p] * to_acc(a.slot(sm.sel_idx[p], b)[h]);
    yt[h] = from_acc<T>(s + to_acc(hh[h]));
  }
  const int64_t j = grid.written(t);
  if (!a.mlp && j >= 0) {
    __syncthreads();  // y_t of this row is complete (a final-state slot reads it)
    linear_write_slot(a, b, j, a.provisional ? hh : yt, sm.red);
  }
}

template <class T>
int sab_forward(const fastrnn_sab_forward_args& args, cudaStream_t stream) {
  using Acc = acc_t<T>;
  const SabFwd<T> a = typed<T>(args);
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S, G = 4 * H;
  if (a.K > row_max_k<Acc>()) return FASTRNN_ERR_K_TOP;  // the row kernels' shared memory (sab.cuh)
  if (a.steps == 0 || B == 0) return 0;
  if (B > 2147483647) return static_cast<int>(cudaErrorInvalidValue);
  constexpr int UJ = 32;
  const int64_t gy = ceil_div(B, Tile<UJ>::RB);
  if (gy > 65535) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 step_grid(unsigned(ceil_div(H, UJ)), unsigned(gy));
  const size_t step_smem = tile_smem<T, UJ>(H, false), rsmem = row_smem<Acc>(a.K);
  const SlotGrid grid = a.grid();
  int err = 0;
  if (a.mlp) {  // the carried slots j < S0: P_j = m_j att_wm^T, batched over j (rows b: m_j of row b)
    err = launch_gemm_batched<T, T, T>(a.S0, B, A, H, Acc(1), a.carried, a.S0 * H, 1, H, a.att_wm, 1, H, Acc(0),
                                       a.slot_keys, S * A, A, stream);
    if (err) return err;
  }
  for (int64_t t = 0; t < a.steps; ++t) {
    const T* h_prev = t == 0 ? a.h0 : a.y + (t - 1) * B * H;
    const T* c_prev = t == 0 ? a.c0 : a.c + (t - 1) * B * H;
    T* hhat_t = a.hhat + t * B * H;
    lstm_fwd_step_kernel<T, UJ><<<step_grid, kStepThreads, step_smem, stream>>>(
        a.xg + t * B * G, a.w_hh, h_prev, c_prev, a.gates + t * B * G, a.c + t * B * H, hhat_t, B, H);
    if ((err = last_error())) return err;
    if (a.mlp) {
      err = launch_gemm<T, T, Acc>(B, A, H, Acc(1), hhat_t, H, 1, a.att_wh, 1, H, Acc(0), a.q, A, stream);
      if (err) return err;
    }
    sab_attention_fwd_kernel<T><<<unsigned(B), kRowThreads, rsmem, stream>>>(a, t);
    if ((err = last_error())) return err;
    const int64_t j = grid.written(t);
    if (a.mlp && j >= 0) {
      const T* m = (a.provisional ? a.hhat : a.y) + t * B * H;
      err = launch_gemm<T, T, T>(B, A, H, Acc(1), m, H, 1, a.att_wm, 1, H, Acc(0), a.slot_keys + j * A, S * A, stream);
      if (err) return err;
    }
  }
  return 0;
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

extern "C" {

int fastrnn_sab_forward_f32(const struct fastrnn_sab_forward_args* args, void* stream) {
  return fastrnn::cuda::sab_forward<float>(*args, static_cast<cudaStream_t>(stream));
}
int fastrnn_sab_forward_f64(const struct fastrnn_sab_forward_args* args, void* stream) {
  return fastrnn::cuda::sab_forward<double>(*args, static_cast<cudaStream_t>(stream));
}
int fastrnn_sab_forward_bf16(const struct fastrnn_sab_forward_args* args, void* stream) {
  return fastrnn::cuda::sab_forward<fastrnn::cuda::bf16>(*args, static_cast<cudaStream_t>(stream));
}

int fastrnn_sab_max_k_top(int dtype) {
  return static_cast<int>(dtype == 1 ? fastrnn::cuda::row_max_k<double>() : fastrnn::cuda::row_max_k<float>());
}

}  // extern "C"
