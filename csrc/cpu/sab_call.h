// CPU only, shared by the SAB forward (sab_forward.cpp) and backward (sab_backward.cpp): the argument checks
// both ops open with (csrc/checks.h) and the slot tables of the call they imply, built once here.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "checks.h"
#include "sab_rows.h"

namespace fastrnn {
namespace cpu {

// One checked SAB op call: its sizes, the slot grid (streaming) and, with per-row arguments, the per-row
// tables; S = S0 + S1, the slots of the call (the extent of slot_keys).
struct SabCall {
  LayerDims d;
  ScorerDims sd;
  SlotGrid grid;
  std::optional<RowSlots> rows;
  int64_t S;
};

// The arguments every SAB op takes, checked in the ops' order: the layer (cut/scale [T] or per row [T, B]),
// the scorer, lengths, the stream, the per-row arguments. The forward's biases and the backward's saved
// tensors are the callers' own checks.
inline SabCall check_sab_call(ArgChecker& ck, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& cut,
                              const at::Tensor& scale, const at::Tensor& att_wh, const at::Tensor& att_wm,
                              const at::Tensor& att_vb, const std::optional<at::Tensor>& lengths,
                              const std::optional<at::Tensor>& memory, int64_t step0,
                              const std::optional<at::Tensor>& reset, const std::optional<at::Tensor>& slot_offset,
                              const std::optional<at::Tensor>& row_step0, int64_t k_top, int64_t k_att,
                              c10::string_view scorer) {
  const LayerDims d = ck.layer(x, w_ih, w_hh, h0, c0, cut, scale, /*row_schedule=*/true);
  const ScorerDims sd = ck.scorer(att_wh, att_wm, att_vb, k_top, k_att, scorer, d);
  ck.lengths(lengths, d);
  const SlotGrid grid(ck.stream(memory, step0, lengths, d), step0, k_att);
  const bool per_row = ck.rows(reset, slot_offset, row_step0, memory, lengths, d, grid.S0);
  std::optional<RowSlots> rows = row_slots(per_row, reset, slot_offset, row_step0, step0, d.T, d.B, grid.S0, k_att);
  const int64_t S = rows ? rows->S0 + rows->S1 : grid.n_mem(d.T);
  return {d, sd, grid, std::move(rows), S};
}

}  // namespace cpu
}  // namespace fastrnn
