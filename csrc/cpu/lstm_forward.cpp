// fastrnn::lstm_forward on CPU: a whole LSTM layer over the sequence in one call; fastrnn::lstm_mixed_forward
// the same in bfloat16 mixed precision (bf16_gemm.h).
//
// The input projection of every step is one GEMM up front (the mixed path: per step, in the time loop); then
// each thread runs the whole time loop on
// its block of rows, one lstm_step_forward per step (lstm_step.h: the recurrent GEMM into its slice of the
// gates buffer, then the fused pointwise pass, at::vec over H).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "bf16_gemm.h"
#include "bf16_lstm.h"
#include "checks.h"
#include "huge_pages.h"
#include "lengths.h"
#include "lstm_step.h"

namespace fastrnn {
namespace cpu {
namespace {

// Returns (y [T,B,H], h_n [B,H], c_n [B,H], gates [T,B,4H] activated, cs [T,B,H]); the last two are what
// the backward needs. cut/scale are accepted so that autograd can keep them; the forward ignores them.
// lengths (optional, cpu/lengths.h): every step of every row is computed, then h_n/c_n are taken at each
// row's last step and y is zeroed past it. gemm (nullptr: float32/float64 throughout) names the kernel of
// the bfloat16 mixed path (bf16_gemm.h): float32 tensors, each GEMM's operands rounded to bfloat16 (x and
// the weights once, h_{t-1} every step), everything else float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const char* op, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& cut, const at::Tensor& scale, const std::optional<at::Tensor>& lengths,
    const std::string* gemm) {
  ArgChecker ck = layer_checker(op, gemm);
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale);
  ck.biases(b_ih, b_hh, d);
  ck.lengths(lengths, d);
  const std::optional<Bf16Kernel> kernel = gemm ? std::optional(bf16_kernel(*gemm, op)) : std::nullopt;
  const int64_t T = d.T, B = d.B, H = d.H;
  const int64_t* len = lengths_data(lengths);
  const auto opts = x.options();

  auto gates = empty_huge({T, B, 4 * H}, opts);
  auto y = empty_huge({T, B, H}, opts);
  auto cs = empty_huge({T, B, H}, opts);
  if (kernel) {
    // the input projection per step, inside the time loop (bf16_lstm.h's MixedLstmCell says why)
    const Bf16Weights w(*kernel, w_hh), w_x(*kernel, w_ih);
    const std::optional<at::Tensor> bias = summed_bias(b_ih, b_hh);
    const auto L = lstm_layer<float>(x, w_ih, w_hh, h0, c0, /*h=*/y, gates, cs, /*h_cell=*/y);
    for_each_row_block(B, [&](int64_t, int64_t b0, int64_t nb) {
      MixedLstmCell cell(L, w_x, w, bias ? bias->const_data_ptr<float>() : nullptr);
      for (int64_t t = 0; t < T; ++t) cell(t, b0, nb);
    });
  } else {
    input_projection(x, w_ih, b_ih, b_hh, gates);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn::lstm_forward", [&] {
      const auto L = lstm_layer<scalar_t>(x, w_ih, w_hh, h0, c0, /*h=*/y, gates, cs, /*h_cell=*/y);
      for_each_row_block(B, [&](int64_t, int64_t b0, int64_t nb) {
        const LstmCell<scalar_t> cell{L};
        for (int64_t t = 0; t < T; ++t) cell(t, b0, nb);
      });
    });
  }
  auto [h_n, c_n] = stop_at_lengths(len, y, cs, h0, c0);
  return {y, h_n, c_n, gates, cs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths) {
  return forward("fastrnn::lstm_forward", x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_mixed_forward_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
    const at::Tensor& scale, const std::optional<at::Tensor>& lengths, const std::string& gemm) {
  return forward("fastrnn::lstm_mixed_forward", x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths, &gemm);
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_forward", &fastrnn::cpu::lstm_forward_cpu);
  m.impl("lstm_mixed_forward", &fastrnn::cpu::lstm_mixed_forward_cpu);
}
