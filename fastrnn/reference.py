"""The specification (docs/SPEC.md sections 1-3) in plain PyTorch autograd: the oracle.

Every backend is tested against these two functions. They are a Python loop over time steps written to
read like docs/SPEC.md line by line, and autograd computes the backward pass, so the gradient is by
construction "exactly the autograd gradient of section 1 with its detach points". Keep them obviously
correct, never clever: speed lives in the other backends.

Per-layer signature, shared by every backend (docs/CONTRACT.md):

    lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None) -> (y, h_n, c_n)
    sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *,
              k_top, k_att, scorer, provisional, need_attention, lengths=None,
              memory=None, step0=0, return_slots=False) -> (y, h_n, c_n, attention[, new_slots])

`x` is [T, B, I] with T >= 1, `h0`/`c0` [B, H]; `cut` (bool) and `scale` are the [T] truncation
schedule of SPEC section 3 (sab_layer: or [T, B], row b's schedule in column b). Step -1 is the initial
state, so `cut[0]`/`scale[0]` act on the recurrent gradient into (h0, c0). `lengths` (None, or int64 [B]
in [0, T]): every step is computed as without it, then `stop_at_lengths` keeps each row's outputs up to its
own length, so autograd's gradient ignores everything past it.
`memory`/`step0`/`return_slots` continue a stream (docs/SPEC.md section 8): `memory` [B, S0, H] replaces
the fresh memory [h0], slots are written when (step0 + t + 1) % k_att == 0, and `new_slots` [B, S1, H] are
the slots this call wrote (the carried memory is cat(memory, new_slots), or cat(h0, new_slots) for a
fresh call).
"""
import torch
from torch import Tensor

from .ops.attention import SABAttention, slot_steps
from .ops.streaming import carried_row_steps, check_rows, check_schedule, check_stream, per_row, reset_plan

# Added to the normaliser of the sparse weights (SPEC section 1, step 6).
NORM_EPS = 1e-7


def recurrent_input(v: Tensor, cut: bool, scale: float) -> Tensor:
    """The value of `v` as the recurrent input of the next step, under the truncation schedule.

    Forward: `v` exactly. Backward: no gradient if `cut`, else the gradient times `scale`.
    (`d + scale * (v - d)` is `v` to the bit, because `v - d` is exactly zero.)
    A per-row schedule (lists `cut`, `scale` of one entry per row of v [B, H]) applies each row's own.
    """
    if isinstance(cut, list):
        return torch.cat([recurrent_input(v[b:b + 1], cut[b], scale[b]) for b in range(len(cut))]) if cut else v
    if cut:
        return v.detach()
    if scale == 1.0:
        return v
    d = v.detach()
    return d + scale * (v - d)


def lstm_cell(x_t, h_in, c_in, w_ih, w_hh, b_ih, b_hh, matmul=torch.matmul):
    """SPEC section 1, steps 2-3: returns (c_t, ĥ_t). Gate order i, f, g, o as torch.nn.LSTM. `matmul` is
    the product of the two GEMMs (reference_bf16.py passes the bfloat16 mixed one)."""
    gates = matmul(x_t, w_ih.t()) + matmul(h_in, w_hh.t())
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c_in + i * g
    return c, o * torch.tanh(c)


def stop_at_lengths(ys, cs, h0, c0, lengths):
    """Every step's states ys, cs [T, B, H] -> (y, h_n, c_n) where each row b stops at lengths[b]:
    y[t, b] = 0 for t >= lengths[b]; (h_n, c_n)[b] = the states at step lengths[b] - 1, (h0, c0)[b] if 0."""
    T = ys.shape[0]
    live = torch.arange(T, device=ys.device).unsqueeze(1) < lengths.unsqueeze(0)          # [T, B]
    y = torch.where(live.unsqueeze(2), ys, torch.zeros((), dtype=ys.dtype, device=ys.device))
    states_h = torch.cat([h0.unsqueeze(0), ys])                                             # step -1 first
    states_c = torch.cat([c0.unsqueeze(0), cs])
    last = lengths.view(1, -1, 1).expand(1, ys.shape[1], ys.shape[2])                       # index len_b
    return y, states_h.gather(0, last).squeeze(0), states_c.gather(0, last).squeeze(0)


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None, matmul=torch.matmul):
    """A plain LSTM layer (torch.nn.LSTM's math) under a [T] truncation schedule; rows stop at `lengths`.
    `matmul`: as lstm_cell's."""
    check_schedule(cut, scale, x.shape[0], x.shape[1], per_row=False, dtype=x.dtype)
    cut, scale = cut.tolist(), scale.tolist()
    h, c = h0, c0
    ys, cs = [], []
    for t in range(x.shape[0]):
        h_in = recurrent_input(h, cut[t], scale[t])
        c_in = recurrent_input(c, cut[t], scale[t])
        c, h = lstm_cell(x[t], h_in, c_in, w_ih, w_hh, b_ih, b_hh, matmul)
        ys.append(h)
        cs.append(c)
    if lengths is not None:
        return stop_at_lengths(torch.stack(ys), torch.stack(cs), h0, c0, lengths)
    return torch.stack(ys), h, c


def scores(scorer: str, h_hat: Tensor, memory: Tensor, att_wh, att_wm, att_vb) -> Tensor:
    """SPEC section 1, step 4: the score a_j of every slot. h_hat [B, H], memory [B, S, H] -> [B, S]."""
    if scorer == "mlp":
        query = h_hat @ att_wh.t()                       # [B, A]
        keys = memory @ att_wm.t()                       # [B, S, A]
        return torch.tanh(query.unsqueeze(1) + keys) @ att_vb
    if scorer == "linear":
        return memory @ att_wm + (h_hat @ att_wh).unsqueeze(1) + att_vb
    raise ValueError(f"scorer must be 'mlp' or 'linear', got {scorer!r}")


def sparse_weights(a: Tensor, k_top: int) -> Tensor:
    """SPEC section 1, steps 5-6: the normalised sparse weights w [B, S] from the scores a [B, S].

    Ranking is a stable descending sort, so among equal scores the lower slot index ranks first;
    the threshold (and its gradient) is the (k_top+1)-th ranked slot, or, while |M| <= k_top, the last
    ranked slot's score minus one. relu has derivative 0 at 0: a slot exactly at the threshold is not
    selected and receives no gradient through ã.
    """
    ranked = torch.sort(a, dim=1, descending=True, stable=True).values
    if a.shape[1] > k_top:
        tau = ranked[:, k_top]
    else:
        tau = ranked[:, -1] - 1
    a_tilde = torch.relu(a - tau.unsqueeze(1))
    return a_tilde / (a_tilde.sum(dim=1, keepdim=True) + NORM_EPS)


def selected(w: Tensor, k_top: int):
    """The (indices, weights) of the non-zero weights of w [B, S], ascending, padded to k_top with -1/0."""
    B, S = w.shape
    slot = torch.arange(S, device=w.device).expand(B, S)
    order_key = torch.where(w > 0, slot, slot + S)        # selected slots first, in slot order
    keys = order_key.sort(dim=1).values[:, :k_top]
    indices = torch.where(keys < S, keys, torch.full_like(keys, -1))
    weights = torch.where(indices >= 0, w.gather(1, indices.clamp(min=0)), torch.zeros((), dtype=w.dtype))
    if S < k_top:
        pad = k_top - S
        indices = torch.cat([indices, indices.new_full((B, pad), -1)], dim=1)
        weights = torch.cat([weights, weights.new_zeros((B, pad))], dim=1)
    return indices, weights


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *,
              k_top: int, k_att: int, scorer: str, provisional: bool, need_attention: bool = False,
              lengths=None, memory=None, step0: int = 0, return_slots: bool = False, reset=None,
              slot_offset=None, row_step0=None, matmul=torch.matmul):
    """One SAB-LSTM layer, SPEC section 1 step by step; the backward pass is autograd's (section 2).
    Rows stop at `lengths` (stop_at_lengths; the attention record is -1 / 0 past a row's length).
    Streaming (section 8): `memory` [B, S0, H] (S0 >= 1) is the memory of earlier calls, used instead of
    [h0]; `step0` >= 0 is the global index of this call's first step. With `return_slots`, a fifth result
    `new_slots` [B, S1, H] holds the slots written by this call, with their graph.
    Per-row resets (section 9; `reset` [T, B] bool, `slot_offset` / `row_step0` [B] int64): see _sab_layer_rows.
    `cut` / `scale` [T, B]: row b is truncated by column b (section 3 per row).
    `matmul`: the product of the LSTM cell's two GEMMs, as lstm_cell's (reference_bf16.py passes the bfloat16
    mixed one); the attention's products are torch's."""
    T = x.shape[0]
    check_schedule(cut, scale, T, x.shape[1], per_row=True, dtype=x.dtype)
    check_stream(memory, step0, lengths, return_slots, h0)
    if per_row(reset, slot_offset, row_step0):
        check_rows(x, memory, step0, lengths, reset, slot_offset, row_step0)
        return _sab_layer_rows(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, k_top=k_top,
                               k_att=k_att, scorer=scorer, provisional=provisional, need_attention=need_attention,
                               memory=memory, step0=step0, return_slots=return_slots, reset=reset,
                               slot_offset=slot_offset, row_step0=row_step0, matmul=matmul)
    cut, scale = cut.tolist(), scale.tolist()
    h, c = h0, c0
    memory = [h0] if memory is None else list(memory.unbind(1))   # M; slots are never cut
    S0 = len(memory)
    ys, cs, rec_idx, rec_w = [], [], [], []
    for t in range(T):
        h_in = recurrent_input(h, cut[t], scale[t])        # step 1 (section 3 generalises k_trunc)
        c_in = recurrent_input(c, cut[t], scale[t])
        c, h_hat = lstm_cell(x[t], h_in, c_in, w_ih, w_hh, b_ih, b_hh, matmul)   # steps 2-3
        m = torch.stack(memory, dim=1)                     # [B, |M|, H], slots of earlier steps only
        a = scores(scorer, h_hat, m, att_wh, att_wm, att_vb)              # step 4
        w = sparse_weights(a, k_top)                       # steps 5-6
        s = (w.unsqueeze(2) * m).sum(dim=1)                # step 7
        h = h_hat + s
        if (step0 + t + 1) % k_att == 0:                   # step 8
            memory.append(h_hat if provisional else h)
        ys.append(h)
        cs.append(c)
        if need_attention:
            idx, wt = selected(w.detach(), k_top)
            rec_idx.append(idx)
            rec_w.append(wt)
    attention = None
    if need_attention:
        indices, weights = torch.stack(rec_idx), torch.stack(rec_w)
        if lengths is not None:
            past = (torch.arange(T, device=x.device).unsqueeze(1) >= lengths.unsqueeze(0)).unsqueeze(2)
            indices = indices.masked_fill(past, -1)
            weights = weights.masked_fill(past, 0)
        attention = SABAttention(indices, weights, slot_steps(T, k_att, x.device, S0=S0, step0=step0))
    if lengths is not None:
        return (*stop_at_lengths(torch.stack(ys), torch.stack(cs), h0, c0, lengths), attention)
    if return_slots:
        H = h0.shape[1]
        new_slots = torch.stack(memory[S0:], dim=1) if len(memory) > S0 else h0.new_zeros(h0.shape[0], 0, H)
        return torch.stack(ys), h, c, attention, new_slots
    return torch.stack(ys), h, c, attention


def _sab_layer_rows(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *, k_top, k_att,
                    scorer, provisional, need_attention, memory, step0, return_slots, reset, slot_offset,
                    row_step0, matmul):
    """A SAB layer with per-row slot tables and resets (SPEC section 9; docs/CONTRACT.md "Per-row resets"),
    literally: each row is split at its resets and every piece runs alone through sab_layer above. The first
    piece of row b starts from h0[b], c0[b], its carried slots memory[b, slot_offset[b]:] (or [h0[b]]) and
    the step counter row_step0[b] (step0 if None); every later piece from zeros, memory [0] and counter 0.
    Each piece is truncated by its own steps of the schedule (row b's column of a [T, B] one).

    Row b's slot table: its S0 carried entries (memory[b], padding first, or [h0[b]]), then the slots the
    call appends in order: a fresh slot (zeros) at each reset, and each slot a piece writes. The attention
    indices index this table; slot_steps is [B, S0 + S1] (reset_plan numbering, PAD_STEP padding); new_slots
    [B, S1, H] holds the appended slots, zero padding on the right (S1 = the most any row appends)."""
    T, B = x.shape[0], x.shape[1]
    H = h0.shape[1]
    S0 = 1 if memory is None else memory.shape[1]
    offsets = [0] * B if slot_offset is None else slot_offset.tolist()
    counters = [step0] * B if row_step0 is None else row_step0.tolist()
    resets = [[False] * B for _ in range(T)] if reset is None else reset.tolist()
    ys, h_ns, c_ns, idx_rows, w_rows, new_rows = [], [], [], [], [], []
    for b in range(B):
        row_cut, row_scale = (cut[:, b], scale[:, b]) if cut.dim() == 2 else (cut, scale)
        starts = [t for t in range(T) if resets[t][b]]
        bounds = sorted(set([0, *starts, T]))
        table = S0                      # entries of the row's table so far
        appended, y_parts, idx_parts, w_parts = [], [], [], []
        h_last, c_last = h0[b:b + 1], c0[b:b + 1]
        for a, e in zip(bounds[:-1], bounds[1:]):
            if a in starts:             # a fresh piece: state and memory restart at zeros, counter at 0
                zeros = h0.new_zeros(1, H)
                hb, cb, mem, counter, base = zeros, zeros, None, 0, table
                appended.append(zeros)
                table += 1
            else:                       # the first piece continues from the given state
                hb, cb, counter = h0[b:b + 1], c0[b:b + 1], counters[b]
                mem = None if memory is None else memory[b:b + 1, offsets[b]:]
                base = offsets[b]
            y, h_last, c_last, att, new = sab_layer(
                x[a:e, b:b + 1], w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, hb, cb, row_cut[a:e], row_scale[a:e],
                k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=need_attention,
                memory=mem, step0=counter, return_slots=True, matmul=matmul)
            y_parts.append(y)
            appended.extend(new[0].unbind(0))
            table += new.shape[1]
            if need_attention:
                idx_parts.append(torch.where(att.indices >= 0, att.indices + base, att.indices))
                w_parts.append(att.weights)
        ys.append(torch.cat(y_parts))
        h_ns.append(h_last)
        c_ns.append(c_last)
        new_rows.append([s.reshape(H) for s in appended])
        if need_attention:
            idx_rows.append(torch.cat(idx_parts))
            w_rows.append(torch.cat(w_parts))
    S1 = max((len(r) for r in new_rows), default=0)
    new_slots = torch.stack([torch.stack(r + [h0.new_zeros(H)] * (S1 - len(r))) if S1 else h0.new_zeros(0, H)
                             for r in new_rows]) if B else h0.new_zeros(0, 0, H)
    attention = None
    if need_attention:
        plan = reset_plan(T, B, k_att, x.device, S0=S0, step0=step0, reset=reset, slot_offset=slot_offset,
                          row_step0=row_step0)
        steps = torch.cat([carried_row_steps(B, k_att, x.device, memory=memory, slot_offset=slot_offset),
                           plan.new_steps], dim=1)
        attention = SABAttention(torch.cat(idx_rows, dim=1), torch.cat(w_rows, dim=1), steps)
    y, h_n, c_n = torch.cat(ys, dim=1), torch.cat(h_ns), torch.cat(c_ns)
    if return_slots:
        return y, h_n, c_n, attention, new_slots
    return y, h_n, c_n, attention



def available() -> bool:
    return True
