// The fastrnn operator library: schemas only. Implementations register per backend beside their kernels
// (TORCH_LIBRARY_IMPL(fastrnn, CPU, m) in csrc/cpu/*.cpp); other op families add their schemas with
// TORCH_LIBRARY_FRAGMENT(fastrnn, m). Autograd and fake (meta) kernels are registered from Python
// (fastrnn/ops/*.py), pytorch/extension-cpp style.
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
}
