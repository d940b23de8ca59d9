// CPU only, shared by the LSTM and SAB ops: the per-row sequence lengths of docs/CONTRACT.md
// ("Variable length"). The kernels compute every step of every row; these helpers turn that into the ops'
// semantics: y[t, b] = 0 for t >= len_b, (h_n, c_n)[b] = the state after step len_b - 1 (h0, c0 when
// len_b = 0), the attention record -1 / 0 past len_b; backward: dy[t >= len_b] ignored, dh_n/dc_n enter the
// sweep at step len_b - 1 (straight into dh0/dc0 when len_b = 0).
// Steps past a row's length run on the inputs the caller gave there (the module zeroes them), and their
// gradients are exact zeros: nothing flows into them (dy masked, dh_n/dc_n moved to len_b - 1), so
// dgates = 0 * (finite values) = 0 there. SAB slots written past len_b are read only by steps past len_b.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace fastrnn {
namespace cpu {

// `lengths`: None, or a contiguous CPU int64 [B] tensor with every value in [0, T]. Returns its data, or
// nullptr for None (every row has length T). `op` prefixes the message.
inline const int64_t* check_lengths(const c10::optional<at::Tensor>& lengths, int64_t T, int64_t B,
                                    const char* op) {
  if (!lengths.has_value()) return nullptr;
  const at::Tensor& l = *lengths;
  TORCH_CHECK(l.device().is_cpu(), op, ": lengths must be a CPU tensor (like x), got device ", l.device());
  TORCH_CHECK(l.scalar_type() == at::kLong, op, ": lengths must have dtype int64, got ", l.scalar_type());
  TORCH_CHECK(l.dim() == 1 && l.size(0) == B, op, ": lengths must have shape [B] = [", B, "], got ", l.sizes());
  TORCH_CHECK(l.is_contiguous(), op, ": lengths must be contiguous");
  const int64_t* p = l.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(p[b] >= 0 && p[b] <= T, op, ": lengths[", b, "] = ", p[b], " is outside [0, T] with T = ", T);
  return p;
}

// After the forward: h_n[b] = y[len_b - 1, b] (h0[b] if len_b = 0), c_n likewise from c, then y zeroed past
// each row's length (the kernels read y as the recurrent input and as SAB slots, so it is masked only now).
template <typename T>
void finish_forward(const int64_t* len, int64_t steps, int64_t B, int64_t H, T* y, const T* c, const T* h0,
                    const T* c0, T* h_n, T* c_n) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = len[b];
    std::copy_n(n == 0 ? h0 + b * H : y + ((n - 1) * B + b) * H, H, h_n + b * H);
    std::copy_n(n == 0 ? c0 + b * H : c + ((n - 1) * B + b) * H, H, c_n + b * H);
    for (int64_t t = n; t < steps; ++t) std::fill_n(y + (t * B + b) * H, H, T(0));
  }
}

// The attention record past each row's length: indices -1, weights 0.
template <typename T>
void mask_attention(const int64_t* len, int64_t steps, int64_t B, int64_t K, int64_t* idx, T* w) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = len[b]; t < steps; ++t) {
      std::fill_n(idx + (t * B + b) * K, K, int64_t(-1));
      std::fill_n(w + (t * B + b) * K, K, T(0));
    }
}

// The backward's output gradient: dy with its steps past each row's length zeroed and dh_n[b] added at step
// len_b - 1 (a new tensor; the caller's dy is not touched).
inline at::Tensor fold_output_grads(const at::Tensor& dy, const at::Tensor& dh_n, const int64_t* len) {
  const int64_t steps = dy.size(0), B = dy.size(1), H = dy.size(2);
  at::Tensor g = at::empty_like(dy);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "fastrnn::fold_output_grads", [&] {
    const scalar_t* src = dy.const_data_ptr<scalar_t>();
    const scalar_t* hn = dh_n.const_data_ptr<scalar_t>();
    scalar_t* dst = g.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r = (t * B + b) * H;
        if (t >= len[b]) {
          std::fill_n(dst + r, H, scalar_t(0));
        } else if (t == len[b] - 1) {
          for (int64_t h = 0; h < H; ++h) dst[r + h] = src[r + h] + hn[b * H + h];
        } else {
          std::copy_n(src + r, H, dst + r);
        }
      }
  });
  return g;
}

// After the sweep: a zero-length row's h_n, c_n are h0, c0 themselves, so dh_n, dc_n join dh0, dc0.
inline void add_zero_length_grads(const int64_t* len, const at::Tensor& dh_n, const at::Tensor& dc_n,
                                  at::Tensor& dh0, at::Tensor& dc0) {
  const int64_t B = dh0.size(0), H = dh0.size(1);
  AT_DISPATCH_FLOATING_TYPES(dh0.scalar_type(), "fastrnn::add_zero_length_grads", [&] {
    for (int64_t b = 0; b < B; ++b) {
      if (len[b] != 0) continue;
      const scalar_t* hn = dh_n.const_data_ptr<scalar_t>() + b * H;
      const scalar_t* cn = dc_n.const_data_ptr<scalar_t>() + b * H;
      scalar_t* h0 = dh0.data_ptr<scalar_t>() + b * H;
      scalar_t* c0 = dc0.data_ptr<scalar_t>() + b * H;
      for (int64_t h = 0; h < H; ++h) {
        h0[h] += hn[h];
        c0[h] += cn[h];
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastrnn
