"""What the autograd formulas of the layer ops share, whichever device or kernel computes them.

- `grad_or_zeros`: autograd hands over None for an unused output (set_materialize_grads(False)) and may
  hand over expanded or strided gradients (from .sum()); the kernels index raw contiguous memory.
- `bias_grads`: b_ih and b_hh receive the same gradient, but each .grad must own its storage.
- `differentiable_backward`: when autograd asks for the gradient with a graph (create_graph=True, as
  gradient penalties, Hessian-vector products and meta-learning do), the fused backward kernels cannot
  give one: they are not themselves differentiable. The layer's gradient is then recomputed through the
  reference (fastrnn.reference, plain autograd), whose graph autograd can differentiate again. Slower, but
  exact: never a silent zero. The first-order gradient it returns is the reference's, equal to the
  kernels' within the float tolerances of the tests.
"""
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


def grad_or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """The incoming gradient as a contiguous tensor, zeros of `like`'s shape if autograd passed None."""
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def bias_grads(db: Optional[Tensor], has_bias: bool):
    """(d b_ih, d b_hh) from the one bias gradient the kernels compute: two tensors, or (None, None)."""
    return (db, db.clone()) if has_bias else (None, None)


def wants_graph() -> bool:
    """True inside a backward that autograd runs with create_graph=True (grad mode is on there)."""
    return torch.is_grad_enabled()


def differentiable_backward(reference_layer: Callable, inputs: Sequence, needs_input_grad: Sequence[bool],
                            output_grads: Sequence[Optional[Tensor]], **config) -> list:
    """Gradients of the layer's tensor results with respect to `inputs`, with a graph, via the reference.

    reference_layer: `fastrnn.reference.lstm_layer` or `sab_layer` (or a wrapper of it); `inputs` its
    positional arguments in order (x, weights, ..., h0, c0, cut, scale), the tensors the forward saved
    (still attached to the caller's graph); `needs_input_grad` the op's flags for them; `output_grads` the
    gradients of the layer's tensor results in order, None where unused: (y, h_n, c_n), and new_slots
    after them when streaming (the attention record is not a tensor result); `config` the reference's
    keyword arguments (the SAB options, `lengths` and the streaming arguments, which the op's backward must
    pass on: the reference then computes what the kernels did). Returns one entry per input: a gradient
    (zeros where the input does not influence the outputs) or None where not needed.
    """
    result = [None] * len(inputs)
    wanted = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and needs_input_grad[i]]
    with torch.enable_grad():
        # Each wanted input through its own view: the gradient is then taken at that view, the partial
        # derivative of this call. With the inputs themselves autograd.grad would also follow an input's
        # history back to another input (a streamed call's h0 and memory come from earlier calls with the
        # same weights) and count those calls again, which autograd's own backward already does. The view
        # keeps the gradient attached to the input for the next order.
        inputs = [t.view_as(t) if i in wanted else t for i, t in enumerate(inputs)]
        outputs = [o for o in reference_layer(*inputs, **config) if isinstance(o, Tensor)]
        if len(outputs) != len(output_grads):
            raise RuntimeError(f"differentiable_backward: {len(output_grads)} output gradients for "
                               f"{len(outputs)} tensor results of the reference")
        # a result without a graph (new_slots [B, 0, H] of a call that wrote no slot) has no gradient to pass
        used = [(o, g) for o, g in zip(outputs, output_grads) if g is not None and o.requires_grad]
        if not wanted or not used:
            return result
        grads = torch.autograd.grad([o for o, _ in used], [inputs[i] for i in wanted], [g for _, g in used],
                                    create_graph=True, allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return result
