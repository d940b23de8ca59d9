// Schemas of the SAB layer ops and their CPU registrations, with the argument checks.
// The autograd formula and the fake (meta) kernels are registered from Python
// (fastrnn/ops/sab.py), as torch.library recommends for ops defined in C++.
#include "sab_common.h"
#include "lengths.h"

#include <torch/library.h>

#include <string>

namespace fastrnn {
namespace cpu {
namespace {

struct Checker {
  const char* op;

  void tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) const {
    TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  }
};

struct Dims {
  int64_t T, B, I, H, A;
  bool mlp;
};

// Checks the arguments the forward and the backward share; returns the sizes.
Dims check_common(const Checker& ck, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                  const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_s,
                  const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut, const at::Tensor& scale,
                  int64_t k_top, int64_t k_att, c10::string_view scorer) {
  const char* op = ck.op;
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3 && x.size(0) >= 1, op, ": x must be [T, B, I] with T >= 1, got ", x.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(1) >= 1, op, ": h0 must be [B, H] with H >= 1, got ", h0.sizes());
  TORCH_CHECK(k_top >= 1, op, ": k_top must be >= 1, got ", k_top);
  TORCH_CHECK(k_att >= 1, op, ": k_att must be >= 1, got ", k_att);
  TORCH_CHECK(scorer == "mlp" || scorer == "linear", op, ": scorer must be 'mlp' or 'linear', got '",
              std::string(scorer), "'");
  Dims d{x.size(0), x.size(1), x.size(2), h0.size(1), 0, scorer == "mlp"};
  const auto dt = x.scalar_type();
  ck.tensor(x, "x", dt, {d.T, d.B, d.I});
  ck.tensor(w_ih, "w_ih", dt, {4 * d.H, d.I});
  ck.tensor(w_hh, "w_hh", dt, {4 * d.H, d.H});
  ck.tensor(h0, "h0", dt, {d.B, d.H});
  ck.tensor(c0, "c0", dt, {d.B, d.H});
  ck.tensor(cut, "cut", at::kBool, {d.T});
  ck.tensor(scale, "scale", dt, {d.T});
  if (d.mlp) {
    TORCH_CHECK(att_wh.dim() == 2 && att_wh.size(0) >= 1, op, ": att_wh must be [A, H] for the mlp scorer, got ",
                att_wh.sizes());
    d.A = att_wh.size(0);
    ck.tensor(att_wh, "att_wh", dt, {d.A, d.H});
    ck.tensor(att_wm, "att_wm", dt, {d.A, d.H});
    ck.tensor(att_s, "att_s", dt, {d.A});
  } else {
    ck.tensor(att_wh, "att_wh", dt, {d.H});
    ck.tensor(att_wm, "att_wm", dt, {d.H});
    ck.tensor(att_s, "att_s", dt, {1});
  }
  return d;
}

SabForwardOut sab_forward_cpu(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                              const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_s,
                              const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
                              const at::Tensor& scale, const c10::optional<at::Tensor>& lengths, int64_t k_top,
                              int64_t k_att, c10::string_view scorer, bool provisional) {
  const Checker ck{"fastrnn::sab_forward"};
  Dims d = check_common(ck, x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, k_top, k_att, scorer);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), ck.op, ": b_ih and b_hh must both be given or both be None");
  if (b_ih.has_value()) {
    ck.tensor(*b_ih, "b_ih", x.scalar_type(), {4 * d.H});
    ck.tensor(*b_hh, "b_hh", x.scalar_type(), {4 * d.H});
  }
  const int64_t* len = check_lengths(lengths, d.T, d.B, ck.op);
  return sab_forward_impl(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_s, h0, c0, len, k_top, k_att, d.mlp,
                          provisional);
}

SabBackwardOut sab_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
                                const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_s,
                                const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
                                const at::Tensor& scale, const c10::optional<at::Tensor>& lengths,
                                const at::Tensor& y, const at::Tensor& gates,
                                const at::Tensor& c, const at::Tensor& hhat, const at::Tensor& idx,
                                const at::Tensor& w, const at::Tensor& thr, const at::Tensor& denom,
                                const at::Tensor& cache, int64_t k_top, int64_t k_att,
                                c10::string_view scorer, bool provisional, bool has_bias) {
  const Checker ck{"fastrnn::sab_backward"};
  Dims d = check_common(ck, x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, k_top, k_att, scorer);
  const auto dt = x.scalar_type();
  const int64_t T = d.T, B = d.B, H = d.H, S = num_slots(T, k_att);
  ck.tensor(grad_y, "grad_y", dt, {T, B, H});
  ck.tensor(grad_hn, "grad_hn", dt, {B, H});
  ck.tensor(grad_cn, "grad_cn", dt, {B, H});
  ck.tensor(y, "y", dt, {T, B, H});
  ck.tensor(gates, "gates", dt, {T, B, 4 * H});
  ck.tensor(c, "c", dt, {T, B, H});
  ck.tensor(hhat, "hhat", dt, {T, B, H});
  ck.tensor(idx, "idx", at::kLong, {T, B, k_top});
  ck.tensor(w, "w", dt, {T, B, k_top});
  ck.tensor(thr, "thr", at::kLong, {T, B});
  ck.tensor(denom, "denom", dt, {T, B});
  if (d.mlp) {
    ck.tensor(cache, "cache", dt, {B, S, d.A});
  } else {
    ck.tensor(cache, "cache", dt, {B, S});
  }
  const int64_t* len = check_lengths(lengths, T, B, ck.op);
  return sab_backward_impl(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, att_wh, att_wm, att_s, h0, c0, cut, scale, len,
                           y, gates, c, hhat, idx, w, thr, denom, cache, k_top, k_att, d.mlp, provisional,
                           has_bias);
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  // One SAB-LSTM layer (SPEC section 1). Outputs after c_n are saved for sab_backward:
  // gates (activated), c, hhat, idx/w (the attention record), thr (threshold slot), denom (Σ ã + eps),
  // cache (mlp slot projections [B, S, A], linear slot scores [B, S]).
  // lengths (None = every row has length T; no default: positional arguments follow): as lstm_forward
  // (csrc/ops.cpp); idx/w are also -1 / 0 past each row's length.
  m.def(
      "sab_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor att_wh, "
      "Tensor att_wm, Tensor att_s, Tensor h0, Tensor c0, Tensor cut, Tensor scale, Tensor? lengths, "
      "int k_top, int k_att, "
      "str scorer, bool provisional) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor c, "
      "Tensor hhat, Tensor idx, Tensor w, Tensor thr, Tensor denom, Tensor cache)");
  // Its backward (SPEC section 2) under the truncation schedule (cut, scale). db is the gradient of both
  // b_ih and b_hh ([0] when has_bias is false). lengths: as lstm_backward.
  m.def(
      "sab_backward(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor w_ih, Tensor w_hh, "
      "Tensor att_wh, Tensor att_wm, Tensor att_s, Tensor h0, Tensor c0, Tensor cut, Tensor scale, "
      "Tensor? lengths, Tensor y, Tensor gates, Tensor c, Tensor hhat, Tensor idx, Tensor w, Tensor thr, Tensor denom, "
      "Tensor cache, int k_top, int k_att, str scorer, bool provisional, bool has_bias) -> "
      "(Tensor dx, Tensor dw_ih, Tensor dw_hh, Tensor db, Tensor datt_wh, Tensor datt_wm, Tensor datt_s, "
      "Tensor dh0, Tensor dc0)");
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("sab_forward", &fastrnn::cpu::sab_forward_cpu);
  m.impl("sab_backward", &fastrnn::cpu::sab_backward_cpu);
}
