// The argument checks of every fastrnn:: op, for every device's implementation (TORCH_LIBRARY_IMPL in
// csrc/<device>/): one facility, so the CPU op and a future CUDA op refuse the same calls with the same
// words. The kernels index raw contiguous memory, so a wrong device, dtype, shape or stride must fail here
// rather than read garbage. Every message starts with the op's name and names the argument and what was
// expected, e.g. "fastrnn::sab_forward: w_hh must have shape [16, 4], got [16, 3]".
//
// Torch-side host code (ATen headers): it is no part of the __host__ __device__ math in include/fastrnn/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastrnn {

// The sizes of one layer call: x [T, B, I], hidden size H (from w_hh [4H, H]).
struct LayerDims {
  int64_t T, B, I, H;
};

// The scorer's sizes: mlp (att_wh, att_wm [A, H], att_vb = att_v [A]) or linear (att_wh, att_wm [H],
// att_vb = att_b [1]; A = 0).
struct ScorerDims {
  int64_t A;
  bool mlp;
};

// Checks the arguments of one call of `op`, whose implementation runs on `device_type` (the dispatch key
// it is registered for) and takes x in `dtypes` (the CPU kernels: float32 and float64). x is checked
// first; every other tensor must then be on x's device and, unless stated otherwise, have x's dtype.
class ArgChecker {
 public:
  ArgChecker(const char* op, at::DeviceType device_type,
             std::initializer_list<at::ScalarType> dtypes = {at::kFloat, at::kDouble})
      : op_(op), device_type_(device_type), dtypes_(dtypes) {}

  const char* op() const { return op_; }

  // x [T, B, I] with T >= 1, of one of `dtypes`, on this implementation's device, contiguous. Sets the
  // device and dtype the other arguments must have.
  void x(const at::Tensor& x) {
    TORCH_CHECK(x.device().type() == device_type_, op_, ": x must be a ", at::DeviceTypeName(device_type_),
                " tensor, got device ", x.device());
    TORCH_CHECK(x.dim() == 3, op_, ": x must be [T, B, I], got shape ", x.sizes());
    bool known = false;
    for (const auto dt : dtypes_) known = known || x.scalar_type() == dt;
    TORCH_CHECK(known, op_, ": x must be ", dtype_list(), ", got ", x.scalar_type());
    TORCH_CHECK(x.size(0) >= 1, op_, ": x must have at least one time step (T >= 1), got shape ", x.sizes());
    TORCH_CHECK(x.is_contiguous(), op_, ": x must be contiguous");
    device_ = x.device();
    dtype_ = x.scalar_type();
  }

  // `t` on x's device, with `dtype`, exactly `shape`, contiguous.
  void tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) const {
    TORCH_CHECK(t.device() == device_, op_, ": ", name, " must be on ", device_, " (the device of x), got ",
                t.device());
    TORCH_CHECK(t.scalar_type() == dtype, op_, ": ", name, " must have dtype ", dtype,
                dtype == dtype_ ? " (the dtype of x)" : "", ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, op_, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), op_, ": ", name, " must be contiguous");
  }

  // The same with x's dtype.
  void tensor(const at::Tensor& t, const char* name, at::IntArrayRef shape) const {
    tensor(t, name, dtype_, shape);
  }

  // The per-layer arguments every layer op shares (docs/CONTRACT.md): x, w_ih [4H, I], w_hh [4H, H],
  // h0, c0 [B, H], cut bool [T], scale [T]. With `row_schedule` (the ops that implement it: docs/CONTRACT.md
  // "Per-row truncation") cut and scale may instead both be [T, B], one schedule per batch row.
  LayerDims layer(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& h0,
                  const at::Tensor& c0, const at::Tensor& cut, const at::Tensor& scale, bool row_schedule = false) {
    this->x(x);
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1), op_, ": w_hh must be [4H, H], got shape ",
                w_hh.sizes());
    const LayerDims d{x.size(0), x.size(1), x.size(2), w_hh.size(1)};
    tensor(w_ih, "w_ih", {4 * d.H, d.I});
    tensor(w_hh, "w_hh", {4 * d.H, d.H});
    tensor(h0, "h0", {d.B, d.H});
    tensor(c0, "c0", {d.B, d.H});
    if (row_schedule && cut.dim() == 2) {
      tensor(cut, "cut", at::kBool, {d.T, d.B});
      TORCH_CHECK(scale.dim() == 2, op_, ": scale must be [T, B] like cut, got shape ", scale.sizes());
      tensor(scale, "scale", {d.T, d.B});
      return d;
    }
    TORCH_CHECK(cut.dim() == 1, op_, ": cut must be [T]", row_schedule ? " or [T, B]" : "", ", got shape ",
                cut.sizes());
    tensor(cut, "cut", at::kBool, {d.T});
    tensor(scale, "scale", {d.T});
    return d;
  }

  // b_ih, b_hh [4H], both given or both None (bias=False).
  void biases(const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
              const LayerDims& d) const {
    TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op_, ": b_ih and b_hh must both be given or both be None");
    if (!b_ih.has_value()) return;
    tensor(*b_ih, "b_ih", {4 * d.H});
    tensor(*b_hh, "b_hh", {4 * d.H});
  }

  // The SAB options and the scorer's parameters (att_vb: att_v [A] for mlp, att_b [1] for linear).
  ScorerDims scorer(const at::Tensor& att_wh, const at::Tensor& att_wm, const at::Tensor& att_vb,
                    int64_t k_top, int64_t k_att, c10::string_view scorer, const LayerDims& d) const {
    TORCH_CHECK(d.H >= 1, op_, ": w_hh must be [4H, H] with H >= 1, got H = ", d.H);
    TORCH_CHECK(k_top >= 1, op_, ": k_top must be >= 1, got ", k_top);
    TORCH_CHECK(k_att >= 1, op_, ": k_att must be >= 1, got ", k_att);
    TORCH_CHECK(scorer == "mlp" || scorer == "linear", op_, ": scorer must be 'mlp' or 'linear', got '",
                std::string(scorer), "'");
    if (scorer == "linear") {
      tensor(att_wh, "att_wh", {d.H});
      tensor(att_wm, "att_wm", {d.H});
      tensor(att_vb, "att_vb", {1});
      return {0, false};
    }
    TORCH_CHECK(att_wh.dim() == 2 && att_wh.size(0) >= 1, op_,
                ": att_wh must be [A, H] with A >= 1 for the mlp scorer, got shape ", att_wh.sizes());
    const int64_t A = att_wh.size(0);
    tensor(att_wh, "att_wh", {A, d.H});
    tensor(att_wm, "att_wm", {A, d.H});
    tensor(att_vb, "att_vb", {A});
    return {A, true};
  }

  // `lengths` (docs/CONTRACT.md, "Variable length"): None, or int64 [B] on x's device, contiguous, each value
  // in [0, T]. A CPU tensor's values are read in place (the message names the first bad one); on another
  // device the range check is one reduction and one host read.
  void lengths(const std::optional<at::Tensor>& lengths, const LayerDims& d) const {
    if (!lengths.has_value()) return;
    const at::Tensor& l = *lengths;
    TORCH_CHECK(l.device() == device_, op_, ": lengths must be on ", device_, " (the device of x), got ",
                l.device());
    TORCH_CHECK(l.scalar_type() == at::kLong, op_, ": lengths must have dtype int64, got ", l.scalar_type());
    TORCH_CHECK(l.dim() == 1 && l.size(0) == d.B, op_, ": lengths must have shape [B] = [", d.B, "], got ",
                l.sizes());
    TORCH_CHECK(l.is_contiguous(), op_, ": lengths must be contiguous");
    if (!l.device().is_cpu()) {
      TORCH_CHECK(d.B == 0 || ((l >= 0) & (l <= d.T)).all().item<bool>(), op_,
                  ": lengths must lie in [0, T] with T = ", d.T);
      return;
    }
    const int64_t* p = l.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < d.B; ++b)
      TORCH_CHECK(p[b] >= 0 && p[b] <= d.T, op_, ": lengths[", b, "] = ", p[b], " is outside [0, T] with T = ",
                  d.T);
  }

  // The streaming arguments of the SAB ops (docs/CONTRACT.md, "Streaming memory across calls"): step0 >= 0,
  // memory None or [B, S0, H] with S0 >= 1 (x's device and dtype, contiguous), never with lengths (slots
  // written past a row's length would be carried into the next call). Returns S0, the number of slots the
  // call starts with: memory's, or 1 (the memory [h0] of a fresh sequence).
  int64_t stream(const std::optional<at::Tensor>& memory, int64_t step0, const std::optional<at::Tensor>& lengths,
                 const LayerDims& d) const {
    TORCH_CHECK(step0 >= 0, op_, ": step0 must be >= 0, got ", step0);
    if (!memory.has_value()) return 1;
    TORCH_CHECK(!lengths.has_value(), op_,
                ": lengths cannot be combined with memory (slots written past a row's length would be carried "
                "into the next call)");
    const at::Tensor& m = *memory;
    TORCH_CHECK(m.dim() == 3 && m.size(0) == d.B && m.size(1) >= 1 && m.size(2) == d.H, op_,
                ": memory must have shape [B, S0, H] = [", d.B, ", S0 >= 1, ", d.H, "], got ", m.sizes());
    tensor(m, "memory", m.sizes());
    return m.size(1);
  }

  // The per-row arguments of the SAB ops (docs/CONTRACT.md "Per-row resets"): reset bool [T, B], slot_offset
  // int64 [B] in [0, S0) (0 without memory), row_step0 int64 [B] >= 0, each contiguous on x's device, never
  // with lengths. The values are read on the host (on another device than the CPU: one copy of each [B]
  // tensor), so every device names the first bad one in the same words. Returns whether the call is per row
  // (any of them given).
  bool rows(const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& slot_offset,
            const std::optional<at::Tensor>& row_step0, const std::optional<at::Tensor>& memory,
            const std::optional<at::Tensor>& lengths, const LayerDims& d, int64_t S0) const {
    if (!reset.has_value() && !slot_offset.has_value() && !row_step0.has_value()) return false;
    TORCH_CHECK(!lengths.has_value(), op_, ": lengths cannot be combined with reset / slot_offset / row_step0");
    if (reset.has_value()) tensor(*reset, "reset", at::kBool, {d.T, d.B});
    for (const auto& [t, name] : {std::pair{&slot_offset, "slot_offset"}, std::pair{&row_step0, "row_step0"}}) {
      if (!t->has_value()) continue;
      tensor(**t, name, at::kLong, {d.B});
    }
    if (slot_offset.has_value()) {
      const at::Tensor host = slot_offset->cpu();
      const int64_t* p = host.const_data_ptr<int64_t>();
      for (int64_t b = 0; b < d.B; ++b)
        TORCH_CHECK(p[b] >= 0 && p[b] < S0 && (memory.has_value() || p[b] == 0), op_, ": slot_offset[", b, "] = ",
                    p[b], " must lie in [0, S0) with S0 = ", S0, memory.has_value() ? "" : " (0 without memory)");
    }
    if (row_step0.has_value()) {
      const at::Tensor host = row_step0->cpu();
      const int64_t* p = host.const_data_ptr<int64_t>();
      for (int64_t b = 0; b < d.B; ++b)
        TORCH_CHECK(p[b] >= 0, op_, ": row_step0[", b, "] = ", p[b], " must be >= 0");
    }
    return true;
  }

 private:
  // "float32 or float64", "float32, float64 or bfloat16": the dtypes by torch's names.
  std::string dtype_list() const {
    std::string out;
    for (size_t i = 0; i < dtypes_.size(); ++i) {
      if (i > 0) out += i + 1 == dtypes_.size() ? " or " : ", ";
      const auto dt = dtypes_[i];
      out += dt == at::kFloat      ? "float32"
             : dt == at::kDouble   ? "float64"
             : dt == at::kBFloat16 ? "bfloat16"
             : dt == at::kHalf     ? "float16"
                                   : c10::toString(dt);
    }
    return out;
  }

  const char* op_;
  at::DeviceType device_type_;
  std::vector<at::ScalarType> dtypes_;
  at::Device device_{at::kCPU};
  at::ScalarType dtype_ = at::kFloat;
};

}  // namespace fastrnn
