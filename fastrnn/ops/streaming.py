"""Streaming a SAB layer across calls (docs/SPEC.md section 8) and per-row resets (section 9): the argument
checks and the slot bookkeeping every backend shares."""
import operator
from typing import NamedTuple

import torch
from torch import Tensor

# The largest global step a stream may reach (exclusive): the kernels add the local step to step0 in int64.
MAX_STEP = 2 ** 62


def check_step(name: str, value) -> int:
    """A global step counter (`step0`, `SABState.step`) as an int in [0, MAX_STEP): TypeError unless it is
    an integer (numpy integers are; bool, float, a tensor and None are not), ValueError outside the range."""
    wrong = isinstance(value, (bool, torch.Tensor)) or value is None
    if not wrong and not isinstance(value, (int, torch.SymInt)):
        try:
            value = operator.index(value)
        except TypeError:
            wrong = True
    if wrong:
        raise TypeError(f"{name} must be an int >= 0 (the global index of the next step), got "
                        f"{type(value).__name__} {value!r}")
    if value < 0 or value >= MAX_STEP:
        raise ValueError(f"{name} must be an int >= 0 and < 2**62 (the global index of the next step), "
                         f"got {value!r}")
    return value


def check_stream(memory, step0, lengths, return_slots, h0) -> int:
    """The streaming arguments of a SAB layer, checked the same way by every backend: TypeError for a
    step0 or memory of the wrong type, ValueError for a wrong value or shape. Returns step0 as an int."""
    step0 = check_step("step0", step0)
    if memory is not None:
        if not isinstance(memory, torch.Tensor):
            raise TypeError(f"memory must be None or a tensor [B, S0, H], got {type(memory).__name__}")
        if not isinstance(h0, torch.Tensor) or h0.dim() != 2:
            raise ValueError(f"h0 must be [B, H] (with memory [B, S0, H]), got shape "
                             f"{tuple(getattr(h0, 'shape', ()))}")
        B, H = h0.shape
        if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != H or memory.shape[1] < 1:
            raise ValueError(f"memory must be [B, S0, H] = [{B}, S0 >= 1, {H}], got {list(memory.shape)}")
        if memory.dtype != h0.dtype or memory.device != h0.device:
            raise ValueError(f"memory must have h0's dtype and device ({h0.dtype}, {h0.device}), "
                             f"got {memory.dtype}, {memory.device}")
    if lengths is not None and (memory is not None or return_slots):
        raise ValueError("lengths cannot be combined with streaming (memory / return_slots): slots written "
                         "past a row's length would be carried into the next call")
    return step0


def check_schedule(cut, scale, T, B, *, per_row: bool, dtype: torch.dtype) -> None:
    """A layer's truncation schedule (docs/SPEC.md section 3): `cut` bool and `scale` in x's `dtype` (as the
    cpu and CUDA ops require), both [T], or with `per_row` (the SAB layers) both [T, B], one schedule per
    batch row. TypeError for a dtype, ValueError for a shape, each naming the argument."""
    if not isinstance(cut, torch.Tensor) or cut.dtype != torch.bool:
        raise TypeError(f"cut must be a torch.bool tensor, got {getattr(cut, 'dtype', type(cut).__name__)}")
    # (a non-floating x is refused by the x check, in the words that name x)
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or (
            dtype.is_floating_point and scale.dtype != dtype):
        raise TypeError(f"scale must be a {dtype} tensor (the dtype of x), got "
                        f"{getattr(scale, 'dtype', type(scale).__name__)}")
    if not (tuple(cut.shape) == (T,) or (per_row and tuple(cut.shape) == (T, B))):
        rows = f" (or [T, B] = {[T, B]}, one schedule per row)" if per_row else ""
        raise ValueError(f"cut must have shape [T] = {[T]}{rows}, got {list(cut.shape)}")
    if scale.shape != cut.shape:
        dims = "[T]" if cut.dim() == 1 else "[T, B]"
        raise ValueError(f"scale must have shape {dims} = {list(cut.shape)}, got {list(scale.shape)} (the shape "
                         f"of cut)")


# ---- per-row resets (docs/SPEC.md section 9, docs/CONTRACT.md "Per-row resets") ----------------------------

# slot_steps of a padding entry of a per-row slot table (a real slot's step is >= -1).
PAD_STEP = -2


def per_row(reset, slot_offset, row_step0) -> bool:
    """Whether a SAB layer call runs with per-row slot tables (any of the three per-row arguments given)."""
    return reset is not None or slot_offset is not None or row_step0 is not None


def check_rows(x, memory, step0, lengths, reset, slot_offset, row_step0) -> None:
    """The per-row arguments of a SAB layer, checked the same way by every backend (ValueError naming them)."""
    T, B = x.shape[0], x.shape[1]
    if lengths is not None:
        raise ValueError("reset / slot_offset / row_step0 cannot be combined with lengths")
    if reset is not None:
        if reset.dtype != torch.bool or tuple(reset.shape) != (T, B) or reset.device != x.device:
            raise ValueError(f"reset must be a torch.bool [T, B] = [{T}, {B}] tensor on {x.device}, got "
                             f"{reset.dtype} {tuple(reset.shape)} on {reset.device}")
    for name, t in (("slot_offset", slot_offset), ("row_step0", row_step0)):
        if t is not None and (t.dtype != torch.int64 or tuple(t.shape) != (B,) or t.device != x.device):
            raise ValueError(f"{name} must be an int64 [B] = [{B}] tensor on {x.device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    if slot_offset is not None:
        S0 = 1 if memory is None else memory.shape[1]
        if memory is None and bool((slot_offset != 0).any()):
            raise ValueError("slot_offset must be 0 without memory (a fresh call's memory is [h0])")
        if B > 0 and not bool(((slot_offset >= 0) & (slot_offset < S0)).all()):
            raise ValueError(f"slot_offset must lie in [0, S0) = [0, {S0}) (each row keeps at least one slot), "
                             f"got {slot_offset.tolist()}")
    if row_step0 is not None and B > 0 and not bool(((row_step0 >= 0) & (row_step0 < MAX_STEP - T)).all()):
        raise ValueError(f"row_step0 must be >= 0 and < 2**62 - T (T = {T}: the counters after the call stay "
                         f"below 2**62, as step0), got {row_step0.tolist()}")


class ResetPlan(NamedTuple):
    """The slot bookkeeping of a per-row call (docs/CONTRACT.md "Per-row resets"), [T, B] / [B] int64.

    counter:  [T, B] the row's step counter at step t (0 at a reset step; row_step0[b] + t before any reset).
    writes:   [T, B] bool, step t writes a slot ((counter + 1) % k_att == 0).
    appended: [B] the slots the call appends to row b's table (a fresh slot per reset, one per write).
    new_steps:[B, S1] the global step (step0 numbering) of each appended slot, PAD_STEP padding (S1 = max
              appended): a written slot holds step0 + t, a reset's fresh slot step0 + t - 1 (the state
              before step t, as h0 is the state before step 0).
    base:     [B] the table index of the first slot of the row's last piece (its last reset's fresh slot, or
              slot_offset[b] when the row had no reset in the call).
    counter_end: [B] the row's step counter after the call.
    """

    counter: Tensor
    writes: Tensor
    appended: Tensor
    new_steps: Tensor
    base: Tensor
    counter_end: Tensor


def reset_plan(T, B, k_att, device, *, S0=1, step0=0, reset=None, slot_offset=None, row_step0=None) -> ResetPlan:
    """ResetPlan of a call of T steps over B rows (vectorised; shared by the module and every backend)."""
    t = torch.arange(T, device=device, dtype=torch.int64).unsqueeze(1).expand(T, B)
    start = torch.full((B,), step0, dtype=torch.int64, device=device) if row_step0 is None else row_step0
    offset = torch.zeros(B, dtype=torch.int64, device=device) if slot_offset is None else slot_offset
    if reset is None:
        reset = torch.zeros(T, B, dtype=torch.bool, device=device)
    last = torch.where(reset, t, torch.full_like(t, -1))
    if T > 0:
        last = last.cummax(0).values
    counter = torch.where(last >= 0, t - last, start.unsqueeze(0) + t)
    writes = (counter + 1) % k_att == 0
    flags = torch.stack([reset, writes], 1).reshape(2 * T, B)            # per step: the fresh slot, then the write
    ev_steps = torch.stack([step0 + t - 1, step0 + t], 1).reshape(2 * T, B)
    is_fresh = torch.stack([torch.ones_like(reset), torch.zeros_like(reset)], 1).reshape(2 * T, B)
    appended = flags.sum(0)
    S1 = int(appended.max()) if B > 0 and T > 0 else 0
    order = torch.sort((~flags).to(torch.uint8), dim=0, stable=True).indices[:S1]      # [S1, B]
    pos = torch.arange(S1, device=device, dtype=torch.int64).unsqueeze(1)
    new_steps = torch.where(pos < appended.unsqueeze(0), ev_steps.gather(0, order),
                            torch.full_like(order, PAD_STEP)).t().contiguous()
    rank = flags.to(torch.int64).cumsum(0) - 1                           # index among the appended slots
    fresh_at = torch.where(flags & is_fresh, rank, torch.full_like(rank, -1))
    last_fresh = fresh_at.max(0).values if T > 0 else torch.full((B,), -1, dtype=torch.int64, device=device)
    base = torch.where(last_fresh >= 0, S0 + last_fresh, offset)
    counter_end = counter[-1] + 1 if T > 0 else start.clone()
    return ResetPlan(counter, writes, appended, new_steps, base, counter_end)


def carried_row_steps(B, k_att, device, *, memory=None, slot_offset=None) -> Tensor:
    """[B, S0] int64: the steps of a per-row call's carried slots as the layer functions number them: -1 for a
    fresh call's h0; with memory, row b's valid slot i (from slot_offset[b]) at i * k_att - 1, as a stream that
    kept every slot; PAD_STEP for padding. The module replaces them with its state's true steps."""
    if memory is None:
        return torch.full((B, 1), -1, dtype=torch.int64, device=device)
    S0 = memory.shape[1]
    offset = torch.zeros(B, dtype=torch.int64, device=device) if slot_offset is None else slot_offset
    i = torch.arange(S0, device=device, dtype=torch.int64).unsqueeze(0) - offset.unsqueeze(1)
    return torch.where(i >= 0, i * k_att - 1, torch.full_like(i, PAD_STEP))
