// The SAB-LSTM layer's reverse sweep on the GPU (SPEC section 2), launch per step t = T-1 .. 0:
//   1. carry = dG_{t+1} W_hh (gemm.cuh; the schedule's cut/scale of step t+1 is applied in 3.);
//   2. mlp: dM_j += dP_j att_wm for the slot j written at step t (every step that reads it is done; with
//      per-row tables in 3., each row's own slot), and q_t = ĥ_t att_wh^T recomputed (gemm.cuh);
//   3. one block per batch row (sab_attention_bwd_kernel): dh_t = dy_t + scale[t+1] carry [+ dM_j, final
//      slots], then the summary's and the scores' backward over the selected slots and the threshold
//      slot only (fastrnn/sparse_attention.h's weights_backward and add_threshold_grad,
//      fastrnn/attention_score.h's mlp_score_term_backward: the CPU's code). Every gradient it adds
//      to goes to this row's own buffers (dM[b], dP[b], dv[b], the linear accumulators [b]), written by
//      this block only, in a fixed order: no atomics, deterministic, and right when one slot is selected
//      by every step and every row;
//   4. mlp: dh_t += dq_t att_wh (gemm.cuh);
//   5. the cell backward (lstm_step.cuh's cell_backward_element) [+ dM_j, provisional slots], with
//      dc_n entering at each row's last step and the carried dc cut/scaled by the schedule of step t.
// The schedule (cut, scale) is [T] or one per row, [T, B] (SabBwd::carry_scale, cell_backward_element).
// Streaming (SPEC section 8): dM of the slots this call wrote starts from grad_new_slots (the caller's);
// the carried slots are written by no step here, so their dM (+ dP att_wm) is left for the caller (dmemory).
// Per-row resets (SPEC section 9): slots by each row's table as in the forward; at a row's reset step t its
// c_{t-1} reads as zero and nothing flows into step t - 1 along h (3. at t - 1: carry_scale) and c (5.); the
// binding zeroes the row's h_{t-1} in dW_hh and its dh0, dc0 at t = 0 (dc0 is zero from 5. already).
#include "cuda/gemm.cuh"
#include "cuda/lstm_step.cuh"
#include "cuda/sab.cuh"
#include "fastrnn/attention_score.h"
#include "fastrnn/sparse_attention.h"

namespace fastrnn {
namespace cuda {
namespace {

template <class T>
__global__ void __launch_bounds__(kRowThreads) sab_attention_bwd_kernel(SabBwd<T> a, int64_t t) {
  using Acc = acc_t<T>;
  __shared__ int s_count;
  __shared__ int s_thr_selected;
  __shared__ int64_t s_thr;
  __shared__ Acc s_dtau, s_sum_da;
  const RowBlock<T> r(a, t);  // row b, record row, ĥ_t, shared memory
  const RowSmem<T>& sm = r.sm;
  Acc* da = sm.rank_score;  // [K]: dL/da of the selected slots (the ranking is not needed here)
  const int64_t b = r.b, row = r.row, B = a.B, H = a.H, A = a.A, S = a.S, K = a.K;
  const int64_t jw = a.written(t, b);  // the slot row b wrote after step t, or -1
  const T* hh = r.hh;
  Acc* dh = a.dhh + b * H;
  // With per-row tables the written slot differs between rows: its dM_j += dP_j att_wm (every step that reads
  // it is done; without per-row tables one GEMM over all rows does it, sab_backward) here, per unit h.
  const bool fold_key = a.mlp && a.per_row() && jw >= 0;

  // dh_t: the output's gradient, the recurrent one from step t+1 under row b's schedule (nothing crosses a
  // cut or a reset at t+1, not even NaN), and a final-state slot's own gradient.
  const Acc sc = t + 1 < a.steps ? a.carry_scale(t + 1, b) : Acc(0);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    Acc v = load_output_grad(a.gy + t * B * H, a.ghn, a.len, t, a.steps, b, b * H + h);
    if (sc != Acc(0)) v += sc * a.carry[b * H + h];
    if (fold_key) {
      const Acc* dP = a.dP + (b * S + jw) * A;
      Acc s = Acc(0);
      for (int64_t i = 0; i < A; ++i) s += dP[i] * to_acc(a.att_wm[i * H + h]);
      a.dM[(b * S + jw) * H + h] += s;
    }
    if (jw >= 0 && !a.provisional) v += a.dM[(b * S + jw) * H + h];
    dh[h] = v;
  }
  if (threadIdx.x == 0) {
    const int count = sparse::selected_count(a.idx + row * K, K);
    for (int p = 0; p < count; ++p) {
      sm.sel_idx[p] = a.idx[row * K + p];
      sm.sel_w[p] = to_acc(a.w[row * K + p]);
    }
    s_count = count;
  }
  __syncthreads();
  const int count = s_count;
  // s_t = Σ w_j m_j: dL/dw_j = dh · m_j, dM_j += w_j dh.
  for (int p = 0; p < count; ++p) {
    const T* m = a.slot(sm.sel_idx[p], b);
    Acc s = Acc(0);
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) s += dh[h] * to_acc(m[h]);
    s = block_sum(s, sm.red);
    if (threadIdx.x == 0) sm.dw[p] = s;
  }
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x)
    for (int p = 0; p < count; ++p) a.dM[(b * S + sm.sel_idx[p]) * H + h] += sm.sel_w[p] * dh[h];
  if (threadIdx.x == 0) {
    const Acc dtau = sparse::weights_backward(sm.sel_w, sm.dw, count, to_acc(a.denom[row]), da);
    const int64_t thr = a.thr[row];
    const bool selected = sparse::add_threshold_grad(sm.sel_idx, count, thr, dtau, da);
    Acc sum = Acc(0);  // the linear scorer's query term: Σ da, in the CPU's order (selected, then threshold)
    for (int p = 0; p < count; ++p) sum += da[p];
    if (!selected) sum += dtau;
    s_dtau = dtau;
    s_thr = thr;
    s_thr_selected = selected ? 1 : 0;
    s_sum_da = sum;
  }
  __syncthreads();
  const int n_scored = count + (s_thr_selected ? 0 : 1);  // selected slots, then the threshold slot
  if (a.mlp) {
    // a_j = v · tanh(q_t + P_j): u recomputed; dv += da u; du = da v (1 - u²); dq += du; dP_j += du
    // (mlp_score_term_backward).
    const Acc* qb = a.q + b * A;
    for (int64_t i = threadIdx.x; i < A; i += blockDim.x) {
      const Acc v = to_acc(a.att_vb[i]);
      Acc dq = Acc(0), dv = a.dv[b * A + i];
      for (int p = 0; p < n_scored; ++p) {
        const int64_t j = p < count ? sm.sel_idx[p] : s_thr;
        const Acc d = p < count ? da[p] : s_dtau;
        const int64_t e = (b * S + j) * A + i;
        mlp_score_term_backward<ScalarMath>(qb[i], to_acc(a.slot_keys[e]), v, d, dv, dq, a.dP[e]);
      }
      a.dv[b * A + i] = dv;
      a.dQ[row * A + i] = dq;
    }
  } else {
    // a_j = att_wm · m_j + att_wh · ĥ_t + att_b.
    const Acc sum_da = s_sum_da;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      const Acc wm = to_acc(a.att_wm[h]);
      Acc g = a.acc_wm[b * H + h];
      for (int p = 0; p < n_scored; ++p) {
        const int64_t j = p < count ? sm.sel_idx[p] : s_thr;
        const Acc d = p < count ? da[p] : s_dtau;
        g += d * to_acc(a.slot(j, b)[h]);
        a.dM[(b * S + j) * H + h] += d * wm;
      }
      a.acc_wm[b * H + h] = g;
      a.acc_wh[b * H + h] += sum_da * to_acc(hh[h]);
      dh[h] += sum_da * to_acc(a.att_wh[h]);
    }
    if (threadIdx.x == 0) a.acc_b[b] += sum_da;
  }
}

// Step 5: the cell backward of every (row, unit), dL/dh_t = dhh [+ dM_j of a provisional slot row b wrote
// at t]; a row reset at t reads c_{t-1} as zero and passes nothing into step t - 1 (cell_backward_element).
template <class T>
__global__ void __launch_bounds__(256) sab_cell_bwd_kernel(SabBwd<T> a, BwdStep<T> s) {
  const int64_t n = a.B * a.H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / a.H, j = e % a.H;
    acc_t<T> dh = a.dhh[e];
    if (a.provisional) {
      const int64_t jw = a.written(s.t, b);
      if (jw >= 0) dh += a.dM[(b * a.S + jw) * a.H + j];
    }
    cell_backward_element(s, b, j, dh);
  }
}

template <class T>
int sab_backward(const fastrnn_sab_backward_args& args, cudaStream_t stream) {
  using Acc = acc_t<T>;
  const SabBwd<T> a = typed<T>(args);
  const int64_t B = a.B, H = a.H, A = a.A, S = a.S, G = 4 * H;
  if (a.K > row_max_k<Acc>()) return FASTRNN_ERR_K_TOP;  // the row kernels' shared memory (sab.cuh)
  if (a.steps == 0 || B == 0) return 0;
  if (B > 2147483647) return static_cast<int>(cudaErrorInvalidValue);
  const size_t rsmem = row_smem<Acc>(a.K);
  const int64_t cell_blocks_ = ceil_div(B * H, 256);
  const unsigned cell_blocks = unsigned(cell_blocks_ < 65535 ? cell_blocks_ : 65535);  // grid-stride
  BwdSeq<T> q;  // the cell backward's view (lstm_step.cuh)
  q.steps = a.steps;
  q.B = B;
  q.H = H;
  q.dy = a.gy;
  q.dh_n = a.ghn;
  q.dc_n = a.gcn;
  q.c0 = a.c0;
  q.gates = a.gates;
  q.cs = a.c;
  q.scale = a.scale;
  q.len = a.len;
  q.cut = a.cut;
  q.dG = a.dG;
  q.dc = a.dc;
  q.cut_rows = a.cut_rows;
  q.scale_rows = a.scale_rows;
  q.reset = a.reset;
  const SlotGrid grid = a.grid();
  int err = 0;
  for (int64_t t = a.steps - 1; t >= 0; --t) {
    const int64_t jw = grid.written(t);
    if (t + 1 < a.steps) {  // carry = dG_{t+1} W_hh
      err = launch_gemm<Acc, T, Acc>(B, H, G, Acc(1), a.dG + (t + 1) * B * G, G, 1, a.w_hh, H, 1, Acc(0), a.carry,
                                     H, stream);
      if (err) return err;
    }
    if (a.mlp) {
      if (jw >= 0 && !a.per_row()) {  // dM_j += dP_j att_wm (per row: in the attention kernel)
        err = launch_gemm<Acc, T, Acc>(B, H, A, Acc(1), a.dP + jw * A, S * A, 1, a.att_wm, H, 1, Acc(1),
                                       a.dM + jw * H, S * H, stream);
        if (err) return err;
      }
      err = launch_gemm<T, T, Acc>(B, A, H, Acc(1), a.hhat + t * B * H, H, 1, a.att_wh, 1, H, Acc(0), a.q, A,
                                   stream);
      if (err) return err;
    }
    sab_attention_bwd_kernel<T><<<unsigned(B), kRowThreads, rsmem, stream>>>(a, t);
    if ((err = last_error())) return err;
    if (a.mlp) {  // dh_t += dq_t att_wh
      err = launch_gemm<Acc, T, Acc>(B, H, A, Acc(1), a.dQ + t * B * A, A, 1, a.att_wh, H, 1, Acc(1), a.dhh, H,
                                     stream);
      if (err) return err;
    }
    sab_cell_bwd_kernel<T><<<cell_blocks, 256, 0, stream>>>(a, step_args(q, t));
    if ((err = last_error())) return err;
  }
  return 0;
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

extern "C" {

int fastrnn_sab_backward_f32(const struct fastrnn_sab_backward_args* args, void* stream) {
  return fastrnn::cuda::sab_backward<float>(*args, static_cast<cudaStream_t>(stream));
}
int fastrnn_sab_backward_f64(const struct fastrnn_sab_backward_args* args, void* stream) {
  return fastrnn::cuda::sab_backward<double>(*args, static_cast<cudaStream_t>(stream));
}
int fastrnn_sab_backward_bf16(const struct fastrnn_sab_backward_args* args, void* stream) {
  return fastrnn::cuda::sab_backward<fastrnn::cuda::bf16>(*args, static_cast<cudaStream_t>(stream));
}

}  // extern "C"
