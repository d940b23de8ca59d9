"""Streaming a SAB layer across calls (docs/SPEC.md section 8, docs/CONTRACT.md "Streaming memory"):
chunked calls carrying (h, c, memory, step counter) equal one call on the whole sequence, outputs, the
attention record and every gradient (the carried memory kept attached), on every backend, and each
backend's chunked call equals the reference's chunked call to TOL."""
import pytest
import torch

from fastrnn import reference
from fastrnn import truncation
from helpers import (BF16_BACKENDS, BF16_TOL, NEW_SLOTS_VIEW_CASES, TOL, backend_params, layer_args, layer_fn, leaves,
                     shares_memory)

CHUNKS = [(0, 5), (5, 6), (6, 13)]          # uneven, one of length 1, starting off the k_att grid


def chunked(sab_layer, args, cut, scale, chunks, **kw):
    """Runs sab_layer chunk by chunk, carrying h, c and the memory attached; returns (y, h_n, c_n,
    attention of the last chunk, carried memory)."""
    h, c, memory, ys = args["h0"], args["c0"], None, []
    for a, b in chunks:
        y, h, c, att, new = sab_layer(args["x"][a:b], args["w_ih"], args["w_hh"], args["b_ih"], args["b_hh"],
                                      args["att_wh"], args["att_wm"], args["att_vb"], h, c, cut[a:b],
                                      scale[a:b], memory=memory, step0=a, return_slots=True, **kw)
        memory = torch.cat([args["h0"].unsqueeze(1) if memory is None else memory, new], dim=1)
        ys.append(y)
    return torch.cat(ys), h, c, att, memory


def grads_of(outputs, args, seed=1):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outputs)
    named = leaves(args)
    gs = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if gr is None else gr for (k, v), gr in zip(named.items(), gs)}


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("k_att,provisional", [(1, True), (2, False), (3, True)])
def test_reference_chunked_equals_one_shot(scorer, k_att, provisional):
    """The oracle itself: chunks carrying the memory attached give the one-shot forward exactly (the same
    operations in the same order) and its gradients to 1e-12 (float64; autograd sums a slot's gradient
    contributions in another order once the memory is one tensor)."""
    torch.manual_seed(0)
    args = layer_args(13, 3, 2, 4, A=5, scorer=scorer)
    sched = truncation.fixed(13, 4)
    kw = dict(k_top=2, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=True)
    y, h_n, c_n, att = reference.sab_layer(**args, cut=sched.cut, scale=sched.scale.double(), **kw)
    g = grads_of((y, h_n, c_n), args)
    cy, ch, cc, catt, memory = chunked(reference.sab_layer, args, sched.cut, sched.scale.double(), CHUNKS, **kw)
    cg = grads_of((cy, ch, cc), args)
    assert torch.equal(cy, y) and torch.equal(ch, h_n) and torch.equal(cc, c_n)
    assert torch.equal(catt.indices, att.indices[6:]) and torch.equal(catt.slot_steps, att.slot_steps)
    assert memory.shape[1] == len(att.slot_steps)
    for name in g:
        torch.testing.assert_close(cg[name], g[name], rtol=1e-12, atol=1e-14, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("k_att,provisional", [(1, True), (2, False), (3, True)])
def test_backend_chunked_equals_reference(backend, dtype, scorer, k_att, provisional):
    """A backend's chunked calls (memory in, new slots out, gradient through the carried memory into
    earlier chunks) equal the reference's chunked calls: outputs, last chunk's attention, carried memory,
    every gradient; and in float64 they equal its own one-shot call to TOL."""
    torch.manual_seed(1)
    args = layer_args(13, 3, 2, 4, A=5, scorer=scorer, dtype=dtype)
    sched = truncation.fixed(13, 4)
    kw = dict(k_top=2, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=True)
    assert_chunked_matches_reference(layer_fn(backend, "sab_layer"), args, sched.cut, sched.scale.to(dtype), dtype,
                                     **kw)


def assert_chunked_matches_reference(sab_layer, args, cut, scale, dtype, **kw):
    """sab_layer's chunked calls (CHUNKS) against the reference's on the same arguments (any device):
    outputs, the last chunk's attention record, the carried memory and every gradient to TOL[dtype]
    (scorer "linear": d att_wh and d att_vb are rounding noise on both sides); in float64 also against
    sab_layer's own one-shot call. tests/test_cuda.py runs it for the cuda backend."""
    scorer = kw["scorer"]
    ours = chunked(sab_layer, args, cut, scale, CHUNKS, **kw)
    ref = chunked(reference.sab_layer, args, cut, scale, CHUNKS, **kw)
    for name, a, b in zip(("y", "h_n", "c_n", "memory"), ours[:3] + ours[4:], ref[:3] + ref[4:]):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")
    assert torch.equal(ours[3].indices, ref[3].indices) and torch.equal(ours[3].slot_steps, ref[3].slot_steps)
    og, rg = grads_of(ours[:3] + ours[4:], args), grads_of(ref[:3] + ref[4:], args)
    for name in rg:
        if scorer == "linear" and name in ("att_wh", "att_vb"):
            continue                      # exact gradient zero, rounding noise only (helpers.compare)
        torch.testing.assert_close(og[name], rg[name], **TOL[dtype], msg=lambda m: f"d{name}: {m}")
    if dtype == torch.float64:
        one = sab_layer(**args, cut=cut, scale=scale, **kw)
        torch.testing.assert_close(ours[0], one[0], **TOL[dtype])


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_streaming_arguments_checked(backend):
    """Bad streaming arguments raise a ValueError naming the argument, on every backend."""
    args = {k: v.detach() for k, v in layer_args(4, 2, 3, 4, A=5).items()}
    sched = truncation.full(4)
    fn = reference.sab_layer if backend == "reference" else layer_fn(backend, "sab_layer")
    kw = dict(cut=sched.cut, scale=sched.scale.double(), k_top=2, k_att=1, scorer="mlp", provisional=True)
    with pytest.raises(ValueError, match="memory must be"):
        fn(**args, memory=torch.zeros(2, 3, 5, dtype=torch.float64), **kw)
    with pytest.raises(ValueError, match="memory must be"):
        fn(**args, memory=torch.zeros(2, 0, 4, dtype=torch.float64), **kw)
    with pytest.raises(ValueError, match="step0 must be"):
        fn(**args, step0=-1, **kw)
    with pytest.raises(ValueError, match="lengths cannot be combined"):
        fn(**args, memory=torch.zeros(2, 1, 4, dtype=torch.float64),
           lengths=torch.tensor([4, 2]), **kw)


@pytest.mark.parametrize("backend", ["reference", *backend_params()])
def test_streaming_argument_errors_name_the_argument(backend):
    """memory that is not a tensor: TypeError naming memory; h0 of the wrong rank with memory: ValueError
    naming h0; step0 of a wrong type (float, bool, tensor, None): TypeError naming step0, a numpy integer is
    an int (the same results); step0 >= 2**62: ValueError (the kernels count steps in int64)."""
    np = pytest.importorskip("numpy")
    args = {k: v.detach() for k, v in layer_args(4, 2, 3, 4, A=5).items()}
    sched = truncation.full(4)
    fn = reference.sab_layer if backend == "reference" else layer_fn(backend, "sab_layer")
    kw = dict(cut=sched.cut, scale=sched.scale.double(), k_top=2, k_att=2, scorer="mlp", provisional=True)
    memory = torch.randn(2, 3, 4, dtype=torch.float64)
    for bad in ([memory[:, 0]], memory.numpy()):
        with pytest.raises(TypeError, match="memory must be"):
            fn(**args, memory=bad, step0=6, **kw)
    for h0 in (args["h0"][0], args["h0"][None]):
        with pytest.raises(ValueError, match="h0 must"):
            fn(**dict(args, h0=h0, c0=h0), memory=memory, step0=6, **kw)
    for bad in (6.0, True, torch.tensor(6), None):
        with pytest.raises(TypeError, match="step0 must be"):
            fn(**args, memory=memory, step0=bad, **kw)
    for bad in (2 ** 62, 2 ** 63 - 1, 2 ** 64):
        with pytest.raises(ValueError, match="step0 must be"):
            fn(**args, memory=memory, step0=bad, return_slots=True, **kw)
    ours = fn(**args, memory=memory, step0=np.int64(7), return_slots=True, need_attention=True, **kw)
    want = fn(**args, memory=memory, step0=7, return_slots=True, need_attention=True, **kw)
    for a, b in zip(ours[:3] + ours[4:], want[:3] + want[4:]):
        assert torch.equal(a, b)
    assert torch.equal(ours[3].slot_steps, want[3].slot_steps)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("k_top", [1, 2])
def test_nan_memory_slot_propagates_as_in_the_reference(backend, scorer, k_top):
    """A NaN slot in the carried memory (row 0 only; more slots than k_top): the reference ranks a NaN score
    above every number (torch.sort) and its relu keeps NaN, so row 0's weights, outputs and state are NaN
    from the first step; the shared selection of the cpu (and cuda) ops (csrc/include/fastrnn/
    sparse_attention.h, ranks_above) and the triton kernels (kernels/sparse_attention.py, _ranks_before)
    rank and select the same way instead of dropping the NaN score: NaN where the reference has NaN, the
    reference's values elsewhere (row 1)."""
    torch.manual_seed(3)
    args = {k: v.detach() for k, v in layer_args(5, 2, 3, 4, A=5, scorer=scorer).items()}
    sched = truncation.full(5)
    kw = dict(cut=sched.cut, scale=sched.scale.double(), k_top=k_top, k_att=2, scorer=scorer, provisional=True,
              step0=3, return_slots=True)
    memory = torch.randn(2, 4, 4, dtype=torch.float64) * 0.5
    memory[0, 2] = float("nan")
    want = reference.sab_layer(**args, memory=memory, **kw)
    ours = layer_fn(backend, "sab_layer")(**args, memory=memory, **kw)
    assert want[0][:, 0].isnan().all() and not want[0][:, 1].isnan().any()
    for name, a, b in zip(("y", "h_n", "c_n", "new_slots"), ours[:3] + ours[4:], want[:3] + want[4:]):
        torch.testing.assert_close(a, b, equal_nan=True, **TOL[torch.float64], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", backend_params(BF16_BACKENDS))
def test_bfloat16_chunked(backend):
    """bfloat16 storage with float32 accumulation, streamed: the chunks (memory in bfloat16, gradient
    through it into earlier chunks) are close to the float32 reference's chunks on the same rounded inputs
    (tests/helpers.py BF16_TOL). test_sab.py's test_bfloat16 case (T = 8), in chunks. A fixed seed as there:
    on some seeds a slot scored within bfloat16 rounding of the threshold is selected on one side only,
    and the gradients differ by tens of percent, streamed or not."""
    torch.manual_seed(1)
    chunks = [(0, 3), (3, 4), (4, 8)]
    a32 = layer_args(8, 3, 5, 16, dtype=torch.float32)
    a16 = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in a32.items()}
    a_ref = {k: v.detach().float().requires_grad_() for k, v in a16.items()}
    sched = truncation.full(8)
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True)
    ours = chunked(layer_fn(backend, "sab_layer"), a16, sched.cut, sched.scale.to(torch.bfloat16), chunks, **kw)
    ref = chunked(reference.sab_layer, a_ref, sched.cut, sched.scale.float(), chunks, **kw)
    for name, a, b in zip(("y", "h_n", "c_n", "memory"), ours[:3] + ours[4:], ref[:3] + ref[4:]):
        assert a.dtype == torch.bfloat16, name
        assert (a.float() - b).abs().max() <= BF16_TOL["output"] * b.abs().max(), name
    og, rg = grads_of(ours[:3] + ours[4:], a16), grads_of(ref[:3] + ref[4:], a_ref)
    for name in rg:
        assert og[name].dtype == torch.bfloat16, name
        assert (og[name].float() - rg[name]).abs().max() <= BF16_TOL["sab_grad"] * rg[name].abs().max(), name


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_backend_chunked_second_order_equals_reference(backend, scorer):
    """create_graph=True through chunked calls (float64): the fused backward recomputes through the reference
    (ops/glue.py), which must take the carried memory as an input and new_slots' gradient as an output's;
    a gradient penalty's gradient equals the reference's chunked one."""
    torch.manual_seed(2)
    args = layer_args(13, 2, 2, 3, A=4, scorer=scorer)
    sched = truncation.fixed(13, 4)
    kw = dict(k_top=2, k_att=2, scorer=scorer, provisional=True)

    def second_order(sab_layer):
        y, h_n, c_n, _, memory = chunked(sab_layer, args, sched.cut, sched.scale.double(), CHUNKS, **kw)
        named = leaves(args)
        loss = (y * y.detach().sin()).sum() + h_n.sum() + c_n.square().sum() + memory.square().sum()
        first = torch.autograd.grad(loss, list(named.values()), create_graph=True)
        penalty = sum((g ** 2).sum() for g in first)
        return first, torch.autograd.grad(penalty, list(named.values()), allow_unused=True)

    first, second = second_order(layer_fn(backend, "sab_layer"))
    first_ref, second_ref = second_order(reference.sab_layer)
    names = list(leaves(args))
    for order, got, want in ((1, first, first_ref), (2, second, second_ref)):
        for name, a, b in zip(names, got, want):
            if b is None:
                assert a is None, f"order {order}, d{name}"
                continue
            torch.testing.assert_close(a, b, **TOL[torch.float64], msg=lambda m: f"order {order}, d{name}: {m}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("T,B,k_att", NEW_SLOTS_VIEW_CASES)
@pytest.mark.parametrize("provisional", [True, False], ids=["provisional", "final"])
def test_new_slots_is_a_fresh_tensor(backend, T, B, k_att, provisional):
    """new_slots never shares memory with y, h_n or c_n, also where the written states' slice is contiguous
    as it stands (one slot; one row with k_att = 1): the op's schema promises fresh outputs, and a carried
    memory that aliased y would change when y is modified in place."""
    args = layer_args(T, B, 2, 4, A=3)
    sched = truncation.full(T)
    y, h_n, c_n, _, new = layer_fn(backend, "sab_layer")(**args, cut=sched.cut, scale=sched.scale.double(), k_top=2,
                                                         k_att=k_att, scorer="mlp", provisional=provisional,
                                                         return_slots=True)
    assert new.shape == (B, T // k_att, 4)
    for name, other in (("y", y), ("h_n", h_n), ("c_n", c_n)):
        assert not shares_memory(new, other), f"new_slots aliases {name}"
