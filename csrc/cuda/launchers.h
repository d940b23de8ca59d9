// C launcher API of fastrnn's CUDA kernels (libfastrnn_cuda.so when built by CMake; the same sources are
// compiled into the torch extension by fastrnn/ops/cuda_build.py). Plain C types only: the kernels build
// without torch headers (the CPU torch wheel ships none for CUDA); the binding (csrc/cuda/binding.cpp) calls
// these with raw device pointers and the current cudaStream_t passed as void*.
// Every launcher returns the cudaError_t of its launches (0 = cudaSuccess) as an int, or a negative
// FASTRNN_ERR_* code. bfloat16 tensors are passed as void* (__nv_bfloat16 storage); "acc" buffers are
// float for float32 and bfloat16, double for float64.
// Layouts are the CPU ops': x-like [T, B, .] time-major, gates [T, B, 4H] (i, f, g, o blocks per row),
// W_hh [4H, H], all contiguous. Nothing here allocates: the caller passes every buffer.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Sweep modes of the LSTM launchers.
#define FASTRNN_STEPS 0                // one launch per step (W_hh streamed through shared memory)
#define FASTRNN_PERSISTENT_OR_STEPS 1  // one persistent launch where W_hh fits on chip, else per step
#define FASTRNN_PERSISTENT_ONLY 2      // persistent or FASTRNN_ERR_NOT_PERSISTENT
#define FASTRNN_ERR_NOT_PERSISTENT (-1)
#define FASTRNN_ERR_K_TOP (-2)         // a SAB sweep's K above fastrnn_sab_max_k_top (nothing launched)

// One step's cell pointwise forward: gates (pre-activations in, activated i,f,g,o out), c_t, h_t.
int fastrnn_lstm_pointwise_forward_f32(float* gates, const float* c_prev, float* c, float* h, int64_t B,
                                       int64_t H, void* stream);
int fastrnn_lstm_pointwise_forward_f64(double* gates, const double* c_prev, double* c, double* h, int64_t B,
                                       int64_t H, void* stream);

// One step's cell pointwise backward: dgates out; dc in (from step t+1), out (into step t-1: times
// carry_scale, or exactly 0 when cut), as in the CPU op.
int fastrnn_lstm_pointwise_backward_f32(const float* dh, float* dc, const float* gates, const float* c_prev,
                                        const float* c, float* dgates, int64_t B, int64_t H, bool cut,
                                        float carry_scale, void* stream);
int fastrnn_lstm_pointwise_backward_f64(const double* dh, double* dc, const double* gates,
                                        const double* c_prev, const double* c, double* dgates, int64_t B,
                                        int64_t H, bool cut, double carry_scale, void* stream);

// C[m*ldc + n] = alpha * sum_k A[m*sam + k*sak] * B[k*sbk + n*sbn] (+ beta * C when beta != 0).
// bf16: A and B bfloat16, C float32.
int fastrnn_gemm_f32(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sam, int64_t sak,
                     const float* B, int64_t sbk, int64_t sbn, float beta, float* C, int64_t ldc, void* stream);
int fastrnn_gemm_f64(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t sam, int64_t sak,
                     const double* B, int64_t sbk, int64_t sbn, double beta, double* C, int64_t ldc, void* stream);
int fastrnn_gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t sam, int64_t sak,
                      const void* B, int64_t sbk, int64_t sbn, float beta, float* C, int64_t ldc, void* stream);

// The LSTM layer's forward sweep: xg [T, B, 4H] (acc) = x W_ih^T + b_ih + b_hh (the caller's GEMM); fills
// gates [T, B, 4H] (activated), cs and y [T, B, H] (y unmasked: lengths are applied by the caller).
int fastrnn_lstm_forward_f32(const float* xg, const float* w_hh, const float* h0, const float* c0, float* gates,
                             float* cs, float* y, int64_t T, int64_t B, int64_t H, int mode, void* stream);
int fastrnn_lstm_forward_f64(const double* xg, const double* w_hh, const double* h0, const double* c0,
                             double* gates, double* cs, double* y, int64_t T, int64_t B, int64_t H, int mode,
                             void* stream);
int fastrnn_lstm_forward_bf16(const float* xg, const void* w_hh, const void* h0, const void* c0, void* gates,
                              void* cs, void* y, int64_t T, int64_t B, int64_t H, int mode, void* stream);

// The LSTM layer's reverse sweep under the schedule (cut [T] bool, scale [T]) and lengths ([B] int64 or
// NULL): fills dG [T, B, 4H] (acc, the gate pre-activation gradients); dc [B, H] (acc) holds on entry the
// carried dL/dc_{T-1} (dc_n without lengths, zeros with them) and on exit dL/dc0. dh0 (= cut[0] ? 0 :
// scale[0] dG_0 W_hh) and the weight gradients are the caller's GEMMs; so is adding dh_n, dc_n of
// zero-length rows to dh0, dc0.
int fastrnn_lstm_backward_f32(const float* dy, const float* dh_n, const float* dc_n, const int64_t* lengths,
                              const float* w_hh, const float* c0, const float* gates, const float* cs,
                              const bool* cut, const float* scale, float* dG, float* dc, int64_t T, int64_t B,
                              int64_t H, int mode, void* stream);
int fastrnn_lstm_backward_f64(const double* dy, const double* dh_n, const double* dc_n, const int64_t* lengths,
                              const double* w_hh, const double* c0, const double* gates, const double* cs,
                              const bool* cut, const double* scale, double* dG, double* dc, int64_t T, int64_t B,
                              int64_t H, int mode, void* stream);
int fastrnn_lstm_backward_bf16(const void* dy, const void* dh_n, const void* dc_n, const int64_t* lengths,
                               const void* w_hh, const void* c0, const void* gates, const void* cs,
                               const bool* cut, const void* scale, float* dG, float* dc, int64_t T, int64_t B,
                               int64_t H, int mode, void* stream);

// Units per block the persistent LSTM kernel would use on the current device (0: it cannot run, the
// sweep goes step by step). dtype: 0 float32, 1 float64, 2 bfloat16; forward: 1 forward, 0 backward.
int fastrnn_lstm_persistent_units(int64_t B, int64_t H, int dtype, int forward);

// The per-row slot tables of a SAB call with per-row arguments (docs/SPEC.md section 9, docs/CONTRACT.md
// "Per-row resets"): fastrnn/row_slots.h's walk, one thread per row. reset [T, B] bool, slot_offset [B] and
// row_step0 [B] int64 may each be NULL (no resets; offset 0; every row's counter starts at step0). The first
// call (src NULL) fills lo, hi, wr [T, B] (the slots [lo, hi) step t scores, the slot written after it or
// -1) and appended [B] (the slots each row appends); the caller takes S1 = max(appended), and a second call
// with lo, hi, wr, appended NULL fills src [B, S1] (prefilled with -1 by the caller: padding): per appended
// slot the step whose state it holds, -1 for a reset's fresh slot.
int fastrnn_sab_row_slots(const bool* reset, const int64_t* slot_offset, const int64_t* row_step0, int64_t step0,
                          int64_t T, int64_t B, int64_t S0, int64_t k_att, int64_t* lo, int64_t* hi, int64_t* wr,
                          int64_t* appended, int64_t* src, int64_t S1, void* stream);

// A SAB call's per-row slot tables and resets, read by both sweeps; every pointer NULL (S1 = 0) for a call
// without per-row arguments: every row on the uniform slot grid (fastrnn/memory_slots.h). With them, idx and
// thr index each row's own table (fastrnn/row_slots.h), a row reset at step t reads h_{t-1}, c_{t-1} as
// zeros and no gradient crosses into step t - 1 along h and c.
struct fastrnn_sab_rows {
  const bool* reset;            // [T, B], or NULL (no resets)
  const int64_t *lo, *hi, *wr;  // [T, B] (fastrnn_sab_row_slots), or NULL (no per-row tables)
  const int64_t* src;           // [B, S1]
  int64_t S1;
  const void* zeros;            // T [H] zeros: the value of a reset's fresh slot
};

// The SAB-LSTM layer's forward sweep (SPEC sections 1, 8 and 9). T = storage type, acc = accumulation type.
// The memory is cat(carried, new slots) (fastrnn/memory_slots.h): S0 carried slots, `memory` [B, S0, H] or,
// when NULL, h0 (S0 = 1); a slot is written after step t when (step0 + t + 1) % k_att == 0; with per-row
// tables (`rows`) each row's own. The new slots' values stay in hhat / y (the binding gathers new_slots from
// there).
struct fastrnn_sab_forward_args {
  int64_t T, B, H, A, S, K, k_att;  // A = 0 for the linear scorer; S = S0 + S1 slots; K = k_top
  int64_t S0, step0;                // carried slots (1 without memory), global index of step 0
  int mlp, provisional;
  struct fastrnn_sab_rows rows;     // per-row tables and resets, or all NULL
  const void* xg;                                              // acc [T, B, 4H]
  const void *w_hh, *att_wh, *att_wm, *att_vb, *h0, *c0;        // T
  const void* memory;                                          // T [B, S0, H], or NULL (fresh: h0)
  void *gates, *c, *hhat, *y;                                  // T outputs ([T, B, 4H], [T, B, H] x3)
  int64_t* idx;                                                // [T, B, K]
  void* w;                                                     // T [T, B, K]
  int64_t* thr;                                                // [T, B]
  void* denom;                                                 // T [T, B]
  void* slot_keys;                                             // T: mlp [B, S, A], linear [B, S]
  void *q, *scores;                                            // acc workspace, mlp: [B, A], [B, S]
  void* keep_score;                                            // acc workspace, linear: [B, K + 1]
  int64_t* keep_slot;                                          // linear: [B, K + 1]
  int32_t* keep_n;                                             // linear: [B], zeroed by the caller
};
int fastrnn_sab_forward_f32(const struct fastrnn_sab_forward_args* args, void* stream);
int fastrnn_sab_forward_f64(const struct fastrnn_sab_forward_args* args, void* stream);
int fastrnn_sab_forward_bf16(const struct fastrnn_sab_forward_args* args, void* stream);

// The largest k_top (K) the SAB sweeps take for dtype (0 float32, 1 float64, 2 bfloat16): their per-row
// attention kernels keep the ranking of K + 1 slots, the selection and K accumulators in shared memory,
// within the 48 KiB any block may use (1741 for float32 and bfloat16, 1215 for float64). A larger K makes
// fastrnn_sab_forward_* and fastrnn_sab_backward_* return FASTRNN_ERR_K_TOP.
int fastrnn_sab_max_k_top(int dtype);

// The SAB-LSTM layer's reverse sweep (SPEC section 2), slots as in the forward. After it the caller forms
// (docs in binding.cpp): the carried slots' gradient (mlp: dM[:, :S0] += dP[:, :S0] att_wm), which is
// dmemory, or with no memory slot 0's, joining dh0 = dM[:, 0] + (cut[0] or a reset at 0 ? 0 : scale[0] dG_0 W_hh);
// dc0 = dc, the weight gradients from dG, and the attention parameters' gradients (mlp: dQ^T hhat,
// dP^T slots, dv summed over rows; linear: the row accumulators summed).
struct fastrnn_sab_backward_args {
  int64_t T, B, H, A, S, K, k_att;
  int64_t S0, step0;
  int mlp, provisional;
  struct fastrnn_sab_rows rows;                                  // as the forward's
  const void *grad_y, *grad_hn, *grad_cn;                        // T
  const int64_t* lengths;                                        // [B] or NULL
  const void *w_hh, *att_wh, *att_wm, *att_vb, *h0, *c0, *scale;  // T; scale [T] or [T, B] (scale_rows)
  const void* memory;                                            // T [B, S0, H], or NULL (fresh: h0)
  const bool* cut;                                               // [T] or [T, B] (cut_rows)
  int cut_rows, scale_rows;                                      // the schedule per row: [T, B], step-major
  const void *y, *gates, *c, *hhat, *w, *denom, *slot_keys;      // T (the forward's outputs)
  const int64_t *idx, *thr;
  void *dG, *dQ;            // acc out: [T, B, 4H], mlp [T, B, A]
  void *dM, *dP, *dv;       // acc, zeroed by the caller (dM's new slots: grad_new_slots): [B, S, H],
                            // mlp [B, S, A], mlp [B, A]
  void *acc_wm, *acc_wh;    // acc, zeroed, linear: [B, H] each (d att_wm, d att_wh per row)
  void* acc_b;              // acc, zeroed, linear: [B] (d att_b per row)
  void *q, *carry, *dhh;    // acc workspace: mlp [B, A], [B, H], [B, H]
  void* dc;                 // acc [B, H]: in dc_n (zeros with lengths), out dL/dc0
};
int fastrnn_sab_backward_f32(const struct fastrnn_sab_backward_args* args, void* stream);
int fastrnn_sab_backward_f64(const struct fastrnn_sab_backward_args* args, void* stream);
int fastrnn_sab_backward_bf16(const struct fastrnn_sab_backward_args* args, void* stream);

#ifdef __cplusplus
}
#endif
