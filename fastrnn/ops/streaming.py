"""Streaming a SAB layer across calls (docs/SPEC.md section 8): the argument checks every backend shares."""


def check_stream(memory, step0, lengths, return_slots, h0) -> None:
    """The streaming arguments of a SAB layer, checked the same way by every backend (ValueError)."""
    if not isinstance(step0, int) or isinstance(step0, bool) or step0 < 0:
        raise ValueError(f"step0 must be an int >= 0, got {step0!r}")
    if memory is not None:
        B, H = h0.shape
        if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != H or memory.shape[1] < 1:
            raise ValueError(f"memory must be [B, S0, H] = [{B}, S0 >= 1, {H}], got {list(memory.shape)}")
        if memory.dtype != h0.dtype or memory.device != h0.device:
            raise ValueError(f"memory must have h0's dtype and device ({h0.dtype}, {h0.device}), "
                             f"got {memory.dtype}, {memory.device}")
    if lengths is not None and (memory is not None or return_slots):
        raise ValueError("lengths cannot be combined with streaming (memory / return_slots): slots written "
                         "past a row's length would be carried into the next call")
