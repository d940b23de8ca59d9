// The fastrnn operator library: every fastrnn:: schema, and nothing else. Each device registers its
// implementations beside its kernels (TORCH_LIBRARY_IMPL(fastrnn, CPU, m) in csrc/cpu/*.cpp), with the
// argument checks of csrc/checks.h. Autograd and fake (meta) kernels are registered from Python, once for
// every device (fastrnn/ops/lstm.py, fastrnn/ops/sab.py), pytorch/extension-cpp style.
// docs/CONTRACT.md describes the arguments and the saved tensors.
#include <torch/library.h>

TORCH_LIBRARY(fastrnn, m) {
  // One LSTM layer over a sequence (docs/CONTRACT.md, lstm_layer). Returns (y, h_n, c_n, gates, cs):
  // gates [T,B,4H] are the activated i,f,g,o and cs [T,B,H] the cell states, saved for lstm_backward.
  // cut/scale (the truncation schedule) are ignored by the forward and passed on to the backward.
  // lengths (None = every row has length T): int64 [B] on x's device, each in [0, T]; y[t, b] = 0 for
  // t >= lengths[b] and (h_n, c_n)[b] is the state after step lengths[b] - 1 (h0, c0 when 0). Every
  // layer op takes `Tensor? lengths` right after `scale` (docs/CONTRACT.md, "Variable length").
  m.def(
      "lstm_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor c0, "
      "Tensor cut, Tensor scale, Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients of lstm_forward's (y, h_n, c_n) under the schedule. Returns (dx, dw_ih, dw_hh, db, dh0, dc0);
  // db is the gradient of b_ih and of b_hh alike. With lengths: dy[t >= lengths[b], b] is ignored and
  // dh_n[b], dc_n[b] enter the sweep at step lengths[b] - 1 (directly into dh0, dc0 when 0).
  m.def(
      "lstm_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, "
      "Tensor c0, Tensor y, Tensor gates, Tensor cs, Tensor cut, Tensor scale, Tensor? lengths=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same layer in bfloat16 mixed precision (docs/SPEC.md "bfloat16 mixed precision", CPU only):
  // float32 tensors; every GEMM's operands rounded to bfloat16 and summed in float32; the state, gates, cell
  // math and gradients float32. gemm picks the kernel: 'auto', 'emulated', 'mkl' or 'avx512bf16'
  // (csrc/cpu/bf16_gemm.h); one this machine cannot run is refused. Outputs and saved tensors as lstm_forward.
  m.def(
      "lstm_mixed_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, Tensor c0, "
      "Tensor cut, Tensor scale, Tensor? lengths, str gemm) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_mixed_backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, "
      "Tensor c0, Tensor y, Tensor gates, Tensor cs, Tensor cut, Tensor scale, Tensor? lengths, str gemm) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // What this machine offers the mixed path: (avx512_bf16, amx_bf16, mkl_bf16_gemm, the kernel 'auto' picks).
  m.def("bf16_capabilities() -> (bool, bool, bool, str)");

  // One SAB-LSTM layer (SPEC section 1). att_vb is the scorer's last parameter: att_v [A] (mlp) or att_b [1]
  // (linear). Outputs after c_n are saved for sab_backward: gates (activated), c, hhat, idx/w (the
  // attention record), thr (threshold slot), denom (Σ ã + eps), slot_keys (the scorer's projection of each
  // slot: mlp att_wm @ m_j [B, S, A], linear att_wm · m_j [B, S]).
  // lengths (None = every row has length T; no default: positional arguments follow): as lstm_forward;
  // idx/w are also -1 / 0 past each row's length.
  // Streaming (docs/SPEC.md section 8, docs/CONTRACT.md "Streaming memory across calls"): memory [B, S0, H]
  // (None: the memory [h0] of a fresh sequence) is the memory of earlier calls, step0 the global index of
  // the first step; a slot is written after step t when (step0 + t + 1) % k_att == 0. The last output,
  // new_slots [B, S1, H], holds the slots this call wrote (differentiable); slot_keys then cover S0 + S1
  // slots, and idx/thr index cat(memory, new_slots). lengths cannot be combined with memory.
  // Per-row resets (docs/SPEC.md section 9, docs/CONTRACT.md "Per-row resets"; None, None, None: none):
  // reset bool [T, B] restarts a row's (h, c), memory and step counter before step t; slot_offset int64 [B]
  // is each row's first valid carried slot (memory left-padded), row_step0 int64 [B] each row's step counter.
  // Then idx/thr index each row's own table (carried, then a fresh slot per reset and the written slots),
  // new_slots is [B, S1, H] with S1 the most any row appends (zero padding), and lengths is refused.
  m.def(
      "sab_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor att_wh, "
      "Tensor att_wm, Tensor att_vb, Tensor h0, Tensor c0, Tensor cut, Tensor scale, Tensor? lengths, "
      "Tensor? memory, int step0, Tensor? reset, Tensor? slot_offset, Tensor? row_step0, int k_top, int k_att, "
      "str scorer, bool provisional) -> (Tensor y, "
      "Tensor h_n, Tensor c_n, Tensor gates, Tensor c, Tensor hhat, Tensor idx, Tensor w, Tensor thr, "
      "Tensor denom, Tensor slot_keys, Tensor new_slots)");
  // cut (bool) and scale (x's dtype): [T], or [T, B] with row b truncated by column b (docs/CONTRACT.md
  // "Per-row truncation"; the LSTM ops take [T] only).
  // Its backward (SPEC section 2) under the truncation schedule (cut, scale). db is the gradient of both
  // b_ih and b_hh ([0] when has_bias is false). lengths: as lstm_backward. grad_new_slots (None = zeros)
  // is the gradient of new_slots, from the calls that read them; dmemory the gradient of memory ([0] when
  // memory is None: slot 0 is h0, whose gradient is in dh0). lengths cannot be combined with either.
  m.def(
      "sab_backward(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor? grad_new_slots, Tensor x, "
      "Tensor w_ih, Tensor w_hh, Tensor att_wh, Tensor att_wm, Tensor att_vb, Tensor h0, Tensor c0, "
      "Tensor cut, Tensor scale, Tensor? lengths, Tensor? memory, int step0, Tensor? reset, Tensor? slot_offset, "
      "Tensor? row_step0, Tensor y, Tensor gates, "
      "Tensor c, Tensor hhat, Tensor idx, Tensor w, Tensor thr, Tensor denom, Tensor slot_keys, int k_top, "
      "int k_att, str scorer, bool provisional, bool has_bias) -> (Tensor dx, Tensor dw_ih, Tensor dw_hh, "
      "Tensor db, Tensor datt_wh, Tensor datt_wm, Tensor datt_vb, Tensor dh0, Tensor dc0, Tensor dmemory)");
  // The same layer in bfloat16 mixed precision (docs/SPEC.md section 10, CPU only): float32 tensors; the
  // LSTM part's GEMMs (x W_ih^T, h_{t-1} W_hh^T and their gradients) from operands rounded to bfloat16,
  // summed in float32, as lstm_mixed_*; the attention part (scores, top-k, weights, summary, their
  // gradients) float32. gemm picks the kernel as lstm_mixed_forward's. Outputs and saved tensors as above.
  m.def(
      "sab_mixed_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor att_wh, "
      "Tensor att_wm, Tensor att_vb, Tensor h0, Tensor c0, Tensor cut, Tensor scale, Tensor? lengths, "
      "Tensor? memory, int step0, Tensor? reset, Tensor? slot_offset, Tensor? row_step0, int k_top, int k_att, "
      "str scorer, bool provisional, str gemm) -> (Tensor y, "
      "Tensor h_n, Tensor c_n, Tensor gates, Tensor c, Tensor hhat, Tensor idx, Tensor w, Tensor thr, "
      "Tensor denom, Tensor slot_keys, Tensor new_slots)");
  m.def(
      "sab_mixed_backward(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor? grad_new_slots, Tensor x, "
      "Tensor w_ih, Tensor w_hh, Tensor att_wh, Tensor att_wm, Tensor att_vb, Tensor h0, Tensor c0, "
      "Tensor cut, Tensor scale, Tensor? lengths, Tensor? memory, int step0, Tensor? reset, Tensor? slot_offset, "
      "Tensor? row_step0, Tensor y, Tensor gates, "
      "Tensor c, Tensor hhat, Tensor idx, Tensor w, Tensor thr, Tensor denom, Tensor slot_keys, int k_top, "
      "int k_att, str scorer, bool provisional, bool has_bias, str gemm) -> (Tensor dx, Tensor dw_ih, "
      "Tensor dw_hh, Tensor db, Tensor datt_wh, Tensor datt_wm, Tensor datt_vb, Tensor dh0, Tensor dc0, "
      "Tensor dmemory)");
}
