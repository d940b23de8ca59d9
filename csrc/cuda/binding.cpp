// The CUDA implementations of the fastrnn:: ops (schemas in csrc/ops.cpp; the argument lists and outputs are
// the CPU ops', so the Python autograd and fake kernels hold unchanged), their arguments checked by
// csrc/checks.h as on the CPU (the same messages, "fastrnn::<op>: <argument> must ...").
// Built by fastrnn/ops/cuda_build.py with torch.utils.cpp_extension together with the kernels
// (csrc/cuda/*.cu, reached through the C launcher API of launchers.h); not built by CMake (it needs the
// CUDA build of torch). This file does what is not sequential with torch (cuBLAS): the input projection
// before the sweep, the weight gradients after it, the lengths' gathers and masks, the streaming slots'
// gathers (new_slots) and gradients (dmemory), the per-row slot tables of a call with resets (built on the
// device by a launcher; one host read of their size) and what resets do to dh0 and dW_hh; the sweeps are the
// launchers'. bfloat16 tensors compute in float32 (projection, gate gradients, accumulators) and return
// bfloat16. The SAB ops take the schedule (cut, scale) as [T] or one per row, [T, B].
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "checks.h"
#include "cuda/launchers.h"
#include "fastrnn/memory_slots.h"

namespace fastrnn {
namespace cuda_binding {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The argument checks of every device (csrc/checks.h), for the CUDA key: float32, float64 and bfloat16.
ArgChecker checker(const char* op) { return ArgChecker(op, at::kCUDA, {at::kFloat, at::kDouble, at::kBFloat16}); }

at::ScalarType acc_type(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

std::string fastrnn_error(int rc) {
  switch (rc) {
    case FASTRNN_ERR_NOT_PERSISTENT:
      return "no persistent LSTM sweep fits this device and shape (FASTRNN_CUDA_LSTM_MODE=2 requires one)";
    case FASTRNN_ERR_K_TOP:
      return "k_top above the attention kernels' shared-memory limit";
    default:
      return "fastrnn error " + std::to_string(rc);
  }
}

void check_rc(int rc, const char* op) {
  TORCH_CHECK(rc == 0, op, ": CUDA launch failed: ",
              rc < 0 ? fastrnn_error(rc) : std::string(cudaGetErrorString(static_cast<cudaError_t>(rc))));
}

// k_top within what the SAB attention kernels keep per row in shared memory (launchers.h,
// fastrnn_sab_max_k_top: 1741 for float32 and bfloat16, 1215 for float64).
void check_k_top(const ArgChecker& ck, int64_t k_top, at::ScalarType dt) {
  const int64_t max_k = fastrnn_sab_max_k_top(dt == at::kDouble ? 1 : dt == at::kBFloat16 ? 2 : 0);
  TORCH_CHECK(k_top <= max_k, ck.op(), ": k_top must be <= ", max_k, " for ", dt,
              " on CUDA (the attention kernels keep the ranking of k_top + 1 slots of each row in 48 KiB of "
              "shared memory), got ", k_top);
}

// The checked lengths (ArgChecker::lengths) as a device pointer, or nullptr for None.
const int64_t* lengths_data(const OptTensor& lengths) {
  return lengths.has_value() ? lengths->const_data_ptr<int64_t>() : nullptr;
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

// dh0 from the recurrent path: cut[0] ? 0 : scale[0] dG_0 W_hh (a cut is a detach: where, not a product), per
// row with a [T, B] schedule; 0 for the rows reset at step 0 (`reset` [T, B] or None), which never read h0.
Tensor recurrent_into_h0(const Tensor& dG, const Tensor& w_hh, const Tensor& cut, const Tensor& scale,
                         const OptTensor& reset = std::nullopt) {
  const auto acc = dG.scalar_type();
  const Tensor rec = dG[0].mm(w_hh.to(acc)) * scale[0].to(acc).reshape({-1, 1});  // [B, 1] or [1, 1]
  Tensor stop = cut[0].reshape({-1, 1});
  if (reset.has_value()) stop = stop | (*reset)[0].unsqueeze(1);
  return at::where(stop, at::zeros_like(rec), rec);
}

// Zero-length rows: h_n, c_n are h0, c0 themselves, so dh_n, dc_n join dh0, dc0.
void add_zero_length_grads(const Tensor& len, const Tensor& dh_n, const Tensor& dc_n, Tensor& dh0, Tensor& dc0) {
  const Tensor empty = (len == 0).unsqueeze(1);
  dh0 = at::where(empty, dh0 + dh_n.to(dh0.scalar_type()), dh0);
  dc0 = at::where(empty, dc0 + dc_n.to(dc0.scalar_type()), dc0);
}

// dx, dW_ih, dW_hh, db from dG [T, B, 4H] (acc) as one GEMM each; h_in = [h0, y_0 .. y_{T-2}], with the rows
// reset at step t (`reset` [T, B] or None) zero at t: their h_{t-1} was zeros.
std::tuple<Tensor, Tensor, Tensor, Tensor> weight_grads(const Tensor& dG, const Tensor& x, const Tensor& w_ih,
                                                        const Tensor& h0, const Tensor& y,
                                                        const OptTensor& reset = std::nullopt) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = 4 * H;
  const auto acc = dG.scalar_type(), dt = x.scalar_type();
  const Tensor dG2 = dG.view({T * B, G});
  Tensor h_in = at::cat({h0.unsqueeze(0), y.slice(0, 0, T - 1)}, 0);
  if (reset.has_value()) h_in.masked_fill_(reset->unsqueeze(2), 0);
  Tensor dx = dG2.mm(w_ih.to(acc)).view({T, B, I}).to(dt);
  Tensor dw_ih = dG2.t().mm(x.reshape({T * B, I}).to(acc)).to(dt);
  Tensor dw_hh = dG2.t().mm(h_in.reshape({T * B, H}).to(acc)).to(dt);
  Tensor db = dG2.sum(0).to(dt);
  return {dx, dw_ih, dw_hh, db};
}

#define FASTRNN_DISPATCH(dt, F32, F64, BF16) \
  ((dt) == at::kFloat ? (F32) : (dt) == at::kDouble ? (F64) : (BF16))

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(const Tensor& x, const Tensor& w_ih,
                                                                     const Tensor& w_hh, const OptTensor& b_ih,
                                                                     const OptTensor& b_hh, const Tensor& h0,
                                                                     const Tensor& c0, const Tensor& cut,
                                                                     const Tensor& scale, const OptTensor& lengths) {
  ArgChecker ck = checker("fastrnn::lstm_forward");
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale);
  ck.biases(b_ih, b_hh, d);
  const c10::cuda::CUDAGuard guard(x.device());
  ck.lengths(lengths, d);
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
  check_rc(rc, ck.op());
  if (!lengths.has_value()) return {y, y[d.T - 1].clone(), cs[d.T - 1].clone(), gates, cs};
  auto [h_n, c_n] = stop_at_lengths(y, cs, h0, c0, *lengths);
  return {y, h_n, c_n, gates, cs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cuda(
    const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& x, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& y, const Tensor& gates, const Tensor& cs,
    const Tensor& cut, const Tensor& scale, const OptTensor& lengths) {
  ArgChecker ck = checker("fastrnn::lstm_backward");
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale);
  const auto dt = x.scalar_type(), acc = acc_type(dt);
  ck.tensor(dy, "dy", {d.T, d.B, d.H});
  ck.tensor(dh_n, "dh_n", {d.B, d.H});
  ck.tensor(dc_n, "dc_n", {d.B, d.H});
  ck.tensor(y, "y", {d.T, d.B, d.H});
  ck.tensor(gates, "gates", {d.T, d.B, 4 * d.H});
  ck.tensor(cs, "cs", {d.T, d.B, d.H});
  const c10::cuda::CUDAGuard guard(x.device());
  ck.lengths(lengths, d);
  const int64_t* len = lengths_data(lengths);
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
  check_rc(rc, ck.op());
  Tensor dh0 = recurrent_into_h0(dG, w_hh, cut, scale);
  if (len) add_zero_length_grads(*lengths, dh_n, dc_n, dh0, dc);
  auto [dx, dw_ih, dw_hh, db] = weight_grads(dG, x, w_ih, h0, y);
  return {dx, dw_ih, dw_hh, db, dh0.to(dt), dc.to(dt)};
}

// ---- SAB ------------------------------------------------------------------------------------------------
// The values of the slots this call wrote, [B, S1, H]: the states (hhat or y) of the steps that wrote them,
// grid.first, grid.first + k_att, ... (fastrnn/memory_slots.h). Always a new tensor: transpose(0, 1) of the
// strided slice is already contiguous when S1 == 1, or B == 1 and k_att == 1, and .contiguous() would then
// return a view of y / hhat, an output aliasing another output (the schema and the fake kernel promise
// fresh tensors; torch.compile and opcheck rely on it).
Tensor written_slots(const Tensor& states, const SlotGrid& grid, int64_t S1) {
  const int64_t T = states.size(0);
  if (S1 == 0) return at::empty({states.size(1), 0, states.size(2)}, states.options());
  const Tensor s = states.slice(0, grid.first, T, grid.k_att);
  TORCH_INTERNAL_ASSERT(s.size(0) == S1, "written_slots: ", s.size(0), " steps for ", S1, " slots");
  return s.transpose(0, 1).clone(at::MemoryFormat::Contiguous);
}

// The per-row slot tables of a call with per-row arguments (docs/SPEC.md section 9, docs/CONTRACT.md "Per-row
// resets"; launchers.h fastrnn_sab_row_slots, fastrnn/row_slots.h's walk on the device), and the zeros a
// reset's fresh slot holds. The one host read: S1, the most slots a row appends (the extent of new_slots and
// slot_keys).
struct RowTables {
  Tensor lo, hi, wr, src, zeros;  // [T, B] int64 x3, [B, S1] int64, [H] x's dtype
  int64_t S1 = 0;
};

RowTables row_tables(const ArgChecker& ck, const Tensor& x, int64_t H, const OptTensor& reset,
                     const OptTensor& slot_offset, const OptTensor& row_step0, int64_t step0, int64_t S0,
                     int64_t k_att) {
  const int64_t T = x.size(0), B = x.size(1);
  const auto lopt = x.options().dtype(at::kLong);
  RowTables r;
  r.lo = at::empty({T, B}, lopt);
  r.hi = at::empty({T, B}, lopt);
  r.wr = at::empty({T, B}, lopt);
  r.zeros = at::zeros({H}, x.options());
  const Tensor appended = at::empty({B}, lopt);
  const bool* reset_p = reset.has_value() ? reset->const_data_ptr<bool>() : nullptr;
  const int64_t* offset_p = slot_offset.has_value() ? slot_offset->const_data_ptr<int64_t>() : nullptr;
  const int64_t* step0_p = row_step0.has_value() ? row_step0->const_data_ptr<int64_t>() : nullptr;
  check_rc(fastrnn_sab_row_slots(reset_p, offset_p, step0_p, step0, T, B, S0, k_att, r.lo.data_ptr<int64_t>(),
                                 r.hi.data_ptr<int64_t>(), r.wr.data_ptr<int64_t>(), appended.data_ptr<int64_t>(),
                                 nullptr, 0, stream()),
           ck.op());
  r.S1 = B > 0 ? appended.max().item<int64_t>() : 0;
  r.src = at::full({B, r.S1}, -1, lopt);  // padding: zeros
  if (r.S1 > 0)
    check_rc(fastrnn_sab_row_slots(reset_p, offset_p, step0_p, step0, T, B, S0, k_att, nullptr, nullptr, nullptr,
                                   nullptr, r.src.data_ptr<int64_t>(), r.S1, stream()),
             ck.op());
  return r;
}

// The tables as the sweeps read them (all NULL without per-row arguments).
fastrnn_sab_rows rows_args(const std::optional<RowTables>& r, const OptTensor& reset) {
  fastrnn_sab_rows a{};
  if (!r.has_value()) return a;
  a.reset = reset.has_value() ? reset->const_data_ptr<bool>() : nullptr;
  a.lo = r->lo.const_data_ptr<int64_t>();
  a.hi = r->hi.const_data_ptr<int64_t>();
  a.wr = r->wr.const_data_ptr<int64_t>();
  a.src = r->src.const_data_ptr<int64_t>();
  a.S1 = r->S1;
  a.zeros = r->zeros.const_data_ptr();
  return a;
}

// Per row: the values of the slots each row appended, [B, S1, H], from the states (hhat or y) of the steps
// that wrote them (the tables' src), zeros for a reset's fresh slot and for padding. A new tensor (gathered).
Tensor row_written_slots(const Tensor& states, const Tensor& src) {
  const int64_t B = states.size(1), S1 = src.size(1);
  if (S1 == 0) return at::empty({B, 0, states.size(2)}, states.options());
  const Tensor rows = at::arange(B, src.options()).unsqueeze(1).expand({B, S1});
  const Tensor values = states.index({src.clamp_min(0), rows});  // [B, S1, H]
  return at::where((src >= 0).unsqueeze(2), values, at::zeros({}, states.options()));
}

using SabForwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                 Tensor, Tensor>;

SabForwardOut sab_forward_cuda(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const Tensor& att_wh, const Tensor& att_wm, const Tensor& att_vb,
                               const Tensor& h0, const Tensor& c0, const Tensor& cut, const Tensor& scale,
                               const OptTensor& lengths, const OptTensor& memory, int64_t step0,
                               const OptTensor& reset, const OptTensor& slot_offset, const OptTensor& row_step0,
                               int64_t k_top, int64_t k_att, c10::string_view scorer, bool provisional) {
  ArgChecker ck = checker("fastrnn::sab_forward");
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale, /*row_schedule=*/true);
  ck.biases(b_ih, b_hh, d);
  const ScorerDims sd = ck.scorer(att_wh, att_wm, att_vb, k_top, k_att, scorer, d);
  check_k_top(ck, k_top, x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  ck.lengths(lengths, d);
  const SlotGrid grid(ck.stream(memory, step0, lengths, d), step0, k_att);
  std::optional<RowTables> rows;  // per-row tables (docs/SPEC.md section 9), none without per-row arguments
  if (ck.rows(reset, slot_offset, row_step0, memory, lengths, d, grid.S0))
    rows = row_tables(ck, x, d.H, reset, slot_offset, row_step0, step0, grid.S0, k_att);
  const int64_t T = d.T, B = d.B, H = d.H, A = sd.A, S0 = grid.S0, K = k_top;
  const int64_t S = rows ? S0 + rows->S1 : grid.n_mem(T);
  const bool mlp = sd.mlp;
  const auto opt = x.options(), aopt = opt.dtype(acc_type(x.scalar_type())), lopt = opt.dtype(at::kLong);
  const Tensor xg = input_projection(x, w_ih, b_ih, b_hh);
  Tensor gates = at::empty({T, B, 4 * H}, opt), c = at::empty({T, B, H}, opt);
  Tensor hhat = at::empty({T, B, H}, opt), y = at::empty({T, B, H}, opt);
  Tensor idx = at::empty({T, B, K}, lopt), w = at::empty({T, B, K}, opt);
  Tensor thr = at::empty({T, B}, lopt), denom = at::empty({T, B}, opt);
  // per row: a reset's fresh slot has key 0, and the entries past a row's table stay 0
  Tensor slot_keys = mlp ? at::empty({B, S, A}, opt) : at::empty({B, S}, opt);
  if (rows) slot_keys.zero_();
  Tensor q = at::empty({mlp ? B : 0, A}, aopt), scores = at::empty({mlp ? B : 0, S}, aopt);
  Tensor keep_score = at::empty({mlp ? 0 : B, K + 1}, aopt), keep_slot = at::empty({mlp ? 0 : B, K + 1}, lopt);
  Tensor keep_n = at::zeros({mlp ? 0 : B}, opt.dtype(at::kInt));
  fastrnn_sab_forward_args a{};
  a.T = T;
  a.B = B;
  a.H = H;
  a.A = A;
  a.S = S;
  a.K = K;
  a.k_att = k_att;
  a.S0 = S0;
  a.step0 = step0;
  a.mlp = mlp;
  a.provisional = provisional;
  a.rows = rows_args(rows, reset);
  a.xg = xg.const_data_ptr();
  a.w_hh = w_hh.const_data_ptr();
  a.att_wh = att_wh.const_data_ptr();
  a.att_wm = att_wm.const_data_ptr();
  a.att_vb = att_vb.const_data_ptr();
  a.h0 = h0.const_data_ptr();
  a.c0 = c0.const_data_ptr();
  a.memory = memory.has_value() ? memory->const_data_ptr() : nullptr;
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
           ck.op());
  // Gathered before y is masked: the values the slots held (lengths and carried slots do not go together).
  Tensor new_slots = rows ? row_written_slots(provisional ? hhat : y, rows->src)
                          : written_slots(provisional ? hhat : y, grid, S - S0);
  if (!lengths.has_value())
    return {y, y[T - 1].clone(), c[T - 1].clone(), gates, c, hhat, idx, w, thr, denom, slot_keys, new_slots};
  auto [h_n, c_n] = stop_at_lengths(y, c, h0, c0, *lengths);
  const Tensor past = past_lengths(T, *lengths).unsqueeze(2);  // the record past each row's length
  idx.masked_fill_(past, -1);
  w.masked_fill_(past, 0);
  return {y, h_n, c_n, gates, c, hhat, idx, w, thr, denom, slot_keys, new_slots};
}

using SabBackwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

SabBackwardOut sab_backward_cuda(const Tensor& grad_y, const Tensor& grad_hn, const Tensor& grad_cn,
                                 const OptTensor& grad_new_slots, const Tensor& x, const Tensor& w_ih,
                                 const Tensor& w_hh, const Tensor& att_wh, const Tensor& att_wm, const Tensor& att_vb,
                                 const Tensor& h0, const Tensor& c0, const Tensor& cut, const Tensor& scale,
                                 const OptTensor& lengths, const OptTensor& memory, int64_t step0,
                                 const OptTensor& reset, const OptTensor& slot_offset, const OptTensor& row_step0,
                                 const Tensor& y,
                                 const Tensor& gates, const Tensor& c, const Tensor& hhat, const Tensor& idx,
                                 const Tensor& w, const Tensor& thr, const Tensor& denom, const Tensor& slot_keys,
                                 int64_t k_top, int64_t k_att, c10::string_view scorer, bool provisional,
                                 bool has_bias) {
  ArgChecker ck = checker("fastrnn::sab_backward");
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale, /*row_schedule=*/true);
  const ScorerDims sd = ck.scorer(att_wh, att_wm, att_vb, k_top, k_att, scorer, d);
  check_k_top(ck, k_top, x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  ck.lengths(lengths, d);
  const SlotGrid grid(ck.stream(memory, step0, lengths, d), step0, k_att);
  std::optional<RowTables> rows;  // per-row tables (docs/SPEC.md section 9), none without per-row arguments
  if (ck.rows(reset, slot_offset, row_step0, memory, lengths, d, grid.S0))
    rows = row_tables(ck, x, d.H, reset, slot_offset, row_step0, step0, grid.S0, k_att);
  const int64_t T = d.T, B = d.B, H = d.H, A = sd.A, S0 = grid.S0, K = k_top, G = 4 * H;
  const int64_t S = rows ? S0 + rows->S1 : grid.n_mem(T);
  const bool mlp = sd.mlp;
  const auto dt = x.scalar_type(), acc = acc_type(dt);
  if (grad_new_slots.has_value()) {
    TORCH_CHECK(!lengths.has_value(), ck.op(),
                ": lengths cannot be combined with grad_new_slots (slots written past a row's length would be "
                "carried into the next call)");
    ck.tensor(*grad_new_slots, "grad_new_slots", {B, S - S0, H});
  }
  ck.tensor(grad_y, "grad_y", {T, B, H});
  ck.tensor(grad_hn, "grad_hn", {B, H});
  ck.tensor(grad_cn, "grad_cn", {B, H});
  ck.tensor(y, "y", {T, B, H});
  ck.tensor(gates, "gates", {T, B, G});
  ck.tensor(c, "c", {T, B, H});
  ck.tensor(hhat, "hhat", {T, B, H});
  ck.tensor(idx, "idx", at::kLong, {T, B, K});
  ck.tensor(w, "w", {T, B, K});
  ck.tensor(thr, "thr", at::kLong, {T, B});
  ck.tensor(denom, "denom", {T, B});
  if (mlp) {
    ck.tensor(slot_keys, "slot_keys", {B, S, A});
  } else {
    ck.tensor(slot_keys, "slot_keys", {B, S});
  }
  const int64_t* len = lengths_data(lengths);
  const auto aopt = x.options().dtype(acc);
  Tensor dG = at::empty({T, B, G}, aopt), dQ = at::empty({mlp ? T : 0, B, A}, aopt);
  Tensor dM = at::zeros({B, S, H}, aopt), dP = at::zeros({mlp ? B : 0, S, A}, aopt);
  if (grad_new_slots.has_value()) dM.narrow(1, S0, S - S0).copy_(*grad_new_slots);  // from later calls
  Tensor dv = at::zeros({mlp ? B : 0, A}, aopt);
  Tensor acc_wm = at::zeros({mlp ? 0 : B, H}, aopt), acc_wh = at::zeros({mlp ? 0 : B, H}, aopt);
  Tensor acc_b = at::zeros({mlp ? 0 : B}, aopt);
  Tensor q = at::empty({mlp ? B : 0, A}, aopt), carry = at::empty({B, H}, aopt), dhh = at::empty({B, H}, aopt);
  Tensor dc = len ? at::zeros({B, H}, aopt) : grad_cn.to(acc).clone().contiguous();
  fastrnn_sab_backward_args a{};
  a.T = T;
  a.B = B;
  a.H = H;
  a.A = A;
  a.S = S;
  a.K = K;
  a.k_att = k_att;
  a.S0 = S0;
  a.step0 = step0;
  a.mlp = mlp;
  a.provisional = provisional;
  a.rows = rows_args(rows, reset);
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
  a.memory = memory.has_value() ? memory->const_data_ptr() : nullptr;
  a.scale = scale.const_data_ptr();
  a.cut = cut.const_data_ptr<bool>();
  a.cut_rows = cut.dim() == 2;  // a schedule per row, [T, B] (ArgChecker::schedule)
  a.scale_rows = scale.dim() == 2;
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
           ck.op());
  // The carried slots, written by no step of this call: their gradient (with their keys', mlp) is dmemory,
  // or for a fresh call slot 0's, which is h0's (beside the recurrent path into it).
  Tensor d_carried = dM.narrow(1, 0, S0);
  if (mlp) d_carried = d_carried + at::matmul(dP.narrow(1, 0, S0), att_wm.to(acc));
  Tensor dh0 = recurrent_into_h0(dG, w_hh, cut, scale, reset);
  Tensor dmemory = at::empty({0}, x.options());
  if (memory.has_value()) {
    dmemory = d_carried.to(dt).contiguous();
  } else {
    dh0 = d_carried.select(1, 0) + dh0;
  }
  if (len) add_zero_length_grads(*lengths, grad_hn, grad_cn, dh0, dc);
  auto [dx, dw_ih, dw_hh, db] = weight_grads(dG, x, w_ih, h0, y, reset);
  if (!has_bias) db = at::empty({0}, x.options());
  Tensor datt_wh, datt_wm, datt_s;
  if (mlp) {
    datt_wh = dQ.view({T * B, A}).t().mm(hhat.reshape({T * B, H}).to(acc));
    // the slot values [B, S, H]: the carried ones (memory, or h0), then the states of the steps that wrote one
    const Tensor carried = memory.has_value() ? *memory : h0.unsqueeze(1);
    const Tensor states = provisional ? hhat : y;
    const Tensor M = at::cat({carried, rows ? row_written_slots(states, rows->src) : written_slots(states, grid, S - S0)}, 1);
    datt_wm = dP.view({B * S, A}).t().mm(M.reshape({B * S, H}).to(acc));
    datt_s = dv.sum(0);
  } else {
    datt_wm = acc_wm.sum(0);
    datt_wh = acc_wh.sum(0);
    datt_s = acc_b.sum(0, /*keepdim=*/true);
  }
  return {dx, dw_ih, dw_hh, db, datt_wh.to(dt), datt_wm.to(dt), datt_s.to(dt), dh0.to(dt), dc.to(dt), dmemory};
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
