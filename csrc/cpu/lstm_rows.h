// CPU only: the LSTM cell pointwise pass over one batch row, vectorized with at::vec over the hidden units
// (scalar tail for H not a multiple of the vector width). The per-element math is lstm_cell.h's.
// at::vec only emits AVX2/AVX-512 code when this is compiled with the CPU_CAPABILITY defines and -m flags;
// CMakeLists.txt sets them for every csrc/cpu/*.cpp.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "fastrnn/lstm_cell.h"      // the per-element math, shared with CUDA
#include "fastrnn/reverse_sweep.h"  // carried_dc: the schedule on dc, shared with CUDA

namespace fastrnn {
namespace cpu {

// float32 uses exp_u20 (an inlined degree-5 polynomial, ~20 ulp) for both sigmoid and tanh, since
// tanh(x) = 2 sigmoid(2x) - 1: measured 2.4x faster than Sleef's u10 calls for the whole cell pass (~22 vs
// ~52 us per step at B=32, H=128), which made the pointwise pass, not the GEMM, half of a forward step.
// Its error (~1e-6 relative, ~1e-7 absolute for tanh near 0) is below float32's reference tolerance.
// exp_u20 clamps its input, which would turn NaN into a finite number: NaN is blended back so a NaN input
// still poisons the output as it does in torch.nn.LSTM. float64 keeps Sleef (the 1e-9 contract).
struct VecMath {
  using VecF = at::vec::Vectorized<float>;
  using VecD = at::vec::Vectorized<double>;
  static VecF sigmoid(const VecF& x) {
    const VecF one(1.0f);
    return VecF::blendv(one / (one + x.neg().exp_u20()), x, x != x);
  }
  static VecF tanh(const VecF& x) {
    const VecF one(1.0f), two(2.0f);
    return VecF::blendv(two / (one + (x * VecF(-2.0f)).exp_u20()) - one, x, x != x);
  }
  static VecD sigmoid(const VecD& x) {
    const VecD one(1.0);
    return one / (one + x.neg().exp());
  }
  static VecD tanh(const VecD& x) { return x.tanh(); }
};

// gates: this row's [4H] pre-activations, overwritten with the activated gates i, f, g, o.
// c_prev: c_{t-1} [H]; c, h: c_t and h_t [H] (outputs).
template <class T>
inline void lstm_row_forward(T* gates, const T* c_prev, T* c, T* h, int64_t H) {
  using Vec = at::vec::Vectorized<T>;
  T* gi = gates;
  T* gf = gates + H;
  T* gg = gates + 2 * H;
  T* go = gates + 3 * H;
  int64_t j = 0;
  for (; j + Vec::size() <= H; j += Vec::size()) {
    Vec i, f, g, o, cv, hv;
    lstm_cell_forward<VecMath>(Vec::loadu(gi + j), Vec::loadu(gf + j), Vec::loadu(gg + j), Vec::loadu(go + j),
                               Vec::loadu(c_prev + j), i, f, g, o, cv, hv);
    i.store(gi + j);
    f.store(gf + j);
    g.store(gg + j);
    o.store(go + j);
    cv.store(c + j);
    hv.store(h + j);
  }
  for (; j < H; ++j) {
    lstm_cell_forward<ScalarMath>(gi[j], gf[j], gg[j], go[j], c_prev[j], gi[j], gf[j], gg[j], go[j], c[j], h[j]);
  }
}

// dh: dL/dh_t of this row [H] (all paths). dc: [H], on entry dL/dc_t from step t+1, on exit the gradient
// into c_{t-1} under the schedule: dc_prev * carry_scale, or exactly zero when `cut` (a cut is a detach,
// so not even a NaN may cross it). gates: activated i, f, g, o [4H]; c_prev, c: c_{t-1}, c_t [H].
// dgates: [4H] output, the gate pre-activation gradients.
template <class T>
inline void lstm_row_backward(const T* dh, T* dc, const T* gates, const T* c_prev, const T* c, T* dgates,
                              int64_t H, bool cut, T carry_scale) {
  using Vec = at::vec::Vectorized<T>;
  const T* gi = gates;
  const T* gf = gates + H;
  const T* gg = gates + 2 * H;
  const T* go = gates + 3 * H;
  const Vec vscale(carry_scale);
  int64_t j = 0;
  for (; j + Vec::size() <= H; j += Vec::size()) {
    Vec di, df, dg, d_o, dcp;
    lstm_cell_backward<VecMath>(Vec::loadu(dh + j), Vec::loadu(dc + j), Vec::loadu(gi + j), Vec::loadu(gf + j),
                                Vec::loadu(gg + j), Vec::loadu(go + j), Vec::loadu(c_prev + j), Vec::loadu(c + j),
                                di, df, dg, d_o, dcp);
    di.store(dgates + j);
    df.store(dgates + H + j);
    dg.store(dgates + 2 * H + j);
    d_o.store(dgates + 3 * H + j);
    carried_dc(dcp, cut, vscale).store(dc + j);
  }
  for (; j < H; ++j) {
    T dcp;
    lstm_cell_backward<ScalarMath>(dh[j], dc[j], gi[j], gf[j], gg[j], go[j], c_prev[j], c[j], dgates[j],
                                   dgates[H + j], dgates[2 * H + j], dgates[3 * H + j], dcp);
    dc[j] = carried_dc(dcp, cut, carry_scale);
  }
}

}  // namespace cpu
}  // namespace fastrnn
