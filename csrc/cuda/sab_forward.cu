// The SAB-LSTM layer's forward sweep on the GPU (SPEC sections 1, 8 and 9). First the keys of the carried
// slots (the memory of earlier calls, or h0: mlp, one batched GEMM; linear, in the first step's row kernel),
// then per step:
//   1. the fused LSTM step (lstm_step.cuh) writes gates_t, c_t and ĥ_t (rows reset at step t start from
//      zeros);
//   2. mlp: q_t = ĥ_t att_wh^T (gemm.cuh, all rows);
//   3. one block per batch row (sab_attention_fwd_kernel): the scores of every slot the row scores (mlp: one
//      warp per slot, a = att_v · tanh(q_t + P_j), fastrnn/attention_score.h's mlp_score_term; linear: the
//      row's running top-(k_top+1) of att_wm · m_j plus the query term, linear_score, as the CPU keeps it),
//      the ranking and the threshold with the tie rules of docs/CONTRACT.md (fastrnn/sparse_attention.h's
//      TopList and select_and_weigh, the CPU's code), the sparse weights, the summary
//      y_t = ĥ_t + Σ w_j m_j, and the slot write of the linear scorer (and, with per-row tables, the mlp
//      key of the row's slot);
//   4. mlp, on steps that write a slot (without per-row tables): its projection P_j = m_j att_wm^T into the
//      slot_keys (gemm.cuh).
// Slots are numbered by fastrnn/memory_slots.h's SlotGrid, as on the CPU; with per-row arguments (resets,
// docs/SPEC.md section 9) by each row's table (fastrnn/row_slots.h, built by sab_rows.cu): a row scores the
// slots of its current piece, a reset's fresh slot is zeros with key 0 (the binding zeroes slot_keys), and
// the linear ranking of a row restarts with it.
#include "cuda/gemm.cuh"
#include "cuda/lstm_step.cuh"
#include "cuda/sab.cuh"
#include "fastrnn/attention_score.h"
#include "fastrnn/sparse_attention.h"

namespace fastrnn {
namespace cuda {
namespace {

// Slot j, of key s, joins row b's running top-(k_top+1) of the linear scorer's slot keys (thread 0 only).
template <class T>
__device__ void linear_rank_slot(const SabFwd<T>& a, int64_t b, int64_t j, acc_t<T> s) {
  const int64_t cap = a.K + 1;
  sparse::TopList<acc_t<T>> list{a.keep_score + b * cap, a.keep_slot + b * cap, a.keep_n[b], int(cap)};
  list.push(s, j);
  a.keep_n[b] = list.n;
}

// The linear scorer's slot write for row b: slot_keys[b, j] = att_wm · m_j, and with `rank` j joins the row's
// running ranking (slots are pushed in ascending order, as TopList requires). All threads of the block call it.
template <class T>
__device__ void linear_write_slot(const SabFwd<T>& a, int64_t b, int64_t j, const T* m, acc_t<T>* red,
                                  bool rank = true) {
  using Acc = acc_t<T>;
  const Acc s = block_dot<Acc>(a.att_wm, m, a.H, red);
  if (threadIdx.x == 0) {
    a.slot_keys[b * a.S + j] = from_acc<T>(s);
    if (rank) linear_rank_slot(a, b, j, s);
  }
}

// The mlp key of the slot j row b writes, P_j = att_wm m_j (one warp per attention unit), with per-row tables
// (without them one GEMM over all rows writes it: sab_forward). All threads of the block call it.
template <class T>
__device__ void mlp_write_key(const SabFwd<T>& a, int64_t b, int64_t j, const T* m) {
  using Acc = acc_t<T>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int64_t i = warp; i < a.A; i += nwarps) {
    const T* wm = a.att_wm + i * a.H;
    Acc s = Acc(0);
    for (int64_t h = lane; h < a.H; h += 32) s += to_acc(wm[h]) * to_acc(m[h]);
    s = warp_sum(s);
    if (lane == 0) a.slot_keys[(b * a.S + j) * a.A + i] = from_acc<T>(s);
  }
}

template <class T>
__global__ void __launch_bounds__(kRowThreads) sab_attention_fwd_kernel(SabFwd<T> a, int64_t t) {
  using Acc = acc_t<T>;
  __shared__ int s_count;
  const RowBlock<T> r(a, t);  // row b, record row, ĥ_t, the slots it scores [first, n_mem), shared memory
  const RowSmem<T>& sm = r.sm;
  const int64_t b = r.b, row = r.row, first = r.first, n_mem = r.n_mem, H = a.H, A = a.A, S = a.S, K = a.K;
  const int64_t cap = K + 1;
  if (!a.mlp) {
    if (t == 0) {  // the carried slots' keys, in ascending order, into the ranking from the row's offset (none
                   // when the row restarts at step 0: its memory is its fresh slot)
      const int64_t ranked_from = a.reset_at(0, b) ? a.S0 : first;
      for (int64_t j = 0; j < a.S0; ++j) linear_write_slot(a, b, j, a.slot(j, b), sm.red, j >= ranked_from);
    }
    if (threadIdx.x == 0 && a.reset_at(t, b)) {  // the row's memory restarts at its fresh slot (key 0)
      a.keep_n[b] = 0;
      linear_rank_slot(a, b, first, to_acc(a.slot_keys[b * S + first]));
    }
    const Acc query = block_dot<Acc>(a.att_wh, r.hh, H, sm.red);  // synchronises: thread 0 pushed, reads below
    if (threadIdx.x == 0) {
      // The ranking by the slot part is the ranking by the full score (the query term is shared).
      const int n = a.keep_n[b];
      const Acc att_b = to_acc(a.att_vb[0]);
      for (int i = 0; i < n; ++i) {
        sm.rank_score[i] = linear_score(a.keep_score[b * cap + i], query, att_b);
        sm.rank_slot[i] = a.keep_slot[b * cap + i];
      }
      const sparse::TopList<Acc> ranked{sm.rank_score, sm.rank_slot, n, int(cap)};
      const sparse::Selection<Acc> sel =
          sparse::select_and_weigh(ranked, n_mem - first, int(K), sm.sel_idx, sm.sel_w);
      s_count = sel.count;
      a.thr[row] = sel.thr_slot;
      a.denom[row] = from_acc<T>(sel.denom);
    }
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const Acc* qb = a.q + b * A;
    for (int64_t j = first + warp; j < n_mem; j += nwarps) {
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
      for (int64_t j = first; j < n_mem; ++j) list.push(a.scores[b * S + j], j);  // ascending slot order
      const sparse::Selection<Acc> sel = sparse::select_and_weigh(list, n_mem - first, int(K), sm.sel_idx, sm.sel_w);
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
    yt[h] = from_acc<T>(s + to_acc(r.hh[h]));
  }
  const int64_t j = a.written(t, b);  // uniform over the block (one row)
  if (j >= 0 && (!a.mlp || a.per_row())) {
    __syncthreads();  // y_t of this row is complete (a final-state slot reads it)
    const T* m = a.provisional ? r.hh : yt;
    if (a.mlp) {
      mlp_write_key(a, b, j, m);
    } else {
      linear_write_slot(a, b, j, m, sm.red);
    }
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
        a.xg + t * B * G, a.w_hh, h_prev, c_prev, a.gates + t * B * G, a.c + t * B * H, hhat_t, B, H,
        a.reset ? a.reset + t * B : nullptr);  // rows reset at step t start from zeros
    if ((err = last_error())) return err;
    if (a.mlp) {
      err = launch_gemm<T, T, Acc>(B, A, H, Acc(1), hhat_t, H, 1, a.att_wh, 1, H, Acc(0), a.q, A, stream);
      if (err) return err;
    }
    sab_attention_fwd_kernel<T><<<unsigned(B), kRowThreads, rsmem, stream>>>(a, t);
    if ((err = last_error())) return err;
    const int64_t j = grid.written(t);
    if (a.mlp && !a.per_row() && j >= 0) {  // per row: each row's key in the attention kernel
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
