"""Streaming a SAB layer across calls (docs/SPEC.md section 8): the argument checks every backend shares."""
import operator

import torch

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
