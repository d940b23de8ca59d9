// The scalar math policy of the shared per-element functions (lstm_cell.h, attention_score.h): what the
// CUDA kernels and the CPU's scalar tails pass as `M`. The CPU's vector loops pass their own at::vec
// policies (csrc/cpu/lstm_rows.h VecMath, csrc/cpu/sab_rows.h VecScoreMath) with the same members.
#pragma once

#include <math.h>

#include "fastrnn/hd.h"

namespace fastrnn {

struct ScalarMath {
  FASTRNN_HD static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
  FASTRNN_HD static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
  FASTRNN_HD static float tanh(float x) { return tanhf(x); }
  FASTRNN_HD static double tanh(double x) { return ::tanh(x); }
  FASTRNN_HD static float fma(float a, float b, float c) { return fmaf(a, b, c); }
  FASTRNN_HD static double fma(double a, double b, double c) { return ::fma(a, b, c); }
};

}  // namespace fastrnn
