"""Streaming at the module level (issue #11; docs/SPEC.md section 8): `SABLSTM.forward(..., state=,
return_state=True)` and `fastrnn.SABState`. Chunked calls carrying the state equal the one-shot forward
(outputs, attention record, state; every gradient while the state stays attached), a detached state
blocks the gradient into earlier calls, `max_slots` bounds the carried memory and keeps its slot steps
true, bad states and combinations are refused, and a state survives torch.save/load and deepcopy.

Every numerical test runs on the reference and on every fast backend (tests/helpers.py): the fast
backends' layer functions take the streaming keywords of docs/CONTRACT.md."""
import copy
import io
import re
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import SABLayerState, SABState, truncation
from helpers import TOL, backend_params, only, sab_model

f64 = torch.float64
BACKENDS = ["reference", *backend_params()]
T, B, I, H = 13, 3, 2, 4
CHUNKS = [(0, 5), (5, 6), (6, 13)]          # uneven, one of length 1, starting off the k_att grid

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(backend, seed=0, **kw):
    return sab_model(I, H, backend, seed, **kw)


def _time(x, a, b, batch_first):
    return x[:, a:b] if batch_first else x[a:b]


def _chunked(sab, x, chunks, *, hx=None, batch_first=False, detach=False, schedules=None):
    """Runs `sab` chunk by chunk, carrying the state (detached between chunks with `detach`). Returns
    (output, (h_n, c_n), the attention of every chunk, the states after every chunk)."""
    state, ys, atts, states = None, [], [], []
    for i, (a, b) in enumerate(chunks):
        kw = dict(state=state) if state is not None else dict(hx=hx)
        if schedules is not None:
            kw["schedule"] = schedules[i]
        y, hc, att, state = sab(_time(x, a, b, batch_first), return_state=True, return_attention=True, **kw)
        ys.append(y)
        atts.append(att)
        states.append(state)
        if detach:
            state = state.detach()
    return torch.cat(ys, dim=1 if batch_first else 0), hc, atts, states


def _loss(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=f64)).sum() for o in outputs)


def _grads(loss, sab, inputs):
    named = {**{f"d{k}": p for k, p in sab.named_parameters()}, **inputs}
    gs = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(named.items(), gs)}


def _tol(backend, exact):
    if backend == "reference":
        return dict(rtol=0, atol=0) if exact else dict(rtol=1e-12, atol=1e-14)
    return TOL[f64]


# ---- chunked == one-shot -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("slot_state", ["provisional", "final"])
@pytest.mark.parametrize("num_layers,batch_first,k_att", [(1, False, 2), (2, True, 3)])
def test_chunked_equals_one_shot(backend, scorer, slot_state, num_layers, batch_first, k_att):
    """Chunks carrying the attached state give the one-shot forward: outputs and (h_n, c_n) exactly on the
    reference (the same operations in the same order), the last chunk's attention record (indices index the
    carried memory followed by the new slots), the state (memory size, true slot steps, step counter),
    and every gradient (parameters, input, hx) to 1e-12 in float64 (autograd sums a slot's contributions in
    another order once the memory is one tensor). The schedule is each chunk's slice of a fixed(T, 4)
    schedule, so cuts fall inside chunks and on a chunk's first step."""
    sab = _model(backend, num_layers=num_layers, batch_first=batch_first, k_att=k_att, attention=scorer,
                 attn_size=5 if scorer == "mlp" else None, slot_state=slot_state)
    torch.manual_seed(2)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = (torch.randn(shape, dtype=f64) * 0.5).requires_grad_()
    h0 = (torch.randn(num_layers, B, H, dtype=f64) * 0.5).requires_grad_()
    c0 = (torch.randn(num_layers, B, H, dtype=f64) * 0.5).requires_grad_()
    sched = truncation.fixed(T, 4)
    y, (h_n, c_n), att = sab(x, (h0, c0), schedule=sched, return_attention=True)
    g = _grads(_loss((y, h_n, c_n)), sab, dict(x=x, h0=h0, c0=c0))

    pieces = [truncation.Schedule(sched.cut[a:b], sched.scale[a:b]) for a, b in CHUNKS]
    cy, (ch, cc), catts, states = _chunked(sab, x, CHUNKS, hx=(h0, c0), batch_first=batch_first,
                                          schedules=pieces)
    cg = _grads(_loss((cy, ch, cc)), sab, dict(x=x, h0=h0, c0=c0))

    exact = _tol(backend, exact=True)
    torch.testing.assert_close(cy, y, **exact)
    torch.testing.assert_close(ch, h_n, **exact)
    torch.testing.assert_close(cc, c_n, **exact)
    a = CHUNKS[-1][0]
    for layer in range(num_layers):
        ours, full = catts[-1][layer], att[layer]
        assert torch.equal(ours.indices, full.indices[a:])
        torch.testing.assert_close(ours.weights, full.weights[a:], **exact)
        assert torch.equal(ours.slot_steps, full.slot_steps)
    state = states[-1]
    assert isinstance(state, SABState) and state.num_layers == num_layers and state.step == T
    assert state.num_slots == len(att[0].slot_steps) == 1 + T // k_att
    assert torch.equal(state.slot_steps, att[0].slot_steps)
    assert all(torch.equal(layer.slot_steps, att[0].slot_steps) for layer in state.layers)
    torch.testing.assert_close(state.h, h_n, **exact)
    torch.testing.assert_close(state.c, c_n, **exact)
    assert state.layers[0].memory.shape == (B, state.num_slots, H)
    # the carried memory is the one-shot memory: slot 0 is h0, slot j the state of step j * k_att - 1
    hhat_or_h = y.transpose(0, 1) if batch_first else y          # [T, B, H], the last layer's h_t
    if slot_state == "final":
        steps = state.slot_steps[1:]
        torch.testing.assert_close(state.layers[-1].memory[:, 1:], hhat_or_h[steps].transpose(0, 1), **exact)
    torch.testing.assert_close(state.layers[0].memory[:, 0], h0[0], **exact)
    # the intermediate states count steps and slots as the stream goes
    assert [s.step for s in states] == [b for _, b in CHUNKS]
    assert [s.num_slots for s in states] == [1 + b // k_att for _, b in CHUNKS]
    for name in g:
        if scorer == "linear" and re.match(r"d(att_wh|att_b)_l", name):
            continue                      # exact gradient zero, rounding noise only (docs/SPEC.md 1.5)
        torch.testing.assert_close(cg[name], g[name], **_tol(backend, exact=False),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunks", [[(0, 3), (3, 6), (6, 9), (9, 13)], CHUNKS], ids=["on_grid", "off_grid"])
def test_k_trunc_cuts_lie_on_the_stream_steps(backend, chunks):
    """k_trunc without a schedule: with a state the cuts lie on the stream's global steps (g > 0, g % k_trunc
    == 0), as in the one-shot forward, so chunks carrying the attached state give the one-shot gradients,
    whether a chunk starts on a cut (its cut[0] cuts the carried (h, c)) or between cuts."""
    sab = _model(backend, num_layers=2, k_trunc=3)
    torch.manual_seed(2)
    x = (torch.randn(T, B, I, dtype=f64) * 0.5).requires_grad_()
    y, (h_n, c_n) = sab(x)
    g = _grads(_loss((y, h_n, c_n)), sab, dict(x=x))
    cy, (ch, cc), _, _ = _chunked(sab, x, chunks)
    cg = _grads(_loss((cy, ch, cc)), sab, dict(x=x))
    torch.testing.assert_close(cy, y, **_tol(backend, exact=True))
    for name in g:
        torch.testing.assert_close(cg[name], g[name], **_tol(backend, exact=False), msg=lambda m: f"{name}: {m}")


@only("cpu")
def test_compiled_chunks_specialise_on_the_slot_phase_only():
    """torch.compile(fullgraph=True) of a chunked call: the layers see step % k_att only, so the graphs do not
    specialise on the stream's step count (before, the 9th chunk hit the recompile limit). Twelve chunks of
    3 steps (k_att = 2: both phases; k_trunc = 4: the cuts from the global step) run without recompiling
    per chunk and equal eager: outputs, the attention record with its true slot_steps, the state, and the
    parameters' gradient through the attached chunks."""
    torch._dynamo.reset()
    sab = _model("cpu", k_att=2, k_trunc=4)
    x = torch.randn(36, B, I, dtype=f64)
    graphs = []

    def eager_counting(gm, example_inputs):      # backend="eager", counting the graphs it is given
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda xc, st: sab(xc, state=st, return_state=True, return_attention=True),
                             backend=eager_counting, fullgraph=True)
    results = {}
    for name, fn in (("compiled", compiled), ("eager", None)):
        state, ys, records = None, [], []
        for chunk in x.split(3):
            if fn is None:
                y, _, att, state = sab(chunk, state=state, return_state=True, return_attention=True)
            else:
                y, _, att, state = fn(chunk, state)
            ys.append(y)
            records.append((att[0].indices, att[0].slot_steps, state.slot_steps, state.step))
        grads = torch.autograd.grad(_loss(ys), list(sab.parameters()))
        results[name] = (torch.cat(ys), records, grads)
    assert len(graphs) <= sab.k_att + 2, len(graphs)     # the fresh call, one static step, one per phase
    (y, records, grads), (ey, erecords, egrads) = results["compiled"], results["eager"]
    torch.testing.assert_close(y, ey, rtol=0, atol=0)
    for ours, theirs in zip(records, erecords):
        assert all(torch.equal(a, b) for a, b in zip(ours[:3], theirs[:3])) and ours[3] == theirs[3]
    assert records[-1][3] == 36 and torch.equal(records[-1][2], torch.arange(-1, 36, 2))
    for a, b in zip(grads, egrads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_streaming(backend):
    """Unbatched input ([T, I]) streams too: the state has no B dimension (h, c [H], memory [S, H]); a
    batched state does not continue unbatched input, nor the reverse."""
    sab = _model(backend, num_layers=2)
    x = torch.randn(T, I, dtype=f64)
    y, (h_n, c_n) = sab(x)
    cy, (ch, cc), _, states = _chunked(sab, x, CHUNKS)
    torch.testing.assert_close(cy, y, **_tol(backend, exact=True))
    torch.testing.assert_close(ch, h_n, **_tol(backend, exact=True))
    state = states[-1]
    assert not state.batched and state.batch_size is None
    assert state.layers[0].h.shape == (H,) and state.layers[1].memory.shape == (1 + T // 2, H)
    with pytest.raises(ValueError, match="batched"):
        sab(torch.randn(2, 1, I, dtype=f64), state=state)
    _, _, batched = sab(torch.randn(2, 1, I, dtype=f64), return_state=True)
    with pytest.raises(ValueError, match="batched"):
        sab(x, state=batched)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_between_layers_and_zero_length_calls(backend):
    """Dropout acts between layers as usual (in eval mode it is off, and chunks equal one shot; in training
    mode the call runs and returns a state of the right size). A call on T = 0 steps returns the state it
    was given (a fresh one: M = [h0], step 0)."""
    sab = _model(backend, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, I, dtype=f64)
    sab.eval()
    y, _ = sab(x)
    cy, _, _, _ = _chunked(sab, x, CHUNKS)
    torch.testing.assert_close(cy, y, **_tol(backend, exact=True))
    sab.train()
    yt, _, state = sab(x, return_state=True)
    assert not torch.equal(yt, y) and state.num_slots == 1 + T // 2 and state.step == T
    sab.eval()
    y0, (h0, _), fresh = sab(x[:0], return_state=True)
    assert y0.shape == (0, B, H) and fresh.step == 0 and fresh.num_slots == 1
    assert torch.equal(fresh.slot_steps, torch.tensor([-1])) and torch.equal(fresh.layers[0].memory[:, 0], h0[0])
    _, _, same = sab(x[:0], state=state, return_state=True)
    assert same.step == T and torch.equal(same.layers[1].memory, state.layers[1].memory)


# ---- gradients through the carried state ---------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_attached_state_carries_gradient_through_memory_and_detached_blocks_it(backend):
    """The second chunk starts with a cut (schedule cut[0]), so its only gradient path into the first chunk
    is the carried memory: with the state attached, the first chunk's input gets gradient (and it equals the
    one-shot gradient under the same cuts); with `state.detach()` it gets none, and the parameters'
    gradient is that of the second chunk alone from a detached copy of the state."""
    sab = _model(backend, k_att=1)
    x = torch.randn(T, B, I, dtype=f64, requires_grad=True)
    sched = truncation.Schedule(torch.tensor([False] * 6 + [True] + [False] * 6), torch.ones(T, dtype=f64))
    first = truncation.Schedule(sched.cut[:6], sched.scale[:6])
    second = truncation.Schedule(sched.cut[6:], sched.scale[6:])

    y1, _, state = sab(x[:6], schedule=first, return_state=True)
    y2, _ = sab(x[6:], state=state, schedule=second)
    g_x = torch.autograd.grad(_loss((y2,)), x)[0]
    assert g_x[:6].abs().sum() > 0                        # through the memory only (cut[0] on the chunk)
    y, _ = sab(x, schedule=sched)
    g_full = torch.autograd.grad(_loss((y[6:],)), x)[0]
    torch.testing.assert_close(g_x, g_full, **_tol(backend, exact=False))

    y2d, _ = sab(x[6:], state=state.detach(), schedule=second)
    g_params = _grads(_loss((y2d,)), sab, dict(x=x))
    assert g_params["x"][:6].abs().sum() == 0
    torch.testing.assert_close(y2d, y2, rtol=0, atol=0)
    copy_ = SABState([SABLayerState(*(t.detach().clone() for t in layer)) for layer in state.layers], state.step)
    y2c, _ = sab(x[6:].detach(), state=copy_, schedule=second)
    g_copy = _grads(_loss((y2c,)), sab, {})
    for name in g_copy:
        torch.testing.assert_close(g_params[name], g_copy[name], rtol=0, atol=0)
    assert not state.detach().requires_grad and state.requires_grad


# ---- max_slots -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_max_slots_bounds_the_carried_memory(backend):
    """max_slots=4, k_att=1: the carried memory never holds more than 4 slots; its slot_steps are the true
    steps of the slots kept (the newest), the attention record's slot_steps are the state's followed by the
    new slots'; while nothing has been dropped the chunks equal the one-shot forward, and after a drop a
    call equals the unlimited model continuing from the same newest slots."""
    limited = _model(backend, k_att=1, max_slots=4)
    unlimited = _model(backend, k_att=1)
    assert "max_slots=4" in repr(limited)
    x = torch.randn(T, B, I, dtype=f64)
    chunks = [(0, 2), (2, 3), (3, 7), (7, 8), (8, 13)]
    y_full, _ = unlimited(x)
    state = None
    for i, (a, b) in enumerate(chunks):
        kw = {} if state is None else dict(state=state)
        y, _, att, new = limited(x[a:b], return_state=True, return_attention=True, **kw)
        S0 = 1 if state is None else state.num_slots
        carried = torch.tensor([-1]) if state is None else state.slot_steps
        assert torch.equal(att[0].slot_steps, torch.cat([carried, torch.arange(a, b)]))
        assert int(att[0].indices.max()) < S0 + (b - a)
        assert new.num_slots == min(4, S0 + (b - a)) and new.layers[0].memory.shape[1] <= 4
        assert torch.equal(new.slot_steps, att[0].slot_steps[-4:])
        if S0 == 1 + a:                                    # nothing dropped before this call
            torch.testing.assert_close(y, y_full[a:b], **_tol(backend, exact=True))
            assert i <= 2
        else:                                              # a dropped slot would have been selected
            assert not torch.allclose(y, y_full[a:b])
        if state is not None:                             # = the unlimited model from the same slots
            y_same, _ = unlimited(x[a:b], state=state)
            torch.testing.assert_close(y, y_same, rtol=0, atol=0)
        state = new
    assert torch.equal(state.slot_steps, torch.arange(T - 4, T))
    with pytest.raises(ValueError, match="max_slots"):
        _model(backend, max_slots=0)
    with pytest.raises(TypeError, match="max_slots"):
        _model(backend, max_slots=2.0)


# ---- errors ----------------------------------------------------------------------------------------

def test_streaming_errors_name_what_differs():
    sab = _model("reference", num_layers=2)
    x = torch.randn(5, B, I, dtype=f64)
    _, _, state = sab(x, return_state=True)
    hx = (torch.zeros(2, B, H, dtype=f64),) * 2
    with pytest.raises(ValueError, match="hx and state"):
        sab(x, hx, state=state)
    with pytest.raises(ValueError, match="lengths"):
        sab(x, state=state, lengths=[5, 4, 3])
    with pytest.raises(ValueError, match="lengths"):
        sab(x, return_state=True, lengths=[5, 4, 3])
    packed = pack_padded_sequence(x, [5, 4, 3])
    with pytest.raises(ValueError, match="PackedSequence"):
        sab(packed, return_state=True)
    with pytest.raises(ValueError, match="PackedSequence"):
        sab(packed, state=state)
    with pytest.raises(TypeError, match="SABState"):
        sab(x, state=hx)
    with pytest.raises(ValueError, match="num_layers is 1, the model's 2"):
        sab(x, state=SABState(state.layers[:1], state.step))
    other = fastrnn.SABLSTM(I, H + 1, num_layers=2, dtype=f64, backend="reference")
    with pytest.raises(ValueError, match="hidden_size is 4, the model's 5"):
        other(x, state=state)
    with pytest.raises(ValueError, match="batch size is 3, the input's 2"):
        sab(x[:, :2], state=state)
    with pytest.raises(ValueError, match="dtype is torch.float32, the input's torch.float64"):
        sab(x, state=SABState([SABLayerState(*(t.float() if t.is_floating_point() else t for t in layer))
                               for layer in state.layers], state.step))
    meta = SABState([SABLayerState(*(t.to("meta") for t in layer)) for layer in state.layers], state.step)
    with pytest.raises(ValueError, match="device is meta, the input's cpu"):
        sab(x, state=meta)
    bad = SABState([SABLayerState(*(t.detach().clone() for t in layer)) for layer in state.layers], state.step)
    bad.layers[1].memory[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(memory\)"):
        sab(x, state=bad)
    with pytest.raises(TypeError, match="state"):                 # fastrnn.LSTM keeps nn.LSTM's (h, c)
        fastrnn.LSTM(I, H, dtype=f64, backend="reference")(x, state=state)


def test_sab_state_checks_what_it_is_built_from():
    h, memory, steps = torch.zeros(B, H), torch.zeros(B, 3, H), torch.tensor([-1, 1, 3])
    SABState([SABLayerState(h, h, memory, steps)], 4)
    SABState([(h, h, memory, steps)], torch.tensor(4))
    with pytest.raises(TypeError, match="layers must be"):
        SABState(SABLayerState(h, h, memory, steps), 4)
    with pytest.raises(ValueError, match="none"):
        SABState([], 0)
    with pytest.raises(TypeError, match="step must be"):
        SABState([SABLayerState(h, h, memory, steps)], 4.0)
    with pytest.raises(ValueError, match="step must be"):
        SABState([SABLayerState(h, h, memory, steps)], -1)
    with pytest.raises(ValueError, match="slot_steps must be int64"):
        SABState([SABLayerState(h, h, memory, steps[:2])], 4)
    with pytest.raises(ValueError, match="memory must be"):
        SABState([SABLayerState(h, h, torch.zeros(B, 0, H), steps[:0])], 4)
    with pytest.raises(ValueError, match="memory must be"):
        SABState([SABLayerState(h, h, torch.zeros(B + 1, 3, H), steps)], 4)
    with pytest.raises(ValueError, match="one floating dtype"):
        SABState([SABLayerState(h, h.double(), memory, steps)], 4)
    with pytest.raises(ValueError, match="differ in memory shape"):
        SABState([SABLayerState(h, h, memory, steps), SABLayerState(h, h, memory[:, :2], steps[:2])], 4)


def test_sab_state_step_and_slot_steps_and_return_state_checks():
    """SABState takes a numpy integer step as an int, refuses a step >= 2**62 (ValueError: the kernels count
    steps in int64) and layers whose slot_steps differ (every layer holds the slots of the same steps);
    return_state must be a bool (TypeError), as the module's other switches."""
    np = pytest.importorskip("numpy")
    h, memory, steps = torch.zeros(B, H), torch.zeros(B, 3, H), torch.tensor([-1, 1, 3])
    state = SABState([SABLayerState(h, h, memory, steps)], np.int64(4))
    assert state.step == 4 and type(state.step) is int
    SABState([SABLayerState(h, h, memory, steps)], 2 ** 62 - 1)
    for bad in (2 ** 62, 2 ** 63 + 5):
        with pytest.raises(ValueError, match="step must be"):
            SABState([SABLayerState(h, h, memory, steps)], bad)
    for bad in (True, 4.0, None, np.float64(4.0), torch.tensor(True)):
        with pytest.raises(TypeError, match="step must be"):
            SABState([SABLayerState(h, h, memory, steps)], bad)
    SABState([SABLayerState(h, h, memory, steps), SABLayerState(h, h, memory, steps.clone())], 4)
    with pytest.raises(ValueError, match="differ in slot_steps"):
        SABState([SABLayerState(h, h, memory, steps), SABLayerState(h, h, memory, steps + 100)], 4)
    sab = _model("reference")
    x = torch.randn(3, B, I, dtype=f64)
    for bad in ("yes", 0, 1, None, torch.tensor(True)):
        with pytest.raises(TypeError, match="return_state must be a bool"):
            sab(x, return_state=bad)
    _, _, state = sab(x, return_state=True)
    y, _ = sab(x, state=state, return_state=False)
    big = SABState(state.layers, 2 ** 62 - 3)
    with pytest.raises(ValueError, match="step must be"):          # the next state's step would be >= 2**62
        sab(x, state=big, return_state=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_state_continues_under_autocast(backend):
    """Under torch.autocast a float32 state (a float32 model's call outside autocast) is taken as a float32
    hx is: cast to the autocast dtype, exactly as the same state rounded to bfloat16 by hand (the cpu
    backend's mixed precision takes it in float32, unrounded, as hx: bfloat16-close, and exactly as the
    rounded values given in float32); the state returned is bfloat16. A float64 state is still refused.
    (bfloat16 chunks equal one shot only to bfloat16 rounding: the carried state is rounded at each boundary,
    docs/SPEC.md section 8.)"""
    sab = _model(backend, num_layers=2, dtype=torch.float32)
    x = torch.randn(T, B, I)
    _, _, state = sab(x[:5], return_state=True)
    assert state.dtype == torch.float32
    def cast(s, convert):
        return SABState([SABLayerState(*(convert(t) if t.is_floating_point() else t for t in layer))
                         for layer in s.layers], s.step)
    rounded = cast(state, lambda t: t.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h_n, c_n), after = sab(x[5:], state=state, return_state=True)
        y_r, (h_r, c_r), after_r = sab(x[5:], state=rounded, return_state=True)
        # the cpu backend runs the bfloat16 mixed precision (docs/SPEC.md section 10): its layers take float32
        # tensors, a float32 state unrounded (as a float32 hx); then a bfloat16 state is its float32 values
        mixed = backend == "cpu"
        if mixed:
            y_f, (h_f, c_f), after_f = sab(x[5:], state=cast(state, lambda t: t.bfloat16().float()),
                                           return_state=True)
    assert y.dtype == torch.bfloat16 and after.dtype == torch.bfloat16
    pairs = ((y, y_r), (h_n, h_r), (c_n, c_r), (after.layers[1].memory, after_r.layers[1].memory))
    if mixed:
        for (a, b), f in zip(pairs, (y_f, h_f, c_f, after_f.layers[1].memory)):
            torch.testing.assert_close(f, b, rtol=0, atol=0)
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2e-2)   # a few bfloat16 ulps
        pairs = ()
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(after.slot_steps, after_r.slot_steps) and after.step == T
    f64_state = SABState([SABLayerState(*(t.double() if t.is_floating_point() else t for t in layer))
                          for layer in state.layers], state.step)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="dtype is torch.float64"):
        sab(x[5:], state=f64_state)


# ---- copies ----------------------------------------------------------------------------------------

def test_state_survives_save_load_and_deepcopy(tmp_path):
    """torch.save / torch.load (weights_only=True) and copy.deepcopy of a detached state: the copy
    continues the stream exactly as the original."""
    sab = _model("reference", num_layers=2, max_slots=3)
    x = torch.randn(T, B, I, dtype=f64)
    _, _, state = sab(x[:7], return_state=True)
    state = state.detach()
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    buf = io.BytesIO()
    torch.save({"model": sab.state_dict(), "state": state}, buf)
    buf.seek(0)
    in_checkpoint = torch.load(buf, weights_only=True)["state"]
    duplicate = copy.deepcopy(state)
    expected, _, after = sab(x[7:], state=state, return_state=True)
    for other in (loaded, in_checkpoint, duplicate):
        assert isinstance(other, SABState) and other.step == 7 and other.num_slots == 3
        assert all(torch.equal(a, b) for la, lb in zip(other.layers, state.layers) for a, b in zip(la, lb))
        y, _, s = sab(x[7:], state=other, return_state=True)
        assert torch.equal(y, expected) and torch.equal(s.slot_steps, after.slot_steps)
    assert "SABState(num_layers=2, batch_size=3, hidden_size=4, num_slots=3, step=7" in repr(state)


# ---- the README's example ------------------------------------------------------------------------

def test_readme_streaming_example_runs():
    """The README's "Streaming" example runs as written (its default backend)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Streaming"):]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert isinstance(namespace["state"], SABState)
