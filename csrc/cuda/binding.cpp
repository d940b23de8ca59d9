// The CUDA implementations of the fastrnn:: ops (schemas in csrc/ops.cpp; the
// argument lists and outputs are the CPU ops', so the Python autograd and fake kernels hold unchanged).
// Built by fastrnn/ops/cuda_build.py with torch.utils.cpp_extension together with the kernels
// (csrc/cuda/*.cu, reached through the C launcher API of launchers.h); not built by CMake (it needs the
// CUDA build of torch). This file does what is not sequential with torch (cuBLAS): the input projection
// before the sweep, the weight gradients after it, the lengths' gathers and masks; the sweeps are the
// launchers'. bfloat16 tensors compute in float32 (projection, gate gradients, accumulators) and return
// bfloat16.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "cuda/launchers.h"

namespace fastrnn {
namespace cuda_binding {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

struct Checker {
  const char* op;
  at::Device device;
  void tensor(const Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) const {
    TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device, " (like x), got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  }
};

at::ScalarType acc_type(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

void check_x(const char* op, const Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 3 && x.size(0) >= 1, op, ": x must be [T, B, I] with T >= 1, got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16, op,
              ": x must be float32, float64 or bfloat16, got ", dt);
}

void check_rc(int rc, const char* op) {
  TORCH_CHECK(rc == 0, op, ": CUDA launch failed: ",
              rc < 0 ? std::string("fastrnn error ") + std::to_string(rc)
                     : std::string(cudaGetErrorString(static_cast<cudaError_t>(rc))));
}

// lengths: None or int64 [B] on x's device with values in [0, T] (one host read, as the CPU op checks).
const int64_t* check_lengths(const Checker& ck, const OptTensor& lengths, int64_t T, int64_t B) {
  if (!lengths.has_value()) return nullptr;
  ck.tensor(*lengths, "lengths", at::kLong, {B});
  if (B > 0)
    TORCH_CHECK(((*lengths >= 0) & (*lengths <= T)).all().item<bool>(), ck.op, ": lengths must lie in [0, T] with T = ",
                T);
  return lengths->const_data_ptr<int64_t>();
}

// FASTRNN_CUDA_LSTM_MODE: 0 step kernels, 1 persistent where possible (default), 2 persistent or error.
int lstm_mode() {
  const char* v = std::getenv("FASTRNN_CUDA_LSTM_MODE");
  return v == nullptr ? FASTRNN_PERSISTENT_OR_STEPS : std::atoi(v);
}

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

Tensor input_projection(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih, const OptTensor& b_hh) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = w_ih.size(0);
  const auto acc = acc_type(x.scalar_type());
  Tensor xg = x.reshape({T * B, I}).to(acc).mm(w_ih.to(acc).t());
  if (b_ih.has_value()) xg.add_(b_ih->to(acc) + b_hh->to(acc));
  return xg.view({T, B, G}).contiguous();
}

// [T, B] bool: step t is past row b's length.
Tensor past_lengths(int64_t T, const Tensor& len) {
  return at::arange(T, len.options()).unsqueeze(1) >= len.unsqueeze(0);
}

// After the forward: (h_n, c_n) at each row's last step ((h0, c0) for length 0) and y zeroed past it.
std::pair<Tensor, Tensor> stop_at_lengths(Tensor& y, const Tensor& cs, const Tensor& h0, const Tensor& c0,
                                          const Tensor& len) {
  const int64_t T = y.size(0), B = y.size(1);
  const Tensor rows = at::arange(B, len.options());
  const Tensor last = (len - 1).clamp_min(0);
  const Tensor empty = (len == 0).unsqueeze(1);
  Tensor h_n = at::where(empty, h0, y.index({last, rows}));
  Tensor c_n = at::where(empty, c0, cs.index({last, rows}));
  y.masked_fill_(past_lengths(T, len).unsqueeze(2), 0);
  return {h_n, c_n};
}

// dh0 from the recurrent path: cut[0] ? 0 : scale[0] dG_0 W_hh (a cut is a detach: where, not a product).
Tensor recurrent_into_h0(const Tensor& dG, const Tensor& w_hh, const Tensor& cut, const Tensor& scale) {
  const auto acc = dG.scalar_type();
  const Tensor rec = dG[0].mm(w_hh.to(acc)) * scale[0].to(acc);
  return at::where(cut[0], at::zeros_like(rec), rec);
}

// Zero-length rows: h_n, c_n are h0, c0 themselves, so dh_n, dc_n join dh0, dc0.
void add_zero_length_grads(const Tensor& len, const Tensor& dh_n, const Tensor& dc_n, Tensor& dh0, Tensor& dc0) {
  const Tensor empty = (len == 0).unsqueeze(1);
  dh0 = at::where(empty, dh0 + dh_n.to(dh0.scalar_type()), dh0);
  dc0 = at::where(empty, dc0 + dc_n.to(dc0.scalar_type()), dc0);
}

// dx, dW_ih, dW_hh, db from dG [T, B, 4H] (acc) as one GEMM each; h_in = [h0, y_0 .. y_{T-2}].
std::tuple<Tensor, Tensor, Tensor, Tensor> weight_grads(const Tensor& dG, const Tensor& x, const Tensor& w_ih,
                                                        const Tensor& h0, const Tensor& y) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = 4 * H;
  const auto acc = dG.scalar_type(), dt = x.scalar_type();
  const Tensor dG2 = dG.view({T * B, G});
  const Tensor h_in = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0);
  Tensor dx = dG2.mm(w_ih.to(acc)).view({T, B, I}).to(dt);
  Tensor dw_ih = dG2.t().mm(x.reshape({T * B, I}).to(acc)).to(dt);
  Tensor dw_hh = dG2.t().mm(h_in.reshape({T * B, H}).to(acc)).to(dt);
  Tensor db = dG2.sum(0).to(dt);
  return {dx, dw_ih, dw_hh, db};
}

struct LstmDims {
  int64_t T, B, I, H;
};

LstmDims check_lstm(const Checker& ck, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& h0,
                    const Tensor& c0, const Tensor& cut, const Tensor& scale) {
  check_x(ck.op, x);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1), ck.op, ": w_hh must be [4H, H], got ",
              w_hh.sizes());
  const LstmDims d{x.size(0), x.size(1), x.size(2), w_hh.size(1)};
  const auto dt = x.scalar_type();
  ck.tensor(x, "x", dt, {d.T, d.B, d.I});
  ck.tensor(w_ih, "w_ih", dt, {4 * d.H, d.I});
  ck.tensor(w_hh, "w_hh", dt, {4 * d.H, d.H});
  ck.tensor(h0, "h0", dt, {d.B, d.H});
  ck.tensor(c0, "c0", dt, {d.B, d.H});
  ck.tensor(cut, "cut", at::kBool, {d.T});
  ck.tensor(scale, "scale", dt, {d.T});
  return d;
}

#define FASTRNN_DISPATCH(dt, F32, F64, BF16) \
  ((dt) == at::kFloat ? (F32) : (dt) == at::kDouble ? (F64) : (BF16))

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(const Tensor& x, const Tensor& w_ih,
                                                                     const Tensor& w_hh, const OptTensor& b_ih,
                                                                     const OptTensor& b_hh, const Tensor& h0,
                                                                     const Tensor& c0, const Tensor& cut,
                                                                     const Tensor& scale, const OptTensor& lengths) {
  const Checker ck{"fastrnn::lstm_forward", x.device()};
  const LstmDims d = check_lstm(ck, x, w_ih, w_hh, h0, c0, cut, scale);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), ck.op, ": b_ih and b_hh must both be given or both be None");
  if (b_ih.has_value()) {
    ck.tensor(*b_ih, "b_ih", x.scalar_type(), {4 * d.H});
    ck.tensor(*b_hh, "b_hh", x.scalar_type(), {4 * d.H});
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t* len = check_lengths(ck, lengths, d.T, d.B);
  (void)len;
  const Tensor xg = input_projection(x, w_ih, b_ih, b_hh);
  Tensor gates = at::empty({d.T, d.B, 4 * d.H}, x.options());
  Tensor cs = at::empty({d.T, d.B, d.H}, x.options());
  Tensor y = at::empty({d.T, d.B, d.H}, x.options());
  const auto dt = x.scalar_type();
  const int mode = lstm_mode();
  int rc;
  if (dt == at::kFloat) {
    rc = fastrnn_lstm_forward_f32(xg.const_data_ptr<float>(), w_hh.const_data_ptr<float>(), h0.const_data_ptr<float>(),
                                  c0.const_data_ptr<float>(), gates.data_ptr<float>(), cs.data_ptr<float>(),
                                  y.data_ptr<float>(), d.T, d.B, d.H, mode, stream());
  } else if (dt == at::kDouble) {
    rc = fastrnn_lstm_forward_f64(xg.const_data_ptr<double>(), w_hh.const_data_ptr<double>(),
                                  h0.const_data_ptr<double>(), c0.const_data_ptr<double>(), gates.data_ptr<double>(),
                                  cs.data_ptr<double>(), y.data_ptr<double>(), d.T, d.B, d.H, mode, stream());
  } else {
    rc = fastrnn_lstm_forward_bf16(xg.const_data_ptr<float>(), w_hh.const_data_ptr(), h0.const_data_ptr(),
                                   c0.const_data_ptr(), gates.data_ptr(), cs.data_ptr(), y.data_ptr(), d.T, d.B, d.H,
                                   mode, stream());
  }
  check_rc(rc, ck.op);
  if (!lengths.has_value()) return {y, y[d.T - 1].clone(), cs[d.T - 1].clone(), gates, cs};
  auto [h_n, c_n] = stop_at_lengths(y, cs, h0, c0, *lengths);
  return {y, h_n, c_n, gates, cs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cuda(
    const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& x, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const Tensor& cut, const Tensor& scale, const OptTensor& lengths) {
  const Checker ck{"fastrnn::lstm_backward", x.device()};
  const LstmDims d = check_lstm(ck, x, w_ih, w_hh, h0, c0, cut, scale);
  const auto dt = x.scalar_type(), acc = acc_type(dt);
  ck.tensor(dy, "dy", dt, {d.T, d.B, d.H});
  ck.tensor(dh_n, "dh_n", dt, {d.B, d.H});
  ck.tensor(dc_n, "dc_n", dt, {d.B, d.H});
  ck.tensor(y, "y", dt, {d.T, d.B, d.H});
  ck.tensor(gates, "gates", dt, {d.T, d.B, 4 * d.H});
  ck.tensor(cs, "cs", dt, {d.T, d.B, d.H});
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t* len = check_lengths(ck, lengths, d.T, d.B);
  Tensor dG = at::empty({d.T, d.B, 4 * d.H}, x.options().dtype(acc));
  Tensor dc = len ? at::zeros({d.B, d.H}, dG.options()) : dc_n.to(acc).clone().contiguous();
  const int mode = lstm_mode();
  int rc;
  if (dt == at::kFloat) {
    rc = fastrnn_lstm_backward_f32(dy.const_data_ptr<float>(), dh_n.const_data_ptr<float>(),
                                   dc_n.const_data_ptr<float>(), len, w_hh.const_data_ptr<float>(),
                                   c0.const_data_ptr<float>(), gates.const_data_ptr<float>(),
                                   cs.const_data_ptr<float>(), cut.const_data_ptr<bool>(),
                                   scale.const_data_ptr<float>(), dG.data_ptr<float>(), dc.data_ptr<float>(), d.T,
                                   d.B, d.H, mode, stream());
  } else if (dt == at::kDouble) {
    rc = fastrnn_lstm_backward_f64(dy.const_data_ptr<double>(), dh_n.const_data_ptr<double>(),
                                   dc_n.const_data_ptr<double>(), len, w_hh.const_data_ptr<double>(),
                                   c0.const_data_ptr<double>(), gates.const_data_ptr<double>(),
                                   cs.const_data_ptr<double>(), cut.const_data_ptr<bool>(),
                                   scale.const_data_ptr<double>(), dG.data_ptr<double>(), dc.data_ptr<double>(),
                                   d.T, d.B, d.H, mode, stream());
  } else {
    rc = fastrnn_lstm_backward_bf16(dy.const_data_ptr(), dh_n.const_data_ptr(), dc_n.const_data_ptr(), len,
                                    w_hh.const_data_ptr(), c0.const_data_ptr(), gates.const_data_ptr(),
                                    cs.const_data_ptr(), cut.const_data_ptr<bool>(), scale.const_data_ptr(),
                                    dG.data_ptr<float>(), dc.data_ptr<float>(), d.T, d.B, d.H, mode, stream());
  }
  check_rc(rc, ck.op);
  Tensor dh0 = recurrent_into_h0(dG, w_hh, cut, scale);
  if (len) add_zero_length_grads(*lengths, dh_n, dc_n, dh0, dc);
  auto [dx, dw_ih, dw_hh, db] = weight_grads(dG, x, w_ih, h0, y);
  return {dx, dw_ih, dw_hh, db, dh0.to(dt), dc.to(dt)};
}

// ---- SAB ------------------------------------------------------------------------------------------------
struct SabDims {
  int64_t T, B, I, H, A, S;
  bool mlp;
};

SabDims check_sab(const Checker& ck, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& att_wh,
                  const Tensor& att_wm, const Tensor& att_vb, const Tensor& h0, const Tensor& c0, const Tensor& cut,
                  const Tensor& scale, int64_t k_top, int64_t k_att, c10::string_view scorer) {
  check_x(ck.op, x);
  TORCH_CHECK(h0.dim() == 2 && h0.size(1) >= 1, ck.op, ": h0 must be [B, H] with H >= 1, got ", h0.sizes());
  TORCH_CHECK(k_top >= 1, ck.op, ": k_top must be >= 1, got ", k_top);
  TORCH_CHECK(k_att >= 1, ck.op, ": k_att must be >= 1, got ", k_att);
  TORCH_CHECK(scorer == "mlp" || scorer == "linear", ck.op, ": scorer must be 'mlp' or 'linear', got '",
              std::string(scorer), "'");
  SabDims d{x.size(0), x.size(1), x.size(2), h0.size(1), 0, 1 + x.size(0) / k_att, scorer == "mlp"};
  const LstmDims l = check_lstm(ck, x, w_ih, w_hh, h0, c0, cut, scale);
  (void)l;
  const auto dt = x.scalar_type();
  if (d.mlp) {
    TORCH_CHECK(att_wh.dim() == 2 && att_wh.size(0) >= 1, ck.op, ": att_wh must be [A, H] for the mlp scorer, got ",
                att_wh.sizes());
    d.A = att_wh.size(0);
    ck.tensor(att_wh, "att_wh", dt, {d.A, d.H});
    ck.tensor(att_wm, "att_wm", dt, {d.A, d.H});
    ck.tensor(att_vb, "att_vb", dt, {d.A});
  } else {
    ck.tensor(att_wh, "att_wh", dt, {d.H});
    ck.tensor(att_wm, "att_wm", dt, {d.H});
    ck.tensor(att_vb, "att_vb", dt, {1});
  }
  return d;
}

using SabForwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                 Tensor>;

SabForwardOut sab_forward_cuda(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const Tensor& att_wh, const Tensor& att_wm, const Tensor& att_vb,
                               const Tensor& h0, const Tensor& c0, const Tensor& cut, const Tensor& scale,
                               const OptTensor& lengths, int64_t k_top, int64_t k_att, c10::string_view scorer,
                               bool provisional) {
  const Checker ck{"fastrnn::sab_forward", x.device()};
  const SabDims d = check_sab(ck, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, k_top, k_att, scorer);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), ck.op, ": b_ih and b_hh must both be given or both be None");
  if (b_ih.has_value()) {
    ck.tensor(*b_ih, "b_ih", x.scalar_type(), {4 * d.H});
    ck.tensor(*b_hh, "b_hh", x.scalar_type(), {4 * d.H});
  }
  const c10::cuda::CUDAGuard guard(x.device());
  check_lengths(ck, lengths, d.T, d.B);
  const int64_t T = d.T, B = d.B, H = d.H, A = d.A, S = d.S, K = k_top;
  const auto opt = x.options(), aopt = opt.dtype(acc_type(x.scalar_type())), lopt = opt.dtype(at::kLong);
  const Tensor xg = input_projection(x, w_ih, b_ih, b_hh);
  Tensor gates = at::empty({T, B, 4 * H}, opt), c = at::empty({T, B, H}, opt);
  Tensor hhat = at::empty({T, B, H}, opt), y = at::empty({T, B, H}, opt);
  Tensor idx = at::empty({T, B, K}, lopt), w = at::empty({T, B, K}, opt);
  Tensor thr = at::empty({T, B}, lopt), denom = at::empty({T, B}, opt);
  Tensor slot_keys = d.mlp ? at::empty({B, S, A}, opt) : at::empty({B, S}, opt);
  Tensor q = at::empty({d.mlp ? B : 0, A}, aopt), scores = at::empty({d.mlp ? B : 0, S}, aopt);
  Tensor keep_score = at::empty({d.mlp ? 0 : B, K + 1}, aopt), keep_slot = at::empty({d.mlp ? 0 : B, K + 1}, lopt);
  Tensor keep_n = at::zeros({d.mlp ? 0 : B}, opt.dtype(at::kInt));
  fastrnn_sab_forward_args a{};
  a.T = T;
  a.B = B;
  a.H = H;
  a.A = A;
  a.S = S;
  a.K = K;
  a.k_att = k_att;
  a.mlp = d.mlp;
  a.provisional = provisional;
  a.xg = xg.const_data_ptr();
  a.w_hh = w_hh.const_data_ptr();
  a.att_wh = att_wh.const_data_ptr();
  a.att_wm = att_wm.const_data_ptr();
  a.att_vb = att_vb.const_data_ptr();
  a.h0 = h0.const_data_ptr();
  a.c0 = c0.const_data_ptr();
  a.gates = gates.data_ptr();
  a.c = c.data_ptr();
  a.hhat = hhat.data_ptr();
  a.y = y.data_ptr();
  a.idx = idx.data_ptr<int64_t>();
  a.w = w.data_ptr();
  a.thr = thr.data_ptr<int64_t>();
  a.denom = denom.data_ptr();
  a.slot_keys = slot_keys.data_ptr();
  a.q = q.data_ptr();
  a.scores = scores.data_ptr();
  a.keep_score = keep_score.data_ptr();
  a.keep_slot = keep_slot.data_ptr<int64_t>();
  a.keep_n = keep_n.data_ptr<int32_t>();
  const auto dt = x.scalar_type();
  check_rc(FASTRNN_DISPATCH(dt, fastrnn_sab_forward_f32(&a, stream()), fastrnn_sab_forward_f64(&a, stream()),
                            fastrnn_sab_forward_bf16(&a, stream())),
           ck.op);
  if (!lengths.has_value()) return {y, y[T - 1].clone(), c[T - 1].clone(), gates, c, hhat, idx, w, thr, denom, slot_keys};
  auto [h_n, c_n] = stop_at_lengths(y, c, h0, c0, *lengths);
  const Tensor past = past_lengths(T, *lengths).unsqueeze(2);  // the record past each row's length
  idx.masked_fill_(past, -1);
  w.masked_fill_(past, 0);
  return {y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, slot_keys};
}

using SabBackwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

SabBackwardOut sab_backward_cuda(const Tensor& grad_y, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& x,
                                 const Tensor& w_ih, const Tensor& w_hh, const Tensor& att_wh, const Tensor& att_wm,
                                 const Tensor& att_vb, const Tensor& h0, const Tensor& c0, const Tensor& cut,
                                 const Tensor& scale, const OptTensor& lengths, const Tensor& y, const Tensor& gates,
                                 const Tensor& c, const Tensor& hhat, const Tensor& idx, const Tensor& w,
                                 const Tensor& thr, const Tensor& denom, const Tensor& slot_keys, int64_t k_top,
                                 int64_t k_att, c10::string_view scorer, bool provisional, bool has_bias) {
  const Checker ck{"fastrnn::sab_backward", x.device()};
  const SabDims d = check_sab(ck, x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, k_top, k_att, scorer);
  const int64_t T = d.T, B = d.B, H = d.H, A = d.A, S = d.S, K = k_top, G = 4 * H;
  const auto dt = x.scalar_type(), acc = acc_type(dt);
  ck.tensor(grad_y, "grad_y", dt, {T, B, H});
  ck.tensor(grad_hn, "grad_hn", dt, {B, H});
  ck.tensor(grad_cn, "grad_cn", dt, {B, H});
  ck.tensor(y, "y", dt, {T, B, H});
  ck.tensor(gates, "gates", dt, {T, B, G});
  ck.tensor(c, "c", dt, {T, B, H});
  ck.tensor(hhat, "hhat", dt, {T, B, H});
  ck.tensor(idx, "idx", at::kLong, {T, B, K});
  ck.tensor(w, "w", dt, {T, B, K});
  ck.tensor(thr, "thr", at::kLong, {T, B});
  ck.tensor(denom, "denom", dt, {T, B});
  if (d.mlp) {
    ck.tensor(slot_keys, "slot_keys", dt, {B, S, A});
  } else {
    ck.tensor(slot_keys, "slot_keys", dt, {B, S});
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t* len = check_lengths(ck, lengths, T, B);
  const auto aopt = x.options().dtype(acc);
  Tensor dG = at::empty({T, B, G}, aopt), dQ = at::empty({d.mlp ? T : 0, B, A}, aopt);
  Tensor dM = at::zeros({B, S, H}, aopt), dP = at::zeros({d.mlp ? B : 0, S, A}, aopt);
  Tensor dv = at::zeros({d.mlp ? B : 0, A}, aopt);
  Tensor acc_wm = at::zeros({d.mlp ? 0 : B, H}, aopt), acc_wh = at::zeros({d.mlp ? 0 : B, H}, aopt);
  Tensor acc_b = at::zeros({d.mlp ? 0 : B}, aopt);
  Tensor q = at::empty({d.mlp ? B : 0, A}, aopt), carry = at::empty({B, H}, aopt), dhh = at::empty({B, H}, aopt);
  Tensor dc = len ? at::zeros({B, H}, aopt) : grad_cn.to(acc).clone().contiguous();
  fastrnn_sab_backward_args a{};
  a.T = T;
  a.B = B;
  a.H = H;
  a.A = A;
  a.S = S;
  a.K = K;
  a.k_att = k_att;
  a.mlp = d.mlp;
  a.provisional = provisional;
  a.grad_y = grad_y.const_data_ptr();
  a.grad_hn = grad_hn.const_data_ptr();
  a.grad_cn = grad_cn.const_data_ptr();
  a.lengths = len;
  a.w_hh = w_hh.const_data_ptr();
  a.att_wh = att_wh.const_data_ptr();
  a.att_wm = att_wm.const_data_ptr();
  a.att_vb = att_vb.const_data_ptr();
  a.h0 = h0.const_data_ptr();
  a.c0 = c0.const_data_ptr();
  a.scale = scale.const_data_ptr();
  a.cut = cut.const_data_ptr<bool>();
  a.y = y.const_data_ptr();
  a.gates = gates.const_data_ptr();
  a.c = c.const_data_ptr();
  a.hhat = hhat.const_data_ptr();
  a.w = w.const_data_ptr();
  a.denom = denom.const_data_ptr();
  a.slot_keys = slot_keys.const_data_ptr();
  a.idx = idx.const_data_ptr<int64_t>();
  a.thr = thr.const_data_ptr<int64_t>();
  a.dG = dG.data_ptr();
  a.dQ = dQ.data_ptr();
  a.dM = dM.data_ptr();
  a.dP = dP.data_ptr();
  a.dv = dv.data_ptr();
  a.acc_wm = acc_wm.data_ptr();
  a.acc_wh = acc_wh.data_ptr();
  a.acc_b = acc_b.data_ptr();
  a.q = q.data_ptr();
  a.carry = carry.data_ptr();
  a.dhh = dhh.data_ptr();
  a.dc = dc.data_ptr();
  check_rc(FASTRNN_DISPATCH(dt, fastrnn_sab_backward_f32(&a, stream()), fastrnn_sab_backward_f64(&a, stream()),
                            fastrnn_sab_backward_bf16(&a, stream())),
           ck.op);
  // Slot 0 is h0: its projection's gradient joins it like any other slot's (mlp), then the recurrent path.
  Tensor dM0 = dM.select(1, 0);
  if (d.mlp) dM0 = dM0 + dP.select(1, 0).mm(att_wm.to(acc));
  Tensor dh0 = dM0 + recurrent_into_h0(dG, w_hh, cut, scale);
  if (len) add_zero_length_grads(*lengths, grad_hn, grad_cn, dh0, dc);
  auto [dx, dw_ih, dw_hh, db] = weight_grads(dG, x, w_ih, h0, y);
  if (!has_bias) db = at::empty({0}, x.options());
  Tensor datt_wh, datt_wm, datt_s;
  if (d.mlp) {
    datt_wh = dQ.view({T * B, A}).t().mm(hhat.reshape({T * B, H}).to(acc));
    // the slot values [B, S, H]: h0, then the state of steps k_att - 1, 2 k_att - 1, ...
    const Tensor src = provisional ? hhat : y;
    const Tensor M = at::cat({h0.unsqueeze(1), src.slice(0, k_att - 1, T, k_att).transpose(0, 1)}, 1);
    datt_wm = dP.view({B * S, A}).t().mm(M.reshape({B * S, H}).to(acc));
    datt_s = dv.sum(0);
  } else {
    datt_wm = acc_wm.sum(0);
    datt_wh = acc_wh.sum(0);
    datt_s = acc_b.sum(0, /*keepdim=*/true);
  }
  return {dx, dw_ih, dw_hh, db, datt_wh.to(dt), datt_wm.to(dt), datt_s.to(dt), dh0.to(dt), dc.to(dt)};
}

}  // namespace
}  // namespace cuda_binding
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_forward", &fastrnn::cuda_binding::lstm_forward_cuda);
  m.impl("lstm_backward", &fastrnn::cuda_binding::lstm_backward_cuda);
  m.impl("sab_forward", &fastrnn::cuda_binding::sab_forward_cuda);
  m.impl("sab_backward", &fastrnn::cuda_binding::sab_backward_cuda);
}
