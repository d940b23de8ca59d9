// What the lengths and the truncation schedule do to one element of the LSTM reverse sweep
// (docs/CONTRACT.md, "Variable length" and the schedule of cut/scale), shared by the CPU backward
// (csrc/cpu/lstm_step.h, lengths.h) and the CUDA one (csrc/cuda/lstm_step.cuh), for the LSTM and the SAB
// layers alike. `V` is the value type (float, double, or a SIMD vector).
#pragma once

#include <stdint.h>

#include "fastrnn/hd.h"

namespace fastrnn {

// Row b's last step, where dh_n and dc_n enter the sweep: lengths[b] - 1 (-1 for an empty row, whose
// dh_n, dc_n go straight to dh0, dc0), or steps - 1 without lengths (len == nullptr).
FASTRNN_HD inline int64_t last_step(const int64_t* len, int64_t b, int64_t steps) {
  return len ? len[b] - 1 : steps - 1;
}

// dL/dh_t from the layer's outputs, for a row whose last step is `last`: dy_t up to it, plus dh_n at it;
// past it dy is ignored (exactly 0, whatever dy holds there, NaN included).
template <class V>
FASTRNN_HD inline V output_grad(V dy, V dh_n, int64_t t, int64_t last) {
  if (t > last) return V(0);
  return t == last ? dy + dh_n : dy;
}

// The entry of a truncation schedule (cut or scale) that applies to row b at step t: the schedule is [T], every
// row's (`rows` false), or [T, B], one per row, step-major (docs/CONTRACT.md; the SAB ops on CUDA).
FASTRNN_HD inline int64_t schedule_entry(int64_t t, int64_t b, int64_t B, bool rows) {
  return rows ? t * B + b : t;
}

// dL/dc_{t-1} as it leaves step t's cell along the recurrent path: exactly 0 where cut[t] (a cut is a
// detach: not even a NaN crosses it), else dc_prev * scale[t].
template <class V>
FASTRNN_HD inline V carried_dc(V dc_prev, bool cut, V scale) {
  return cut ? V(0) : dc_prev * scale;
}

}  // namespace fastrnn
