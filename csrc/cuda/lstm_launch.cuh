// Host-side drivers of the LSTM sweeps (lstm_step.cuh): choose the persistent kernel where W_hh fits on
// chip and the grid fits co-resident, else loop over steps with the step kernels.
#pragma once

#include "cuda/launchers.h"
#include "cuda/lstm_step.cuh"

namespace fastrnn {
namespace cuda {

// Per-direction kernel pointers for a units-per-block value.
template <class T>
const void* persistent_kernel(int UJ, bool forward) {
  switch (UJ) {
    case 4: return forward ? (const void*)lstm_fwd_persistent_kernel<T, 4> : (const void*)lstm_bwd_persistent_kernel<T, 4>;
    case 8: return forward ? (const void*)lstm_fwd_persistent_kernel<T, 8> : (const void*)lstm_bwd_persistent_kernel<T, 8>;
    case 16: return forward ? (const void*)lstm_fwd_persistent_kernel<T, 16> : (const void*)lstm_bwd_persistent_kernel<T, 16>;
    default: return forward ? (const void*)lstm_fwd_persistent_kernel<T, 32> : (const void*)lstm_bwd_persistent_kernel<T, 32>;
  }
}

template <class T>
size_t persistent_smem(int UJ, int64_t H) {
  switch (UJ) {
    case 4: return tile_smem<T, 4>(H, true);
    case 8: return tile_smem<T, 8>(H, true);
    case 16: return tile_smem<T, 16>(H, true);
    default: return tile_smem<T, 32>(H, true);
  }
}

// Units per block of the persistent kernel for (B, H), or 0 where it cannot run (W_hh slice too large for
// shared memory, or more blocks than can be resident). Prefers the most blocks whose passes keep at least
// half of the block's rows busy (RB = 256 / UJ rows per pass), else the most blocks.
template <class T>
int persistent_units(int64_t B, int64_t H, bool forward) {
  int fallback = 0;
  for (int UJ : kPersistentUnits) {
    const size_t smem = persistent_smem<T>(UJ, H);
    if (!fits_coresident(persistent_kernel<T>(UJ, forward), smem, ceil_div(H, UJ))) continue;
    if (fallback == 0) fallback = UJ;
    if (2 * B >= kStepThreads / UJ) return UJ;
  }
  return fallback;
}

template <class T, int UJ>
int forward_steps(const acc_t<T>* xg, const T* w_hh, const T* h0, const T* c0, T* gates, T* cs, T* y, int64_t steps,
                  int64_t B, int64_t H, cudaStream_t stream) {
  const int64_t G = 4 * H, gy = ceil_div(B, Tile<UJ>::RB);
  if (gy > 65535) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 grid(unsigned(ceil_div(H, UJ)), unsigned(gy));
  const size_t smem = tile_smem<T, UJ>(H, false);
  for (int64_t t = 0; t < steps; ++t) {
    const T* h_prev = t == 0 ? h0 : y + (t - 1) * B * H;
    const T* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
    lstm_fwd_step_kernel<T, UJ><<<grid, kStepThreads, smem, stream>>>(xg + t * B * G, w_hh, h_prev, c_prev,
                                                                     gates + t * B * G, cs + t * B * H,
                                                                     y + t * B * H, B, H, nullptr);
    const int err = last_error();
    if (err) return err;
  }
  return 0;
}

template <class T, int UJ>
int forward_persistent(const acc_t<T>* xg, const T* w_hh, const T* h0, const T* c0, T* gates, T* cs, T* y,
                       int64_t steps, int64_t B, int64_t H, cudaStream_t stream) {
  const size_t smem = tile_smem<T, UJ>(H, true);
  void* args[] = {(void*)&xg, (void*)&w_hh, (void*)&h0, (void*)&c0, (void*)&gates, (void*)&cs, (void*)&y,
                  (void*)&steps, (void*)&B, (void*)&H};
  return static_cast<int>(cudaLaunchCooperativeKernel((const void*)lstm_fwd_persistent_kernel<T, UJ>,
                                                      dim3(unsigned(ceil_div(H, UJ))), dim3(kStepThreads), args,
                                                      smem, stream));
}

// The outcome of trying the persistent sweep: 0 it ran, FASTRNN_ERR_NOT_PERSISTENT no plan fits, or the
// cudaError_t of a refused cooperative launch. The occupancy query behind the plan can promise more
// co-resident blocks than the launch then gets (cudaErrorCooperativeLaunchTooLarge: another context, MPS
// or a green context holding SMs; cudaErrorLaunchOutOfResources): such an error is cleared here (it is
// not sticky, and left set it would fail the next unrelated launch check), and a refused launch ran
// nothing, so the caller may fall back to the step sweep on the same buffers.
inline int persistent_outcome(int rc) {
  if (rc != 0 && rc != FASTRNN_ERR_NOT_PERSISTENT) cudaGetLastError();
  return rc;
}

// mode: FASTRNN_STEPS, FASTRNN_PERSISTENT_OR_STEPS, FASTRNN_PERSISTENT_ONLY (launchers.h). With
// FASTRNN_PERSISTENT_OR_STEPS a persistent sweep that has no plan or whose launch is refused falls back to
// the step sweep; FASTRNN_PERSISTENT_ONLY returns that outcome instead.
template <class T>
int lstm_forward(const acc_t<T>* xg, const T* w_hh, const T* h0, const T* c0, T* gates, T* cs, T* y, int64_t steps,
                 int64_t B, int64_t H, int mode, cudaStream_t stream) {
  if (steps == 0 || B == 0 || H == 0) return 0;
  if (mode != FASTRNN_STEPS) {
    int rc = FASTRNN_ERR_NOT_PERSISTENT;
    switch (persistent_units<T>(B, H, true)) {
      case 4: rc = forward_persistent<T, 4>(xg, w_hh, h0, c0, gates, cs, y, steps, B, H, stream); break;
      case 8: rc = forward_persistent<T, 8>(xg, w_hh, h0, c0, gates, cs, y, steps, B, H, stream); break;
      case 16: rc = forward_persistent<T, 16>(xg, w_hh, h0, c0, gates, cs, y, steps, B, H, stream); break;
      case 32: rc = forward_persistent<T, 32>(xg, w_hh, h0, c0, gates, cs, y, steps, B, H, stream); break;
      default: break;
    }
    rc = persistent_outcome(rc);
    if (rc == 0 || mode == FASTRNN_PERSISTENT_ONLY) return rc;
  }
  return forward_steps<T, 32>(xg, w_hh, h0, c0, gates, cs, y, steps, B, H, stream);
}

template <class T, int UJ>
int backward_steps(const BwdSeq<T>& q, const T* w_hh, cudaStream_t stream) {
  const int64_t B = q.B, H = q.H, gy = ceil_div(B, Tile<UJ>::RB);
  if (gy > 65535) return static_cast<int>(cudaErrorInvalidValue);
  const dim3 grid(unsigned(ceil_div(H, UJ)), unsigned(gy));
  const size_t smem = tile_smem<T, UJ>(H, false);
  for (int64_t t = q.steps - 1; t >= 0; --t) {
    const BwdStep<T> s = step_args(q, t);
    lstm_bwd_step_kernel<T, UJ><<<grid, kStepThreads, smem, stream>>>(s, w_hh);
    const int err = last_error();
    if (err) return err;
  }
  return 0;
}

template <class T, int UJ>
int backward_persistent(BwdSeq<T> q, const T* w_hh, cudaStream_t stream) {
  const size_t smem = tile_smem<T, UJ>(q.H, true);
  void* args[] = {(void*)&q, (void*)&w_hh};
  return static_cast<int>(cudaLaunchCooperativeKernel((const void*)lstm_bwd_persistent_kernel<T, UJ>,
                                                      dim3(unsigned(ceil_div(q.H, UJ))), dim3(kStepThreads), args,
                                                      smem, stream));
}

// As lstm_forward; a refused launch wrote nothing, so dc still holds the carried dc_n (or zeros) it entered
// with when the step sweep takes over.
template <class T>
int lstm_backward(const BwdSeq<T>& q, const T* w_hh, int mode, cudaStream_t stream) {
  if (q.steps == 0 || q.B == 0 || q.H == 0) return 0;
  if (mode != FASTRNN_STEPS) {
    int rc = FASTRNN_ERR_NOT_PERSISTENT;
    switch (persistent_units<T>(q.B, q.H, false)) {
      case 4: rc = backward_persistent<T, 4>(q, w_hh, stream); break;
      case 8: rc = backward_persistent<T, 8>(q, w_hh, stream); break;
      case 16: rc = backward_persistent<T, 16>(q, w_hh, stream); break;
      case 32: rc = backward_persistent<T, 32>(q, w_hh, stream); break;
      default: break;
    }
    rc = persistent_outcome(rc);
    if (rc == 0 || mode == FASTRNN_PERSISTENT_ONLY) return rc;
  }
  return backward_steps<T, 32>(q, w_hh, stream);
}

}  // namespace cuda
}  // namespace fastrnn
