"""`SABState`: what a `fastrnn.SABLSTM` carries from one call to the next (docs/SPEC.md section 8).

A long or unbounded sequence can be fed to a SABLSTM in chunks. Each layer of a SAB-LSTM carries its last
states (h, c), its whole memory M (every slot written so far, or the newest `max_slots` of them) and the
global steps of those slots; the model carries the global index of its next step. With the state kept
attached to the graph, chunked calls give the one-shot forward's outputs and gradients (SAB paper,
section 3: the memory holds every past microstate); detached (`SABState.detach()`), no gradient reaches
earlier chunks: online truncation.

    y1, hx, state = sab(x[:50], return_state=True)
    y2, hx, state = sab(x[50:], state=state, return_state=True)     # == sab(x) split at step 50
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .ops.streaming import MAX_STEP, check_step

__all__ = ["SABLayerState", "SABState"]


class SABLayerState(NamedTuple):
    """The state one SAB-LSTM layer carries (B rows, H hidden units, S slots; no B dimension for a state of
    unbatched input: h, c [H], memory [S, H]).

    h:          [B, H], the last final state h_{t-1} (the next call's h0).
    c:          [B, H], the last cell state c_{t-1}.
    memory:     [B, S, H], the memory M, oldest slot first (slot 0 is the first call's h0 until dropped).
    slot_steps: [S] int64, the global step whose state each slot holds (-1 for the first call's h0).
                Per row (a stream with resets, docs/SPEC.md section 9): [B, S], each row's own slots of its
                current piece, right-aligned; memory[b, j] is padding (zeros) where slot_steps[b, j] == -2.
    """

    h: Tensor
    c: Tensor
    memory: Tensor
    slot_steps: Tensor


class SABState:
    """The streaming state of a `fastrnn.SABLSTM` (docs/SPEC.md section 8): what `forward(...,
    return_state=True)` returns as its last result and `forward(..., state=)` continues from.

    layers: one `SABLayerState(h, c, memory, slot_steps)` per layer (h, c [B, H]; memory [B, S, H];
        slot_steps [S] int64; every layer holds the same S and slot_steps). Unbatched input ([T, I])
        gives a state without the B dimension (h, c [H], memory [S, H]).
    step: the global index of the next step (the number of steps the stream has run), an int >= 0.
    row_steps: None, or (a per-row stream: one that has seen `reset=`, docs/SPEC.md section 9) int64 [B]
        ([] for unbatched input): each row's own step counter, which a reset restarts at 0. Such a state's
        slot_steps are [B, S] for batched input (each row's slots, left-padded: -2 marks padding).

    The floating tensors share one dtype and device; slot_steps is on the same device. The tensors keep their
    autograd graph as the module returned them: gradient from a later call then flows into the calls that
    made the state (full backpropagation through the stream, memory of every call included).
    `detach()` cuts it (online truncation). Memory grows by one slot every k_att steps unless the model
    has `max_slots` (then the carried memory keeps the newest max_slots slots, a change of the model:
    SPEC section 8).

    torch.save / torch.load (weights_only=True too: the two classes are registered as safe globals) and
    copy.deepcopy work on a detached state (deepcopy of a state with a graph fails, as for any non-leaf
    tensor). Errors: TypeError for layers that are not SABLayerStates / 4-tuples of tensors or a step that
    is not an integer (an int, a numpy integer or a 0-dim integer tensor); ValueError for empty layers, a
    step < 0 or >= 2**62, shapes, dtypes and devices that do not fit together, or layers whose slot_steps
    differ.
    """

    __slots__ = ("layers", "step", "row_steps")

    def __init__(self, layers: Sequence[SABLayerState], step: int, row_steps: Optional[Tensor] = None):
        if isinstance(layers, (SABLayerState, Tensor)) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list or tuple of SABLayerState (one per layer), got "
                            f"{type(layers).__name__}")
        if isinstance(step, Tensor) and step.dim() == 0 and not (step.is_floating_point() or step.dtype == torch.bool):
            step = int(step)
        step = check_step("step", step)            # numpy integers too; TypeError, ValueError (< 0, >= 2**62)
        if not layers:
            raise ValueError("layers must hold one SABLayerState per layer, got none")
        checked = []
        for k, layer in enumerate(layers):
            if not isinstance(layer, tuple) or len(layer) != 4 or not all(isinstance(t, Tensor) for t in layer):
                raise TypeError(f"layers[{k}] must be a SABLayerState(h, c, memory, slot_steps) of tensors, "
                                f"got {type(layer).__name__}")
            checked.append(_check_layer(k, SABLayerState(*layer)))
        first = checked[0]
        for k, layer in enumerate(checked[1:], 1):
            for what, a, b in (("h shape", layer.h.shape, first.h.shape),
                               ("memory shape", layer.memory.shape, first.memory.shape),
                               ("dtype", layer.h.dtype, first.h.dtype),
                               ("device", layer.h.device, first.h.device)):
                if a != b:
                    raise ValueError(f"layers[{k}] and layers[0] differ in {what}: {a} vs {b}")
            if (layer.slot_steps is not first.slot_steps and not torch.compiler.is_compiling()
                    and not layer.slot_steps.is_meta and not torch.equal(layer.slot_steps, first.slot_steps)):
                raise ValueError(f"layers[{k}] and layers[0] differ in slot_steps: {layer.slot_steps.tolist()} vs "
                                 f"{first.slot_steps.tolist()} (every layer holds the slots of the same steps)")
        if row_steps is not None:
            want = tuple(first.h.shape[:-1])
            if not isinstance(row_steps, Tensor) or row_steps.dtype != torch.int64 or tuple(row_steps.shape) != want:
                raise ValueError(f"row_steps must be an int64 tensor of shape {list(want)} (one step counter per "
                                 f"row), got {row_steps!r}")
            if row_steps.device != first.h.device:
                raise ValueError(f"row_steps must be on the state's device {first.h.device}, got {row_steps.device}")
            if row_steps.numel() and bool(((row_steps < 0) | (row_steps >= MAX_STEP)).any()):
                raise ValueError(f"row_steps must be >= 0 and < 2**62, got {row_steps.tolist()}")
        elif any(layer.slot_steps.dim() == 2 for layer in checked):
            raise ValueError("per-row slot_steps [B, S] need row_steps (the per-row step counters)")
        self.layers: Tuple[SABLayerState, ...] = tuple(checked)
        self.step: int = step
        self.row_steps: Optional[Tensor] = row_steps

    # ---- what it holds ---------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def batched(self) -> bool:
        """False for the state of unbatched input (h [H])."""
        return self.layers[0].h.dim() == 2

    @property
    def batch_size(self) -> Optional[int]:
        """B, or None for the state of unbatched input."""
        return self.layers[0].h.shape[0] if self.batched else None

    @property
    def hidden_size(self) -> int:
        return self.layers[0].h.shape[-1]

    @property
    def num_slots(self) -> int:
        """S, the number of memory slots each layer holds (per row: padding included)."""
        return self.layers[0].slot_steps.shape[-1]

    @property
    def slot_steps(self) -> Tensor:
        """[S] int64 ([B, S] per row): the global step of each slot (every layer's)."""
        return self.layers[0].slot_steps

    @property
    def per_row(self) -> bool:
        """Whether this is the state of a per-row stream (one that has seen resets: row_steps is set)."""
        return self.row_steps is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].h.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].h.device

    @property
    def h(self) -> Tensor:
        """[L, B, H] ([L, H] unbatched): every layer's h, as the module's h_n."""
        return torch.stack([layer.h for layer in self.layers])

    @property
    def c(self) -> Tensor:
        """[L, B, H] ([L, H] unbatched): every layer's c, as the module's c_n."""
        return torch.stack([layer.c for layer in self.layers])

    # ---- copies ----------------------------------------------------------------------------------

    def detach(self) -> "SABState":
        """A copy with every tensor detached (the values shared, no graph): no gradient from a later call
        reaches the calls that made this state, neither along (h, c) nor through the memory."""
        return SABState([SABLayerState(*(t.detach() for t in layer)) for layer in self.layers], self.step,
                        self.row_steps)

    @property
    def requires_grad(self) -> bool:
        """Whether any tensor of the state carries a graph (or is a leaf that requires grad)."""
        return any(t.requires_grad for layer in self.layers for t in layer)

    def __reduce__(self):
        return SABState, (list(self.layers), self.step, self.row_steps)

    def __repr__(self) -> str:
        b = f"batch_size={self.batch_size}, " if self.batched else "unbatched, "
        return (f"SABState(num_layers={self.num_layers}, {b}hidden_size={self.hidden_size}, "
                f"num_slots={self.num_slots}, step={self.step}, "
                f"{'per_row=True, ' if self.per_row else ''}dtype={self.dtype}, device={self.device}, "
                f"requires_grad={self.requires_grad})")


def _check_layer(k: int, layer: SABLayerState) -> SABLayerState:
    h, c, memory, steps = layer
    if h.dim() not in (1, 2):
        raise ValueError(f"layers[{k}].h must be [B, H] (or [H] unbatched), got shape {tuple(h.shape)}")
    if c.shape != h.shape:
        raise ValueError(f"layers[{k}].c must have h's shape {tuple(h.shape)}, got {tuple(c.shape)}")
    want = "[B, S, H]" if h.dim() == 2 else "[S, H]"
    if (memory.dim() != h.dim() + 1 or memory.shape[:-2] != h.shape[:-1] or memory.shape[-1] != h.shape[-1]
            or memory.shape[-2] < 1):
        raise ValueError(f"layers[{k}].memory must be {want} with S >= 1 and h's B and H "
                         f"({tuple(h.shape)}), got {tuple(memory.shape)}")
    per_row = steps.dim() == 2 and h.dim() == 2 and steps.shape[0] == h.shape[0]
    if ((steps.dim() != 1 and not per_row) or steps.shape[-1] != memory.shape[-2]
            or steps.dtype != torch.int64):
        raise ValueError(f"layers[{k}].slot_steps must be int64 [S] = [{memory.shape[-2]}] (or [B, S] per row), got "
                         f"{steps.dtype} {tuple(steps.shape)}")
    if not h.is_floating_point() or c.dtype != h.dtype or memory.dtype != h.dtype:
        raise ValueError(f"layers[{k}]: h, c and memory must share one floating dtype, got "
                         f"{h.dtype}, {c.dtype}, {memory.dtype}")
    if not (h.device == c.device == memory.device == steps.device):
        raise ValueError(f"layers[{k}]: h, c, memory and slot_steps must be on one device, got "
                         f"{h.device}, {c.device}, {memory.device}, {steps.device}")
    return layer


# torch.load(weights_only=True) rebuilds a saved state: both classes hold tensors and an int only, and
# SABState's constructor checks what it is given.
torch.serialization.add_safe_globals([SABState, SABLayerState])
