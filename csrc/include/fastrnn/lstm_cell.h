// The LSTM cell's pointwise math for one element (one hidden unit of one batch row), forward and
// backward. Shared by the CPU kernels (scalar and at::vec::Vectorized lanes) and the CUDA kernels, so the
// CPU tests exercise the exact code the GPU runs. No torch headers here: nvcc compiles this without them.
//
// Gate order is torch.nn.LSTM's: i, f, g, o. `V` is the value type (float, double, or a SIMD vector) and
// `M` a math policy providing `M::sigmoid(V)` and `M::tanh(V)`: the CPU passes a Vectorized policy, the
// scalar policy (scalar_math.h) serves CUDA and the CPU's tail elements.
#pragma once

#include "fastrnn/hd.h"
#include "fastrnn/scalar_math.h"

namespace fastrnn {

// Forward: from the gate pre-activations and c_{t-1}, the activated gates (stored for backward), c_t, h_t.
template <class M, class V>
FASTRNN_HD inline void lstm_cell_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev,
                                         V& i, V& f, V& g, V& o, V& c, V& h) {
  i = M::sigmoid(pre_i);
  f = M::sigmoid(pre_f);
  g = M::tanh(pre_g);
  o = M::sigmoid(pre_o);
  c = f * c_prev + i * g;
  h = o * M::tanh(c);
}

// Backward: given dL/dh_t (`dh`, all paths), dL/dc_t arriving from step t+1 (`dc_next`), the activated
// gates and c_{t-1}, c_t, returns the gate pre-activation gradients and dL/dc_{t-1} through this cell
// (`dc_prev`, before any truncation scale: the caller applies the schedule). tanh(c_t) is recomputed
// rather than stored: one tanh is cheaper than T*B*H more saved floats.
template <class M, class V>
FASTRNN_HD inline void lstm_cell_backward(V dh, V dc_next, V i, V f, V g, V o, V c_prev, V c,
                                          V& d_pre_i, V& d_pre_f, V& d_pre_g, V& d_pre_o, V& dc_prev) {
  const V one(1);
  const V tc = M::tanh(c);
  const V dc = dc_next + dh * o * (one - tc * tc);
  d_pre_i = dc * g * i * (one - i);
  d_pre_f = dc * c_prev * f * (one - f);
  d_pre_g = dc * i * (one - g * g);
  d_pre_o = dh * tc * o * (one - o);
  dc_prev = dc * f;
}

}  // namespace fastrnn
