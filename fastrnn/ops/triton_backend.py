"""The Triton backend: `lstm_layer` and `sab_layer` of docs/CONTRACT.md on the kernels in `kernels/`.

The time loop runs in Python, one small group of kernel launches per step (kernels/README.md counts
them); everything that is not sequential is a single torch GEMM before or after the loop: the input
projection x @ W_ihᵀ + b of all steps, and the weight and input gradients from the saved gate gradients.
Each layer is one `torch.autograd.Function` whose backward is the reverse sweep (SPEC section 2),
honouring the schedule's cut/scale on the recurrent path and never cutting memory slots.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before the kernels were first
imported (how CI tests it). Triton itself is imported only when a layer runs.
"""
import importlib
import importlib.util

import torch

from . import glue
from .attention import SABAttention, slot_steps
from .streaming import carried_row_steps, check_rows, check_schedule, check_stream, per_row, reset_plan

_KERNELS = None


def available() -> bool:
    """Triton and the kernels (fastrnn.kernels: the installed subpackage, or kernels/ of a checkout) are
    importable; neither is imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("triton", "fastrnn.kernels"))


def _kernels():
    """fastrnn.kernels, imported on first use (it reads TRITON_INTERPRET at import)."""
    global _KERNELS
    if _KERNELS is None:
        k = importlib.import_module("fastrnn.kernels")
        for sub in ("lstm_step", "sparse_attention", "sparse_attention_bwd"):
            importlib.import_module(f"{k.__name__}.{sub}")
        _KERNELS = k
    return _KERNELS


def _past_lengths(T, lengths):
    """[T, B] bool: True where step t is past row b's length."""
    return torch.arange(T, device=lengths.device).unsqueeze(1) >= lengths.unsqueeze(0)


def _stop_at_lengths(y, cs, h0, c0, lengths):
    """After the forward sweep (docs/CONTRACT.md, "Variable length"): returns (h_n, c_n), each row's states
    at its step lengths[b] - 1 ((h0, c0) where 0), and zeroes y past each row's length, in place."""
    if lengths is None:
        return y[-1].clone(), cs[-1].clone()
    rows = torch.arange(y.shape[1], device=y.device)
    last = (lengths - 1).clamp(min=0)
    empty = (lengths == 0).unsqueeze(1)
    h_n = torch.where(empty, h0, y[last, rows])
    c_n = torch.where(empty, c0, cs[last, rows])
    y.masked_fill_(_past_lengths(y.shape[0], lengths).unsqueeze(2), 0)
    return h_n, c_n


class _FinalGrads:
    """Where dh_n and dc_n enter the reverse sweep. Without lengths: dh_n is folded into dy[T-1] and the
    carried dc starts as dc_n. With lengths: dy is zeroed past each row's length and dh_n[b] folded into
    dy[len_b - 1, b]; the carried dc starts at zero and `enter(t, dc)` adds dc_n[b] to it when the sweep
    reaches t = len_b - 1; `finish(dh0, dc0)` adds both to the initial state's gradients of zero-length rows
    (their h_n, c_n are h0, c0). The rows' steps are read to the host once (one sync per call)."""

    def __init__(self, lengths, dh_n, dc_n, g):
        self.lengths, self.g = lengths, g
        self.dh_n = None if dh_n is None else dh_n.to(g)
        self.dc_n = None if dc_n is None else dc_n.to(g)
        self.rows_ending_at = {}
        self.zero_rows = None
        if lengths is not None:
            ends = {}
            for b, n in enumerate(lengths.tolist()):
                ends.setdefault(n - 1, []).append(b)
            as_index = lambda r: torch.tensor(r, dtype=torch.int64, device=lengths.device)   # noqa: E731
            self.zero_rows = as_index(ends.pop(-1)) if -1 in ends else None
            self.rows_ending_at = {t: as_index(r) for t, r in ends.items()}

    def sweep_buffers(self, y, dy, c0, gates):
        """dy with dh_n folded in, the carried dc (and its double buffer), dgates; all in the gradient dtype."""
        g, T = self.g, y.shape[0]
        dy = torch.zeros_like(y, dtype=g) if dy is None else dy.to(g, copy=True).contiguous()
        if self.lengths is None:
            if self.dh_n is not None:
                dy[T - 1] += self.dh_n
            dc = torch.zeros_like(c0, dtype=g) if self.dc_n is None else self.dc_n.clone().contiguous()
        else:
            dy.masked_fill_(_past_lengths(T, self.lengths).unsqueeze(2), 0)
            if self.dh_n is not None:
                for t, rows in self.rows_ending_at.items():
                    dy[t].index_add_(0, rows, self.dh_n.index_select(0, rows))
            dc = torch.zeros_like(c0, dtype=g)
        return dy, dc, torch.empty_like(dc), torch.empty_like(gates, dtype=g)

    def enter(self, t, dc):
        """Before the cell backward of step t reads the carried dc."""
        rows = self.rows_ending_at.get(t)
        if rows is not None and self.dc_n is not None:
            dc.index_add_(0, rows, self.dc_n.index_select(0, rows))

    def finish(self, dh0, dc0):
        if self.zero_rows is None:
            return
        for grad, final in ((dh0, self.dh_n), (dc0, self.dc_n)):
            if final is not None:
                grad.index_add_(0, self.zero_rows, final.index_select(0, self.zero_rows))


class _Cfg:
    """Tile sizes and dtype switches shared by all kernels of one layer call."""

    def __init__(self, x: torch.Tensor, B: int, H: int, A: int):
        k = _kernels()
        self.acc = k.acc_dtype(x.dtype)
        self.prec = k.dot_precision(x.dtype)
        self.bb = k.row_block(B, 16)
        self.bh = k.row_block(H, 32)
        self.ba = k.row_block(A, 32)
        self.bk = k.row_block(4 * H, 32)   # the K step of every GEMM tile
        self.grid_bh = (_cdiv(B, self.bb), _cdiv(H, self.bh))
        self.grid_b = (_cdiv(B, self.bb),)

    def common(self):
        return dict(ACC=self.acc, BLOCK_B=self.bb, BLOCK_H=self.bh, BLOCK_K=self.bk, DOT_PREC=self.prec)


def _check_tensors(named: dict, cut, scale, lengths=None, *, row_schedule: bool = False) -> None:
    """Every tensor on x's device with x's dtype (the schedule and lengths on x's device), and a device the
    kernels can run on; h0, c0 [B, H] and the schedule [T] (row_schedule: or [T, B]), whose shapes the kernels
    trust (the module checks the others); errors name the argument."""
    x = named["x"]
    T, B, H = x.shape[0], x.shape[1], named["w_hh"].shape[-1]
    for name, t in (("h0", named["h0"]), ("c0", named["c0"])):
        if tuple(t.shape) != (B, H):
            raise ValueError(f"{name} must have shape [B, H] = {[B, H]}, got {list(t.shape)}")
    check_schedule(cut, scale, T, B, per_row=row_schedule, dtype=x.dtype)
    for name, t in (("cut", cut), ("scale", scale), ("lengths", lengths)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if lengths is not None:
        T, B = x.shape[0], x.shape[1]
        if lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must be an int64 tensor of shape [B] = [{B}], got {lengths.dtype} "
                             f"{tuple(lengths.shape)}")
        if not torch.compiler.is_compiling() and B > 0 and not bool(((lengths >= 0) & (lengths <= T)).all()):
            raise ValueError(f"lengths must lie in [0, T] with T = {T}, got {lengths.tolist()}")
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise TypeError(f"x: the triton backend takes float32, float64 or bfloat16, got {x.dtype}")
    for name, t in named.items():
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}")
    if x.device.type != "cuda" and not _kernels().INTERPRET:
        raise ValueError(f"x: the triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got {x.device}")


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _grad_dtype(dtype):
    """Accumulation dtype on the torch side: gradient buffers, scores (float32 for bfloat16 tensors)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _input_projection(x, w_ih, b_ih, b_hh):
    """x_t @ W_ihᵀ + b_ih + b_hh for every step at once: [T, B, 4H]."""
    T, B, I = x.shape
    xg = x.reshape(T * B, I) @ w_ih.t()
    if b_ih is not None:
        xg = xg + (b_ih + b_hh)
    return xg.reshape(T, B, w_ih.shape[0]).contiguous()   # not -1: ambiguous when B = 0


def _schedule(cut, scale, dtype):
    """The recurrent factor of each step t (0 where cut, else scale[t]) as a [T] tensor in `dtype` on the
    device, which the kernels read, and as a host list of "any gradient flows", which chooses the kernel
    variants (one sync per call). A per-row schedule ([T, B]) gives [T, B] factors, and a step flows when
    any row's does."""
    factor = torch.where(cut, torch.zeros((), dtype=scale.dtype, device=scale.device), scale).to(dtype)
    return factor, (factor != 0).reshape(factor.shape[0], -1).any(1).tolist()


def _scaled(factor, v):
    """v [B, H] times one step's schedule factor: one for every row (a 0-dim f[t]), or per row ([B]), where
    a cut row's (factor 0) is exactly 0, not 0 · v, as the kernels' (kernels/lstm_step.py, `scaled`)."""
    if factor.dim() == 0:
        return factor * v
    factor = factor.unsqueeze(1)
    return torch.where(factor != 0, factor * v, torch.zeros((), dtype=v.dtype, device=v.device))


def _lstm_forward(x, w_hh, xg, h0, c0, gates, cs, out, cfg):
    """The forward sweep: gates [T,B,4H], cs [T,B,H] and out [T,B,H] (ĥ_t) are filled."""
    k = _kernels().lstm_step
    T = x.shape[0]
    B, H = h0.shape
    h, c = h0, c0
    for t in range(T):
        k.lstm_fwd_step_kernel[cfg.grid_bh](xg[t], h, c, w_hh, gates[t], cs[t], out[t], B, H, **cfg.common())
        h, c = out[t], cs[t]


def _weight_grads(ctx, dgates, x, w_ih, h_in):
    """Gradients of x, W_ih, W_hh and the biases from dgates [T, B, 4H]: one GEMM each, computed in
    dgates' dtype and returned in x's."""
    T, B, I = x.shape
    g, dt = dgates.dtype, x.dtype
    dG = dgates.flatten(0, 1)   # flatten: reshape(T * B, -1) fails at B = 0
    need = ctx.needs_input_grad
    dx = (dG @ w_ih.to(g)).reshape(T, B, I).to(dt) if need[0] else None
    dw_ih = (dG.t() @ x.reshape(T * B, I).to(g)).to(dt) if need[1] else None
    dw_hh = (dG.t() @ h_in.flatten(0, 1).to(g)).to(dt) if need[2] else None
    db = dG.sum(0).to(dt) if ctx.has_bias else None
    return dx, dw_ih, dw_hh, db


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, lengths):
        T, B, _ = x.shape
        H = h0.shape[1]
        cfg = _Cfg(x, B, H, 1)
        xg = _input_projection(x, w_ih, b_ih, b_hh)
        gates = x.new_empty(T, B, 4 * H)
        cs = x.new_empty(T, B, H)
        y = x.new_empty(T, B, H)
        _lstm_forward(x, w_hh, xg, h0, c0, gates, cs, y, cfg)
        h_n, c_n = _stop_at_lengths(y, cs, h0, c0, lengths)
        ctx.save_for_backward(x, w_ih, w_hh, h0, c0, gates, cs, y, b_ih, b_hh, lengths)
        ctx.schedule = (cut, scale)
        ctx.has_bias = b_ih is not None
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        x, w_ih, w_hh, h0, c0, gates, cs, y, b_ih, b_hh, lengths = ctx.saved_tensors
        if glue.wants_graph():   # create_graph=True: the kernels' sweep is not differentiable
            from .. import reference
            return (*glue.differentiable_backward(
                reference.lstm_layer, (x, w_ih, w_hh, b_ih, b_hh, h0, c0, *ctx.schedule), ctx.needs_input_grad,
                (dy, dh_n, dc_n), lengths=lengths), None)
        k = _kernels().lstm_step
        T, B, _ = x.shape
        H = h0.shape[1]
        cfg = _Cfg(x, B, H, 1)
        g = _grad_dtype(x.dtype)   # gradient buffers
        final = _FinalGrads(lengths, dh_n, dc_n, g)
        dy, dc, dc_next, dgates = final.sweep_buffers(y, dy, c0, gates)
        f, flows = _schedule(*ctx.schedule, g)
        for t in range(T - 1, -1, -1):
            has_rec = t + 1 < T and flows[t + 1]
            final.enter(t, dc)
            k.lstm_bwd_step_kernel[cfg.grid_bh](
                dgates[t + 1] if has_rec else dgates[t], w_hh, f[t + 1] if has_rec else f[t], dy[t], dc,
                gates[t], cs[t], cs[t - 1] if t > 0 else c0, dgates[t], dc_next, f[t], B, H,
                HAS_REC=has_rec, ROW_SCHEDULE=False, **cfg.common())
            dc, dc_next = dc_next, dc
        dh0 = _scaled(f[0], dgates[0] @ w_hh.to(g))
        final.finish(dh0, dc)
        h_in = torch.cat([h0.unsqueeze(0), y[:-1]])
        dx, dw_ih, dw_hh, db = _weight_grads(ctx, dgates, x, w_ih, h_in)
        return (dx, dw_ih, dw_hh, *glue.bias_grads(db, ctx.has_bias), dh0.to(x.dtype), dc.to(x.dtype),
                None, None, None)


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh, h0, c0, cut, scale, *, lengths=None):
    """A plain LSTM layer under a truncation schedule (docs/CONTRACT.md): 1 launch per step each way.
    Rows stop at `lengths` (None, or int64 [B] on x's device, each in [0, T])."""
    named = dict(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0)
    _check_tensors(named, cut, scale, lengths)
    args = [a.contiguous() if a is not None else None for a in named.values()]
    return _LSTMLayer.apply(*args, cut, scale, lengths)


def _scorer_views(scorer, att_wh, att_wm):
    """W_h, W_m as [A, H] matrices: the linear scorer is the case A = 1 (its att_b is folded into q)."""
    if scorer == "mlp":
        return att_wh, att_wm
    if scorer == "linear":
        return att_wh.reshape(1, -1), att_wm.reshape(1, -1)
    raise ValueError(f"scorer must be 'mlp' or 'linear', got {scorer!r}")


class _Slots:
    """Where the slots of one call sit in its memory mem [S, B, H] (docs/SPEC.md sections 8-9), as the
    kernels read them: per step t and row b, the window of slots the row scores, lo[t, b] <= j < hi[t, b],
    and the slot it writes at the end of the step, wr[t, b] (-1: none); [T, B] int32 tensors on the device.
    Per step, on the host: the bounds s_lo[t] <= every lo, s_hi[t] >= every hi (the kernels' slot loops),
    whether any row writes (write_any) and whether any row is reset (reset_any).

    A plain call: every row alike, lo = 0, hi = the carried slots S0 and those written before t (a slot is
    written after t when (step0 + t + 1) % k_att == 0), computed on the host. Per row (reset / slot_offset /
    row_step0; docs/CONTRACT.md "Per-row resets"): each row's table is its S0 carried entries (left-padded,
    its own from slot_offset[b]), then the slots the call appends in time order, at a reset step the fresh
    slot (zeros, never written: mem and key start at zero there) before the step's written slot; the window
    starts at the row's last fresh slot (or slot_offset[b]) and ends before the step's own write. The tables
    come from reset_plan's write flags in a few vectorised ops; their per-step bounds cost one sync.
    `reset` is the [T, B] bool mask (None on the plain path), S = S0 + S1 the table size (S1: the most slots
    one row appends)."""

    def __init__(self, T, B, k_att, S0, step0, device, reset=None, slot_offset=None, row_step0=None):
        self.S0 = S0
        self.rows = per_row(reset, slot_offset, row_step0)
        i32 = dict(dtype=torch.int32, device=device)
        if not self.rows:
            before = [S0 + (step0 + t) // k_att - step0 // k_att for t in range(T)]
            written = [before[t] if (step0 + t + 1) % k_att == 0 else -1 for t in range(T)]
            self.S = S0 + (step0 + T) // k_att - step0 // k_att
            self.reset = None
            self.lo = torch.zeros(T, B, **i32)
            self.hi = torch.tensor(before, **i32).unsqueeze(1).expand(T, B).contiguous()
            self.wr = torch.tensor(written, **i32).unsqueeze(1).expand(T, B).contiguous()
            self.s_lo, self.s_hi = [0] * T, before
            self.write_any, self.reset_any = [w >= 0 for w in written], [False] * T
            return
        plan = reset_plan(T, B, k_att, device, S0=S0, step0=step0, reset=reset, slot_offset=slot_offset,
                          row_step0=row_step0)
        reset = torch.zeros(T, B, dtype=torch.bool, device=device) if reset is None else reset
        offset = torch.zeros(B, dtype=torch.int64, device=device) if slot_offset is None else slot_offset
        # per step two events, the fresh slot (reset) then the written one: their running count
        events = torch.stack([reset, plan.writes], 1).reshape(2 * T, B).to(torch.int64).cumsum(0)
        hi = S0 + events[0::2]                                 # entries before the step's own write
        wr = torch.where(plan.writes, S0 + events[1::2] - 1, -1)
        fresh = torch.where(reset, hi - 1, -1).cummax(0).values   # the row's last fresh slot so far
        lo = torch.where(fresh >= 0, fresh, offset.unsqueeze(0))
        self.S = S0 + (int(plan.appended.max()) if B > 0 else 0)
        self.reset = reset
        self.lo, self.hi, self.wr = (v.to(torch.int32).contiguous() for v in (lo, hi, wr))
        if B > 0:
            bounds = torch.stack([lo.min(1).values, hi.max(1).values, (wr >= 0).any(1).to(torch.int64),
                                  reset.any(1).to(torch.int64)]).tolist()
        else:
            bounds = [[0] * T, [S0] * T, [0] * T, [0] * T]
        self.s_lo, self.s_hi = bounds[0], bounds[1]
        self.write_any, self.reset_any = [bool(v) for v in bounds[2]], [bool(v) for v in bounds[3]]

    def reset_rows(self, t):
        """[B, 1] bool: the rows reset before step t (whose h_{t-1}, c_{t-1} read as constant zeros)."""
        return self.reset[t].unsqueeze(1)


class _SABLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, memory, cut, scale, lengths,
                k_top, k_att, scorer, provisional, step0, reset, slot_offset, row_step0):
        kern = _kernels()
        T, B, _ = x.shape
        H = h0.shape[1]
        wh, wm = _scorer_views(scorer, att_wh, att_wm)
        A = wh.shape[0]
        slots = _Slots(T, B, k_att, 1 if memory is None else memory.shape[1], step0, x.device, reset, slot_offset,
                       row_step0)
        S0, S = slots.S0, slots.S
        cfg = _Cfg(x, B, H, A)
        xg = _input_projection(x, w_ih, b_ih, b_hh)
        gates, cs = x.new_empty(T, B, 4 * H), x.new_empty(T, B, H)
        hhat, y = x.new_empty(T, B, H), x.new_empty(T, B, H)
        mem, key = x.new_empty(S, B, H), x.new_empty(S, B, A)
        mem[:S0] = h0.unsqueeze(0) if memory is None else memory.transpose(0, 1)
        if slots.rows:   # fresh slots are zeros (key 0) and never written; a row's padding on the right too
            mem[S0:] = 0
            key[S0:] = 0
        # the carried slots' keys, recomputed at each call (W_m may have changed since they were written)
        key[:S0] = mem[:S0] @ wm.t()
        acc = _grad_dtype(x.dtype)   # scores and the normaliser (float32 for bfloat16 inputs)
        q, score = x.new_empty(T, B, A), x.new_empty(B, S, dtype=acc)
        idx = torch.empty(T, B, k_top, dtype=torch.int64, device=x.device)
        w = x.new_empty(T, B, k_top, dtype=acc)
        thr = torch.empty(T, B, dtype=torch.int32, device=x.device)
        z = x.new_empty(T, B, dtype=acc)
        k_pad = max(2, 1 << (k_top - 1).bit_length())
        lk, ak = kern.lstm_step, kern.sparse_attention
        h, c = h0, c0
        # slot blocks: small in the scores kernel (a [BLOCK_B, BLOCK_S, BLOCK_A] tile, many CTAs), large in
        # the selection, whose 2K+3 passes over the scores are sequential loops over the blocks
        bs, bs_sel = kern.row_block(S, 16), kern.row_block(S, 128)
        for t in range(T):
            if slots.reset_any[t]:   # rows reset before step t start from zeros
                h, c = h.masked_fill(slots.reset_rows(t), 0), c.masked_fill(slots.reset_rows(t), 0)
            s_lo, s_hi = slots.s_lo[t], slots.s_hi[t]   # the kernels see each row's window within [s_lo, s_hi)
            lk.lstm_fwd_step_kernel[cfg.grid_bh](xg[t], h, c, w_hh, gates[t], cs[t], hhat[t], B, H,
                                                 **cfg.common())
            ak.sab_scores_kernel[(cfg.grid_b[0], _cdiv(s_hi - s_lo, bs))](
                hhat[t], key, wh, att_vb, q[t], score, slots.lo[t], slots.hi[t], s_lo, s_hi, B, H, A, S,
                MLP=scorer == "mlp", ACC=cfg.acc, BLOCK_B=cfg.bb, BLOCK_S=bs, BLOCK_A=cfg.ba, BLOCK_K=cfg.bk,
                DOT_PREC=cfg.prec)
            ak.sab_attention_fwd_kernel[cfg.grid_b](
                hhat[t], y[t], mem, key, wm, score, idx[t], w[t], thr[t], z[t], slots.lo[t], slots.hi[t],
                slots.wr[t], s_lo, s_hi, int(slots.write_any[t]), B, H, A, S, K_TOP=k_top, K_PAD=k_pad,
                PROVISIONAL=provisional, BLOCK_A=cfg.ba, BLOCK_S=bs_sel, **cfg.common())
            h, c = y[t], cs[t]
        h_n, c_n = _stop_at_lengths(y, cs, h0, c0, lengths)
        if lengths is not None:   # the record past each row's length; the backward reads it masked too
            past = _past_lengths(T, lengths).unsqueeze(2)
            idx.masked_fill_(past, -1)
            w.masked_fill_(past, 0)
        # a copy, not a view of mem: the caller may change it in place, mem is saved for the backward
        new_slots = mem[S0:].transpose(0, 1).clone(memory_format=torch.contiguous_format)
        ctx.save_for_backward(x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, memory, gates, cs, hhat, y, mem,
                              key, q, idx, w, thr, z, b_ih, b_hh, lengths)
        ctx.schedule = (cut, scale)
        ctx.has_bias = b_ih is not None
        ctx.sab = (k_top, k_att, scorer, provisional, k_pad, step0)
        ctx.rows = (reset, slot_offset, row_step0)
        ctx.slots = slots   # the tables (a few [T, B] int32 tensors, none of them an input or output)
        weights = w.to(x.dtype)
        ctx.mark_non_differentiable(idx, weights)
        return y, h_n, c_n, new_slots, idx, weights

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, dslots, _didx, _dw):
        (x, w_ih, w_hh, att_wh, att_wm, att_vb, h0, c0, memory, gates, cs, hhat, y, mem, key,
         q, idx, w, thr, z, b_ih, b_hh, lengths) = ctx.saved_tensors
        k_top, k_att, scorer, provisional, k_pad, step0 = ctx.sab
        reset, slot_offset, row_step0 = ctx.rows
        rows = per_row(reset, slot_offset, row_step0)
        if glue.wants_graph():   # create_graph=True: the kernels' sweep is not differentiable
            # new_slots is a result of the reference only where it may be carried on (no lengths)
            output_grads = (dy, dh_n, dc_n) if lengths is not None else (dy, dh_n, dc_n, dslots)
            grads = glue.differentiable_backward(
                _reference_sab_layer,
                (x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, memory, *ctx.schedule),
                ctx.needs_input_grad, output_grads,
                k_top=k_top, k_att=k_att, scorer=scorer, provisional=provisional, lengths=lengths,
                step0=step0, return_slots=lengths is None,
                **(dict(reset=reset, slot_offset=slot_offset, row_step0=row_step0) if rows else {}))
            return (*grads, None, None, None, None, None, None, None, None, None)
        kern = _kernels()
        T, B, _ = x.shape
        H = h0.shape[1]
        wh, wm = _scorer_views(scorer, att_wh, att_wm)
        A = wh.shape[0]
        slots = ctx.slots
        S0 = slots.S0
        cfg = _Cfg(x, B, H, A)
        g = _grad_dtype(x.dtype)   # gradient buffers
        final = _FinalGrads(lengths, dh_n, dc_n, g)
        dy, dc, dc_next, dgates = final.sweep_buffers(y, dy, c0, gates)
        gm, dkey = torch.zeros_like(mem, dtype=g), torch.zeros_like(key, dtype=g)   # per-slot gradients
        # gradient reaching the new slots from later calls: the sweep adds it where each slot was written
        gm[S0:] = dslots.transpose(0, 1)
        dv = torch.zeros(B, A, dtype=g, device=x.device)
        dq = torch.empty_like(q, dtype=g)
        rec, gh = torch.empty_like(h0, dtype=g), torch.empty_like(h0, dtype=g)
        f, flows = _schedule(*ctx.schedule, g)
        row_schedule = f.dim() == 2   # one schedule per row: the kernels read row b's factor f[t, b]
        lk, bk = kern.lstm_step, kern.sparse_attention_bwd
        for t in range(T - 1, -1, -1):
            has_rec = t + 1 < T and flows[t + 1]
            if has_rec:
                lk.recurrent_grad_kernel[cfg.grid_bh](dgates[t + 1], w_hh, rec, f[t + 1], B, H,
                                                      ROW_SCHEDULE=row_schedule, **cfg.common())
                if slots.reset_any[t + 1]:   # step t+1 of those rows read zeros, not h_t
                    rec.masked_fill_(slots.reset_rows(t + 1), 0)
            bk.sab_attention_bwd_kernel[cfg.grid_b](
                dy[t], rec, mem, key, wh, wm, att_vb, q[t], idx[t], w[t], thr[t], z[t], gm, dkey, dv, gh, dq[t],
                slots.wr[t], int(slots.write_any[t]), B, H, A,
                HAS_REC=has_rec, K_TOP=k_top, K_PAD=k_pad, MLP=scorer == "mlp", PROVISIONAL=provisional,
                BLOCK_A=cfg.ba, **cfg.common())
            final.enter(t, dc)
            c_in = cs[t - 1] if t > 0 else c0
            if slots.reset_any[t]:   # rows reset before step t read c_{t-1} as a constant zero
                c_in = c_in.masked_fill(slots.reset_rows(t), 0)
            lk.lstm_bwd_step_kernel[cfg.grid_bh](
                dgates[t], w_hh, f[t], gh, dc, gates[t], cs[t], c_in, dgates[t], dc_next,
                f[t], B, H, HAS_REC=False, ROW_SCHEDULE=row_schedule, **cfg.common())
            if slots.reset_any[t]:   # ... and pass no gradient into it
                dc_next.masked_fill_(slots.reset_rows(t), 0)
            dc, dc_next = dc_next, dc
        # the carried slots' whole gradient (direct uses and uses as keys), complete after the sweep
        carried = gm[:S0] + dkey[:S0] @ wm.to(g)
        dh0 = _scaled(f[0], dgates[0] @ w_hh.to(g))
        if memory is None:   # h0 is slot 0 as well as the recurrent input of step 0
            dh0 += carried[0]
            dmemory = None
        else:
            dmemory = carried.transpose(0, 1).to(x.dtype)
        if slots.reset_any[0]:   # rows reset at step 0 never read h0, c0
            dh0.masked_fill_(slots.reset_rows(0), 0)
        final.finish(dh0, dc)
        h_in = torch.cat([h0.unsqueeze(0), y[:-1]])
        if any(slots.reset_any):   # the recurrent input of a reset step is zero
            h_in.masked_fill_(slots.reset.unsqueeze(2), 0)
        dx, dw_ih, dw_hh, db = _weight_grads(ctx, dgates, x, w_ih, h_in)
        d_wh = dq.reshape(T * B, A).t() @ hhat.reshape(T * B, H).to(g)
        d_wm = dkey.flatten(0, 1).t() @ mem.flatten(0, 1).to(g)   # flatten: reshape(-1, A) fails at B = 0
        if scorer == "mlp":
            d_vb = dv.sum(0)
        else:
            d_wh, d_wm, d_vb = d_wh.reshape(H), d_wm.reshape(H), dq.sum().reshape(1)
        d_wh, d_wm, d_vb, dh0, dc = (v.to(x.dtype) for v in (d_wh, d_wm, d_vb, dh0, dc))
        return (dx, dw_ih, dw_hh, *glue.bias_grads(db, ctx.has_bias), d_wh, d_wm, d_vb, dh0, dc, dmemory,
                None, None, None, None, None, None, None, None, None, None, None)


def _reference_sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, memory, cut, scale, **config):
    """reference.sab_layer with `memory` positional, where _SABLayer has it (after c0), so that the
    differentiable backward (glue.py) differentiates with respect to it like the other inputs."""
    from .. import reference
    return reference.sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale,
                               memory=memory, **config)


def _check_sab(k_top, k_att, scorer):
    if not isinstance(k_top, int) or k_top < 1:
        raise ValueError(f"k_top must be an int >= 1, got {k_top!r}")
    if not isinstance(k_att, int) or k_att < 1:
        raise ValueError(f"k_att must be an int >= 1, got {k_att!r}")
    if scorer not in ("mlp", "linear"):
        raise ValueError(f"scorer must be 'mlp' or 'linear', got {scorer!r}")


def sab_layer(x, w_ih, w_hh, b_ih, b_hh, att_wh, att_wm, att_vb, h0, c0, cut, scale, *,
              k_top: int, k_att: int, scorer: str, provisional: bool, need_attention: bool = False,
              lengths=None, memory=None, step0: int = 0, return_slots: bool = False, reset=None, slot_offset=None,
              row_step0=None):
    """One SAB-LSTM layer (docs/CONTRACT.md): 3 launches per step forward, 3 per step backward.
    Rows stop at `lengths` (None, or int64 [B] on x's device, each in [0, T]). Streaming (docs/SPEC.md
    section 8): `memory` [B, S0, H] replaces [h0] as the initial memory, `step0` is the global index of the
    first step, and `return_slots` adds a fifth result, the slots this call wrote [B, S1, H].
    Per-row resets (docs/SPEC.md section 9, docs/CONTRACT.md "Per-row resets"): `reset` [T, B] bool,
    `slot_offset` / `row_step0` [B] int64; the kernels then read each row's window and written slot from the
    tables of _Slots, and a reset row's h, c read as zeros; new_slots holds each row's appended slots
    (zero-padded on the right) and the record's indices index each row's table.
    `cut` / `scale`: [T], or [T, B] (row b truncated by column b, SPEC section 3 per row)."""
    _check_sab(k_top, k_att, scorer)
    named = dict(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, att_wh=att_wh, att_wm=att_wm, att_vb=att_vb,
                 h0=h0, c0=c0)
    _check_tensors(named, cut, scale, lengths, row_schedule=True)
    step0 = check_stream(memory, step0, lengths, return_slots, h0)
    rows = per_row(reset, slot_offset, row_step0)
    if rows:
        check_rows(x, memory, step0, lengths, reset, slot_offset, row_step0)
        reset, slot_offset, row_step0 = (None if t is None else t.contiguous() for t in (reset, slot_offset, row_step0))
    args = [a.contiguous() if a is not None else None for a in named.values()]
    y, h_n, c_n, new_slots, idx, w = _SABLayer.apply(*args, memory, cut, scale, lengths, k_top, k_att, scorer,
                                                     bool(provisional), step0, reset, slot_offset, row_step0)
    attention = None
    if need_attention and rows:
        S0 = 1 if memory is None else memory.shape[1]
        plan = reset_plan(x.shape[0], x.shape[1], k_att, x.device, S0=S0, step0=step0, reset=reset,
                          slot_offset=slot_offset, row_step0=row_step0)
        steps = torch.cat([carried_row_steps(x.shape[1], k_att, x.device, memory=memory, slot_offset=slot_offset),
                           plan.new_steps], dim=1)
        attention = SABAttention(idx, w, steps)
    elif need_attention:
        S0 = 1 if memory is None else memory.shape[1]
        attention = SABAttention(idx, w, slot_steps(x.shape[0], k_att, x.device, S0=S0, step0=step0))
    if return_slots:
        return y, h_n, c_n, attention, new_slots
    return y, h_n, c_n, attention

