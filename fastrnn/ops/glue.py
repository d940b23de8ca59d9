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
import functools
import inspect
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


def register_fake(op: str, fake: Callable) -> None:
    """Register `fake` as the fake (and meta) kernel of fastrnn::`op`, checking first that every tensor
    argument lies on x's device. Why: one meta tensor among CPU ones makes the dispatcher pick the Meta
    kernel, which would hand back the fake kernel's uninitialised CPU outputs as the op's result; the C++
    checks that name the argument never run then. The message is theirs (csrc/checks.h)."""
    names = list(inspect.signature(fake).parameters)

    @functools.wraps(fake)
    def checked(*args, **kwargs):
        bound = dict(zip(names, args), **kwargs)
        device = bound["x"].device
        for name, value in bound.items():
            if isinstance(value, Tensor) and value.device != device:
                raise RuntimeError(f"fastrnn::{op}: {name} must be on {device} (the device of x), got {value.device}")
        return fake(*args, **kwargs)
    torch.library.register_fake(f"fastrnn::{op}")(checked)


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
                            output_grads: Sequence[Optional[Tensor]], *, keyword_inputs: Optional[dict] = None,
                            **config) -> list:
    """Gradients of the layer's outputs with respect to its inputs, with a graph, via the reference.

    reference_layer: `fastrnn.reference.lstm_layer` or `sab_layer`; `inputs` its positional arguments in
    order (x, weights, ..., h0, c0, cut, scale), the tensors the forward saved (still attached to the
    caller's graph), and `keyword_inputs` ({name: tensor or None}) those it takes by keyword that may need a
    gradient too (a SAB layer's carried `memory`); `needs_input_grad` the op's flags for `inputs` followed by
    `keyword_inputs` in their order; `output_grads` the gradients of the reference's tensor results in order
    (y, h_n, c_n and, with `return_slots=True` in `config`, a SAB layer's new_slots; the attention record is
    not one), None where unused; `config` the reference's other keyword arguments (the SAB options and
    `lengths`, which the op's backward must pass on: the reference then stops each row where the kernels
    did; step0). Returns one entry per input (positional, then keyword): a gradient (zeros where the input
    does not influence the outputs) or None where not needed.
    """
    keyword_inputs = keyword_inputs or {}
    names = list(keyword_inputs)
    with torch.enable_grad():
        # The reference runs on aliases of the inputs: autograd.grad stops at them, so it differentiates this
        # layer call alone. On the inputs themselves it would also follow them upstream into whatever made them
        # (an earlier chunk's h_n or new_slots, computed with the same weights) and add that call's gradient
        # to the weights a second time. The aliases are views, so the gradients' graph still reaches the inputs.
        everything = [t.view_as(t) if isinstance(t, Tensor) and t.requires_grad else t
                      for t in (*inputs, *keyword_inputs.values())]
        positional, keyword = everything[:len(inputs)], dict(zip(names, everything[len(inputs):]))
        result = [None] * len(everything)
        wanted = [i for i, t in enumerate(everything) if isinstance(t, Tensor) and needs_input_grad[i]]
        results = reference_layer(*positional, **keyword, **config)
        outputs = [o for o in results if isinstance(o, Tensor)]
        if len(outputs) != len(output_grads):
            raise RuntimeError(f"differentiable_backward: {len(output_grads)} output gradients for "
                               f"{len(outputs)} tensor results of the reference")
        # a result without a graph (new_slots [B, 0, H] of a call that wrote no slot) has no gradient to pass
        used = [(o, g) for o, g in zip(outputs, output_grads) if g is not None and o.requires_grad]
        if not wanted or not used:
            return result
        grads = torch.autograd.grad([o for o, _ in used], [everything[i] for i in wanted], [g for _, g in used],
                                    create_graph=True, allow_unused=True)
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(everything[i]) if g is None else g
    return result
