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
#include <optional>
#include <utility>

#include "fastrnn/reverse_sweep.h"

namespace fastrnn {
namespace cpu {

// The checked lengths (csrc/checks.h, ArgChecker::lengths) as a host pointer, or nullptr for None (every
// row has length T).
inline const int64_t* lengths_data(const std::optional<at::Tensor>& lengths) {
  return lengths.has_value() ? lengths->const_data_ptr<int64_t>() : nullptr;
}

// After the forward sweep: returns (h_n, c_n), the states after each row's last step len_b - 1 (h0, c0 when
// len_b = 0; every row's step T-1 when len is nullptr), and zeroes y past each row's length (the kernels
// read y as the recurrent input and as SAB slots, so it is masked only now).
inline std::pair<at::Tensor, at::Tensor> stop_at_lengths(const int64_t* len, at::Tensor& y, const at::Tensor& c,
                                                         const at::Tensor& h0, const at::Tensor& c0) {
  const int64_t steps = y.size(0), B = y.size(1), H = y.size(2);
  if (len == nullptr) return {y[steps - 1].clone(), c[steps - 1].clone()};
  at::Tensor h_n = at::empty({B, H}, y.options()), c_n = at::empty({B, H}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fastrnn::stop_at_lengths", [&] {
    using T = scalar_t;
    T* y_p = y.data_ptr<T>();
    const T *c_p = c.const_data_ptr<T>(), *h0_p = h0.const_data_ptr<T>(), *c0_p = c0.const_data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = len[b];
      std::copy_n(n == 0 ? h0_p + b * H : y_p + ((n - 1) * B + b) * H, H, h_n.data_ptr<T>() + b * H);
      std::copy_n(n == 0 ? c0_p + b * H : c_p + ((n - 1) * B + b) * H, H, c_n.data_ptr<T>() + b * H);
      for (int64_t t = n; t < steps; ++t) std::fill_n(y_p + (t * B + b) * H, H, T(0));
    }
  });
  return {h_n, c_n};
}

// The attention record idx, w [T, B, k_top] past each row's length: indices -1, weights 0.
inline void mask_attention(const int64_t* len, at::Tensor& idx, at::Tensor& w) {
  const int64_t steps = idx.size(0), B = idx.size(1), k_top = idx.size(2);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "fastrnn::mask_attention", [&] {
    int64_t* idx_p = idx.data_ptr<int64_t>();
    scalar_t* w_p = w.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = len[b]; t < steps; ++t) {
        std::fill_n(idx_p + (t * B + b) * k_top, k_top, int64_t(-1));
        std::fill_n(w_p + (t * B + b) * k_top, k_top, scalar_t(0));
      }
  });
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
        const int64_t r = (t * B + b) * H, last = last_step(len, b, steps);
        for (int64_t h = 0; h < H; ++h) dst[r + h] = output_grad(src[r + h], hn[b * H + h], t, last);
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
