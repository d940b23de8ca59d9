"""GPU tests of the cuda and triton backends on CUDA tensors against the reference (docs/SPEC.md section 2):
float64 to 1e-9 relative (helpers.TOL), float32 at helpers.TOL, bfloat16 coarsely against the float32
reference on the same rounded inputs (helpers.BF16_TOL); NaN-poisoned buffers; a slot selected by every
step and every row; lengths; truncation schedules (fixed, ARTBP, a hand-made cut at step 0); both sweeps
of the CUDA LSTM (persistent and one launch per step); streaming a SAB layer across calls (docs/SPEC.md
section 8: memory in, new slots out, the gradient through the carried memory), chunk by chunk against the
reference's chunks, as tests/test_streaming.py does on the CPU; new_slots a fresh tensor where the written
states' slice is contiguous as it stands (opcheck on the CUDA op); k_top above the shared-memory limit of the
attention kernels refused by name; per-row resets (docs/SPEC.md section 9, as tests/test_reset.py on the CPU:
a call with resets equals each row's pieces run separately, float64 to 1e-9 and float32 to helpers.TOL,
bfloat16 coarsely, the module streamed in chunks across resets, opcheck, the op's argument errors, poisoned
buffers) and per-row truncation schedules (cut and scale [T, B]: each row as the reference gives it alone).

Skipped, with the reason, where torch.cuda.is_available() is False (every machine of this project but a
lent GPU one). scripts/gpu_check.sh runs them there (with TRITON_INTERPRET=0, so Triton compiles for the
GPU, and CUBLAS_WORKSPACE_CONFIG set for the deterministic-mode poisoning): `-k "not triton"` and `-k triton`
as two parts. A backend that does not load (triton: also fastrnn.kernels not importing) is skipped with why."""
import importlib
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # cuBLAS in deterministic mode (poison)

import pytest  # noqa: E402
import torch  # noqa: E402

from fastrnn import backends, reference, truncation as tr  # noqa: E402
from fastrnn.ops.streaming import reset_plan  # noqa: E402
from helpers import (BF16_TOL, NEW_SLOTS_VIEW_CASES, TOL, assert_bf16_close, compare, layer_args,  # noqa: E402
                     leaves, run_with_grads, schedule_args, shares_memory)
from test_reset import (LAYER_CASES, MODULE_RESETS, OP_ERRORS, _grads, _mask, _model, _pieces_layer,  # noqa: E402
                        _selected_steps, _streaming_reset_args, _weighted, f64)
from test_streaming import assert_chunked_matches_reference, grads_of  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device (torch.cuda.is_available() is False: CPU torch or no GPU); "
           "these run on a GPU machine via scripts/gpu_check.sh")

DEV = torch.device("cuda")


def _gpu_backend(name):
    """pytest.param for a GPU backend, skipped with its reason where it does not load (triton: also where the
    kernels, fastrnn.kernels, do not import: an installed package or a checkout's kernels/)."""
    why = None
    if torch.cuda.is_available():
        try:
            if name == "triton":
                importlib.import_module("fastrnn.kernels")
            backends.layer_functions(name, DEV)
        except ImportError as e:
            why = f"fastrnn.kernels does not import ({type(e).__name__}: {e})"
        except (RuntimeError, ValueError) as e:
            why = str(e)
    marks = [pytest.mark.skipif(why is not None, reason=f"{name}: {why}")]
    return pytest.param(name, id=name, marks=marks)


GPU = [_gpu_backend("cuda"), _gpu_backend("triton")]


def _need_cuda():
    """Skips the test, with the reason, where the cuda backend does not load."""
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")


def _fn(backend, op):
    lstm_layer, sab_layer = backends.layer_functions(backend, DEV)
    return lstm_layer if op == "lstm_layer" else sab_layer


def _to_dev(args, dtype=None):
    return {k: (None if v is None else v.detach().to(DEV, dtype or v.dtype).requires_grad_())
            for k, v in args.items()}


def _sched(s, dtype):
    return {k: v.to(DEV) for k, v in schedule_args(s, dtype).items()}


def _check(backend, op, args, sched, dtype, **kw):
    s = _sched(sched, dtype)
    ours = run_with_grads(_fn(backend, op), args, s, **kw)
    ref = run_with_grads(getattr(reference, op), args, s, **kw)
    compare(ours, ref, dtype, scorer=kw.get("scorer"))
    return ours, ref


SCHEDULES = {
    "full": lambda T: tr.full(T),
    "fixed4": lambda T: tr.fixed(T, 4),
    "artbp": lambda T: tr.artbp(T, 3.0, generator=torch.Generator().manual_seed(3)),
    "cut0": lambda T: tr.Schedule(torch.arange(T) % 5 == 0, torch.linspace(0.5, 1.5, T, dtype=torch.float64)),
}


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_matches_reference(backend, dtype, sched, bias):
    T, B, I, H = 13, 5, 3, 40   # H not a multiple of the tiles
    args = _to_dev(layer_args(T, B, I, H, dtype=dtype, bias=bias, sab=False))
    _check(backend, "lstm_layer", args, SCHEDULES[sched](T), dtype)


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("provisional", [True, False], ids=["provisional", "final"])
@pytest.mark.parametrize("sched", ["full", "fixed4", "cut0"])
def test_sab_matches_reference(backend, dtype, scorer, provisional, sched):
    T, B, I, H = 14, 4, 3, 24
    args = _to_dev(layer_args(T, B, I, H, A=7, scorer=scorer, dtype=dtype))
    _check(backend, "sab_layer", args, SCHEDULES[sched](T), dtype, k_top=3, k_att=2, scorer=scorer,
           provisional=provisional, need_attention=True)


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("op", ["lstm_layer", "sab_layer"])
def test_lengths(backend, op):
    T, B, I, H = 11, 5, 3, 16
    dtype = torch.float64
    args = _to_dev(layer_args(T, B, I, H, A=5, dtype=dtype, sab=op == "sab_layer"))
    lengths = torch.tensor([11, 0, 4, 1, 7], device=DEV)
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True, need_attention=True) if op == "sab_layer" else {}
    _check(backend, op, args, tr.fixed(T, 3), dtype, lengths=lengths, **kw)


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("k_att", [2, 100])
def test_one_slot_selected_by_every_step_and_row(backend, scorer, k_att):
    """k_att = 100 > T: the memory holds h0 only, so slot 0 is selected by every step of every row (the case
    a public sparse-attention backward got wrong: many queries on one key). k_att = 2 with a large h0 along
    att_wm (linear) keeps slot 0 first in every ranking too."""
    T, B, I, H, dtype = 16, 64, 3, 32, torch.float64
    args = layer_args(T, B, I, H, A=8, scorer=scorer, dtype=dtype)
    if scorer == "linear":
        with torch.no_grad():
            args["h0"].copy_(10 * args["att_wm"].sign().expand(B, H))
    args = _to_dev(args)
    (out, _), _ = _check(backend, "sab_layer", args, tr.full(T), dtype, k_top=2, k_att=k_att, scorer=scorer,
                         provisional=True, need_attention=True)
    if k_att == 100 or scorer == "linear":
        assert bool((out[3].indices[..., 0] == 0).all()), "slot 0 is not selected everywhere"


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("op", ["lstm_layer", "sab_layer"])
def test_bfloat16_against_float32_reference(backend, op):
    T, B, I, H = 12, 4, 3, 32
    base = layer_args(T, B, I, H, A=8, dtype=torch.float64, sab=op == "sab_layer")
    ours_args = _to_dev(base, torch.bfloat16)
    ref_args = {k: (None if v is None else v.detach().to(torch.float32).requires_grad_())
                for k, v in ours_args.items()}
    kw = dict(k_top=3, k_att=2, scorer="mlp", provisional=True) if op == "sab_layer" else {}
    sched = tr.fixed(T, 5)
    out, grads = run_with_grads(_fn(backend, op), ours_args, _sched(sched, torch.bfloat16), **kw)
    rout, rgrads = run_with_grads(getattr(reference, op), ref_args, _sched(sched, torch.float32), **kw)
    for a, b in zip(out[:3], rout[:3]):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b).abs().max() <= BF16_TOL["output"] * b.abs().max()
    bound = BF16_TOL["sab_grad" if op == "sab_layer" else "lstm_grad"]
    for name in grads:
        g, r = grads[name].float(), rgrads[name]
        assert torch.isfinite(g).all(), name
        assert (g - r).abs().max() <= bound * r.abs().max() + 1e-6, name


@pytest.mark.parametrize("op", ["lstm_layer", "sab_layer"])
def test_cuda_backend_nan_poisoned_buffers(op, poison):
    """Every fresh allocation (outputs, workspaces) filled with NaN: an element the kernels fail to write,
    or a workspace read before it is written, shows up."""
    _need_cuda()
    T, B, I, H, dtype = 10, 3, 3, 20, torch.float64
    args = _to_dev(layer_args(T, B, I, H, A=6, dtype=dtype, sab=op == "sab_layer"))
    kw = dict(k_top=2, k_att=3, scorer="mlp", provisional=False, need_attention=True) if op == "sab_layer" else {}
    (out, grads), _ = _check("cuda", op, args, tr.fixed(T, 4), dtype, **kw)
    assert all(torch.isfinite(o).all() for o in out[:3])
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("H", [64, 1024])
def test_cuda_lstm_persistent_and_step_sweeps_agree(dtype, H, monkeypatch):
    """FASTRNN_CUDA_LSTM_MODE=0 (a launch per step) and =1 (persistent where W_hh fits on chip: H = 64
    always, H = 1024 in float32/bfloat16 on an H100) give the same result up to summation order."""
    _need_cuda()
    T, B, I = 6, 8, 5
    args = _to_dev(layer_args(T, B, I, H, dtype=torch.float64, sab=False, scale=0.05), dtype)
    results = []
    for mode in ("0", "1"):
        monkeypatch.setenv("FASTRNN_CUDA_LSTM_MODE", mode)
        results.append(run_with_grads(_fn("cuda", "lstm_layer"), args, _sched(tr.fixed(T, 4), dtype)))
    (o0, g0), (o1, g1) = results
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for a, b in [*zip(o0[:3], o1[:3]), *((g0[k], g1[k]) for k in g0)]:
        assert (a.float() - b.float()).abs().max() <= tol * max(1.0, b.float().abs().max().item())


def test_auto_prefers_cuda_when_built():
    """backend="auto" on CUDA tensors: cuda where it is built, else triton (fastrnn/backends.py)."""
    from fastrnn.ops import cuda_build
    expected = "cuda" if cuda_build.built() else ("triton" if backends._layer_modules("triton") else "reference")
    assert backends.resolve("auto", DEV) == expected


# ---- streaming (docs/SPEC.md section 8, docs/CONTRACT.md "Streaming memory across calls") -----------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("k_att,provisional", [(1, True), (2, False), (3, True)])
def test_cuda_streaming_chunks_match_reference(dtype, scorer, k_att, provisional):
    """The cuda backend's chunked calls (memory in, new slots out, the gradient of later chunks flowing into
    earlier ones through the carried memory: grad_new_slots / dmemory) equal the reference's chunked calls:
    outputs, the last chunk's attention record, the carried memory and every gradient, float64 to 1e-9 and
    float32 to helpers.TOL; in float64 they also equal one call on the whole sequence."""
    _need_cuda()
    torch.manual_seed(1)
    T, B, I, H = 13, 3, 2, 20
    args = _to_dev(layer_args(T, B, I, H, A=6, scorer=scorer, dtype=dtype))
    sched = _sched(tr.fixed(T, 4), dtype)
    kw = dict(k_top=2, k_att=k_att, scorer=scorer, provisional=provisional, need_attention=True)
    assert_chunked_matches_reference(_fn("cuda", "sab_layer"), args, sched["cut"], sched["scale"], dtype, **kw)


def test_cuda_streaming_fresh_call_and_new_slots():
    """One call with return_slots, against the reference: fresh (memory None: slot 0 is h0, whose gradient
    joins dh0), and with a memory of more slots than rows (S0 > B: the carried keys' batched GEMM) at a
    step0 far from 0 (slots written off the k_att grid of the call). Outputs, new_slots, the record and the
    gradients of every input, memory included."""
    _need_cuda()
    T, B, I, H, dtype = 7, 2, 3, 16, torch.float64
    args = _to_dev(layer_args(T, B, I, H, A=5, dtype=dtype))
    sched = _sched(tr.full(T), dtype)
    kw = dict(k_top=3, k_att=2, scorer="mlp", provisional=False, need_attention=True)
    memory = (torch.randn(B, 9, H, dtype=dtype, device=DEV) * 0.5).requires_grad_()
    for mem, step0 in ((None, 0), (memory, 1001)):
        ours = _fn("cuda", "sab_layer")(**args, **sched, memory=mem, step0=step0, return_slots=True, **kw)
        ref = reference.sab_layer(**args, **sched, memory=mem, step0=step0, return_slots=True, **kw)
        S1 = (step0 + T) // 2 - step0 // 2
        assert ours[4].shape == ref[4].shape == (B, S1, H)
        for a, b in zip(ours[:3] + ours[4:], ref[:3] + ref[4:]):
            torch.testing.assert_close(a, b, **TOL[dtype])
        assert torch.equal(ours[3].indices, ref[3].indices) and torch.equal(ours[3].slot_steps, ref[3].slot_steps)
        leaves = dict(args, memory=mem)
        og = grads_of(ours[:3] + ours[4:], leaves)
        rg = grads_of(ref[:3] + ref[4:], leaves)
        assert og.keys() == rg.keys()
        for name in rg:
            torch.testing.assert_close(og[name], rg[name], **TOL[dtype], msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("T,B,k_att", NEW_SLOTS_VIEW_CASES)
@pytest.mark.parametrize("provisional", [True, False], ids=["provisional", "final"])
def test_cuda_new_slots_is_a_fresh_tensor(T, B, k_att, provisional):
    """new_slots is a new tensor where the written states' slice is contiguous as it stands (one slot; one
    row with k_att = 1), where a .contiguous() would return a view of y or hhat: no output of the op shares
    memory with another, and opcheck (schema: outputs must not alias; fake kernel; autograd registration)
    passes on the CUDA op."""
    _need_cuda()
    args = layer_args(T, B, 3, 4, A=3)
    sched = _sched(tr.fixed(T, 2), torch.float64)
    g = {k: v.detach().to(DEV).requires_grad_() for k, v in args.items()}
    op_args = (g["x"], g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"], g["att_wh"], g["att_wm"], g["att_vb"], g["h0"],
               g["c0"], sched["cut"], sched["scale"], None, None, 0, 2, k_att, "mlp", provisional)
    out = torch.ops.fastrnn.sab_forward(*op_args)
    assert out[11].shape == (B, T // k_att, 4)
    for i in range(11):
        assert not shares_memory(out[11], out[i]), f"new_slots aliases output {i}"
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, op_args)


@pytest.mark.parametrize("dtype,limit", [(torch.float32, 1741), (torch.float64, 1215), (torch.bfloat16, 1741)],
                         ids=["f32", "f64", "bf16"])
def test_cuda_k_top_above_the_shared_memory_limit_is_refused_by_name(dtype, limit):
    """The attention kernels keep k_top + 1 candidates per row in shared memory (csrc/cuda/sab.cuh,
    row_max_k): k_top at the limit runs, one more is refused with a message naming k_top, the limit and
    the dtype (not a failed launch)."""
    _need_cuda()
    T, B, I, H = 3, 2, 3, 8
    args = _to_dev(layer_args(T, B, I, H, A=4, dtype=torch.float64), dtype)
    kw = dict(**_sched(tr.full(T), dtype), k_att=1, scorer="mlp", provisional=True)
    y = _fn("cuda", "sab_layer")(**args, k_top=limit, **kw)[0]
    y.float().sum().backward()
    with pytest.raises(RuntimeError, match=rf"k_top must be <= {limit} for .* on CUDA .*got {limit + 1}"):
        _fn("cuda", "sab_layer")(**args, k_top=limit + 1, **kw)


# ---- per-row resets (docs/SPEC.md section 9, docs/CONTRACT.md "Per-row resets"; tests/test_reset.py on the CPU)
# and per-row schedules (cut, scale [T, B]) -------------------------------------------------------------------
def _row_case(dtype, scorer, case):
    """test_reset.LAYER_CASES[case] on the GPU in `dtype`: (args, schedule, per-row keywords, leaves to
    differentiate, memory, slot_offset, row_step0, step0) with a cut and a scale of its own inside the pieces."""
    T, B, where, streaming = LAYER_CASES[case]
    H = 4
    torch.manual_seed(3)
    args = _to_dev(layer_args(T, B, 3, H, A=5 if scorer == "mlp" else None, scorer=scorer), dtype)
    sched = dict(cut=torch.zeros(T, dtype=torch.bool, device=DEV), scale=torch.ones(T, dtype=dtype, device=DEV))
    sched["cut"][5] = True
    sched["scale"][7] = 0.5
    reset = _mask(T, B, where).to(DEV)
    if streaming:                     # rows carry different slot counts and counters in
        memory = (torch.randn(B, 4, H, dtype=torch.float64) * 0.5).to(DEV, dtype).requires_grad_()
        offset, counter, step0 = torch.tensor([1, 0, 3], device=DEV), torch.tensor([5, 7, 0], device=DEV), 9
        rows = dict(reset=reset, slot_offset=offset, row_step0=counter)
    else:
        memory, step0 = None, 0
        offset, counter = torch.zeros(B, dtype=torch.int64, device=DEV), torch.zeros(B, dtype=torch.int64, device=DEV)
        rows = dict(reset=reset)
    inputs = {**leaves(args), **({"memory": memory} if memory is not None else {})}
    return args, sched, rows, inputs, memory, offset, counter, step0


# float64: every case, scorer and slot state; float32: the two cases with resets, each scorer once
RESET_LAYER_PARAMS = [pytest.param(torch.float64, scorer, provisional, case,
                                   id=f"f64-{scorer}-{'provisional' if provisional else 'final'}-{case}")
                      for scorer in ("mlp", "linear") for provisional in (True, False) for case in LAYER_CASES]
RESET_LAYER_PARAMS += [pytest.param(torch.float32, scorer, provisional, case,
                                    id=f"f32-{scorer}-{'provisional' if provisional else 'final'}-{case}")
                       for scorer, provisional in (("mlp", True), ("linear", False)) for case in ("mixed", "stream")]


@pytest.mark.parametrize("dtype,scorer,provisional,case", RESET_LAYER_PARAMS)
def test_cuda_reset_layer_equals_pieces(dtype, scorer, provisional, case):
    """The cuda layer with resets (and, "stream", a left-padded carried memory with per-row slot offsets and
    counters) equals each row's pieces run separately through the reference's plain path (test_reset's
    _pieces_layer): outputs, new_slots, the record (indices exact, slot_steps of the appended slots as
    reset_plan numbers them) and every gradient, float64 to 1e-9, float32 to helpers.TOL; a row reset at
    step 0 gets exactly zero dh0, dc0, and the padding of the carried memory exactly zero gradient."""
    _need_cuda()
    args, sched, rows, inputs, memory, offset, counter, step0 = _row_case(dtype, scorer, case)
    T, B = args["x"].shape[:2]
    opts = dict(k_top=2, k_att=2, scorer=scorer, provisional=provisional)
    y, h_n, c_n, att, new = _fn("cuda", "sab_layer")(**args, **sched, **opts, **rows, need_attention=True,
                                                     memory=memory, step0=step0, return_slots=True)
    got = _grads(_weighted((y, h_n, c_n, new)), inputs)
    ey, eh, ec, eidx, ew, enew = _pieces_layer(args, sched, rows["reset"], memory=memory, slot_offset=offset,
                                               row_step0=counter, step0=step0, **opts)
    want = _grads(_weighted((ey, eh, ec, enew)), inputs)
    tol = TOL[dtype]
    for name, a, b in (("y", y, ey), ("h_n", h_n, eh), ("c_n", c_n, ec), ("new_slots", new, enew),
                       ("weights", att.weights, ew)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    assert torch.equal(att.indices, eidx)
    plan = reset_plan(T, B, 2, DEV, S0=1 if memory is None else memory.shape[1], step0=step0, **rows)
    assert torch.equal(att.slot_steps[:, att.slot_steps.shape[1] - plan.new_steps.shape[1]:], plan.new_steps)
    assert new.shape[1] == int(plan.appended.max())
    for name in want:
        if scorer == "linear" and name in ("att_wh", "att_vb"):
            continue                  # rounding noise on both sides (SPEC section 1.5)
        torch.testing.assert_close(got[name], want[name], **tol, msg=lambda m: f"d{name}: {m}")
    if memory is None:                # a row reset at step 0 never reads its h0, c0
        for b in rows["reset"][0].nonzero().flatten().tolist():
            assert not got["h0"][b].any() and not got["c0"][b].any()
    else:                             # padding of the carried memory gets exactly zero
        for b, off in enumerate(offset.tolist()):
            assert not got["memory"][b, :off].any()


def test_cuda_reset_bfloat16():
    """bfloat16 storage with resets, a left-padded memory and per-row counters: close to the float32
    reference on the same rounded inputs (helpers.BF16_TOL)."""
    _need_cuda()
    a16, sched16, rows = _streaming_reset_args(torch.bfloat16)
    a16 = {k: v.detach().to(DEV).requires_grad_() for k, v in a16.items()}
    a32 = {k: v.detach().float().requires_grad_() for k, v in a16.items()}
    rows = {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in rows.items()}
    sched16 = {k: v.to(DEV) for k, v in sched16.items()}
    sched32 = dict(cut=sched16["cut"], scale=sched16["scale"].float())
    kw = dict(k_top=2, k_att=2, scorer="mlp", provisional=True, **rows)
    out, g = run_with_grads(_fn("cuda", "sab_layer"), a16, sched16, **kw)
    out_ref, g_ref = run_with_grads(reference.sab_layer, a32, sched32, **kw)
    assert_bf16_close(out, g, out_ref, g_ref)


@pytest.mark.parametrize("scorer,slot_state", [("mlp", "final"), ("linear", "provisional")])
def test_cuda_reset_module_and_streaming_chunks(scorer, slot_state):
    """SABLSTM(reset=) on the cuda backend, two layers: equal to the reference module (which runs each row's
    pieces separately), and streamed in chunks across resets (a reset at a chunk's first step, inside chunks,
    at t = 0; a middle chunk without reset= on the per-row state) equal to its own one-shot call: outputs,
    selected slots, every gradient."""
    _need_cuda()
    T, B = 13, 5
    reset = _mask(T, B, MODULE_RESETS + [(4, 2)]).to(DEV)
    x = torch.randn(T, B, 3, dtype=f64, device=DEV, requires_grad=True)
    runs = {}
    for backend in ("reference", "cuda"):
        sab = _model(backend, attention=scorer, slot_state=slot_state, num_layers=2).to(DEV)
        y, (h_n, c_n), att = sab(x, reset=reset, return_attention=True)
        named = {**{f"d{k}": p for k, p in sab.named_parameters()}, "x": x}
        runs[backend] = (sab, named, (y, h_n, c_n), att, _grads(_weighted((y, h_n, c_n)), named))
    sab, named, one, att, want = runs["cuda"]
    _, _, ref, ref_att, ref_grads = runs["reference"]
    # the linear scorer's d att_wh and d att_b: rounding noise on both sides (SPEC section 1.5)
    compared = [n for n in want if scorer != "linear" or not n.startswith(("datt_wh", "datt_b"))]
    for name, a, b in zip(("y", "h_n", "c_n"), one, ref):
        torch.testing.assert_close(a, b, **TOL[f64], msg=lambda m: f"{name} vs reference: {m}")
    for k in range(2):
        assert torch.equal(_selected_steps(att[k]), _selected_steps(ref_att[k])), f"layer {k}"
    for name in compared:
        torch.testing.assert_close(want[name], ref_grads[name], **TOL[f64], msg=lambda m: f"{name}: {m}")

    state, ys, atts = None, [], []
    for i, (a, e) in enumerate([(0, 5), (5, 6), (6, 13)]):
        kw = dict(state=state) if state is not None else {}
        rkw = {} if i == 1 else dict(reset=reset[a:e])   # the middle chunk: no reset of its own
        yc, (hc, cc), attc, state = sab(x[a:e], return_state=True, return_attention=True, **kw, **rkw)
        ys.append(yc)
        atts.append(attc)
    assert not bool(reset[5].any()) and state.per_row
    got = _grads(_weighted((torch.cat(ys), hc, cc)), named)
    for name, a, b in zip(("y", "h_n", "c_n"), (torch.cat(ys), hc, cc), one):
        torch.testing.assert_close(a, b, **TOL[f64], msg=lambda m: f"chunked {name}: {m}")
    for k in range(2):
        sel = torch.cat([_selected_steps(a[k]) for a in atts])
        assert torch.equal(sel, _selected_steps(att[k])), f"chunked, layer {k}"
    for name in compared:
        torch.testing.assert_close(got[name], want[name], **TOL[f64], msg=lambda m: f"chunked {name}: {m}")
    assert state.row_steps.tolist() == [4, 1, 7, 2, 13]


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
@pytest.mark.parametrize("resets", [False, True], ids=["no-reset", "reset"])
def test_cuda_row_schedules_equal_each_rows_reference(scorer, resets):
    """cut and scale [T, B] (one truncation schedule per row, docs/CONTRACT.md; what the module passes when
    k_trunc meets resets): each row gets what the reference gives it alone under its own [T] schedule
    (outputs, new_slots, the record, every gradient: float64 to 1e-9), with and without resets (then with a
    left-padded memory and per-row counters); and a [T] schedule repeated over the rows as [T, B] is the [T]
    one."""
    _need_cuda()
    T, B, H = 10, 3, 8
    args = _to_dev(layer_args(T, B, 3, H, A=5, scorer=scorer))
    g = torch.Generator().manual_seed(7)
    cut = torch.rand(T, B, generator=g) < 0.3
    cut[0, 1] = True                                     # a cut at step 0: nothing into h0, c0 of row 1
    cut, scale = cut.to(DEV), (0.5 + torch.rand(T, B, generator=g, dtype=f64)).to(DEV)
    rows, memory = {}, None
    if resets:
        memory = (torch.randn(B, 3, H, dtype=f64) * 0.5).to(DEV).requires_grad_()
        rows = dict(reset=_mask(T, B, [(0, 2), (4, 0), (7, 0), (6, 1)]).to(DEV), memory=memory, step0=8,
                    slot_offset=torch.tensor([1, 0, 2], device=DEV), row_step0=torch.tensor([3, 0, 5], device=DEV))
    kw = dict(k_top=2, k_att=2, scorer=scorer, provisional=scorer == "mlp", need_attention=True, return_slots=True)
    inputs = {**leaves(args), **({"memory": memory} if memory is not None else {})}
    y, h_n, c_n, att, new = _fn("cuda", "sab_layer")(**args, cut=cut, scale=scale, **rows, **kw)
    weights = [torch.randn(o.shape, generator=g, dtype=f64).to(DEV) for o in (y, h_n, c_n, new)]
    got = _grads(sum((o * w).sum() for o, w in zip((y, h_n, c_n, new), weights)), inputs)
    loss = 0
    for b in range(B):
        one = {k: v[:, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v for k, v in args.items()}
        mine = {k: v if k == "step0" else v[:, b:b + 1] if k == "reset" else v[b:b + 1] for k, v in rows.items()}
        ry, rh, rc, ratt, rnew = reference.sab_layer(**one, cut=cut[:, b], scale=scale[:, b], **mine, **kw)
        S1 = rnew.shape[1]
        for name, a, e in (("y", y[:, b:b + 1], ry), ("h_n", h_n[b:b + 1], rh), ("c_n", c_n[b:b + 1], rc),
                           ("new_slots", new[b:b + 1, :S1], rnew), ("weights", att.weights[:, b:b + 1], ratt.weights)):
            torch.testing.assert_close(a, e, **TOL[f64], msg=lambda m: f"row {b} {name}: {m}")
        assert not new[b, S1:].any()                     # padding
        assert torch.equal(att.indices[:, b:b + 1], ratt.indices)
        steps = att.slot_steps[b:b + 1, :ratt.slot_steps.shape[-1]] if resets else att.slot_steps
        assert torch.equal(steps, ratt.slot_steps)
        loss = loss + sum((o * w).sum() for o, w in zip(
            (ry, rh, rc, rnew), (weights[0][:, b:b + 1], weights[1][b:b + 1], weights[2][b:b + 1],
                                 weights[3][b:b + 1, :S1])))
    want = _grads(loss, inputs)
    for name in want:
        if scorer == "linear" and name in ("att_wh", "att_vb"):
            continue                  # rounding noise on both sides (SPEC section 1.5)
        torch.testing.assert_close(got[name], want[name], **TOL[f64], msg=lambda m: f"d{name}: {m}")
    # one [T] schedule given as [T, B]: the same as given as [T]
    col = dict(cut=cut[:, 0].contiguous(), scale=scale[:, 0].contiguous())
    wide = {k: v.unsqueeze(1).expand(T, B).contiguous() for k, v in col.items()}
    a_out = _fn("cuda", "sab_layer")(**args, **col, **rows, **kw)
    b_out = _fn("cuda", "sab_layer")(**args, **wide, **rows, **kw)
    ga = _grads(_weighted(a_out[:3] + a_out[4:]), inputs)
    gb = _grads(_weighted(b_out[:3] + b_out[4:]), inputs)
    for a, e in [*zip(a_out[:3] + a_out[4:], b_out[:3] + b_out[4:]), *((ga[k], gb[k]) for k in ga)]:
        torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-15)


def _op_on_gpu(args):
    """An op argument tuple (test_sab.op_inputs / backward_inputs) with its tensors on the GPU (leaves kept)."""
    return tuple(a.detach().to(DEV).requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in args)


@pytest.mark.parametrize("scorer", ["mlp", "linear"])
def test_cuda_opcheck_with_resets(scorer):
    """torch.library.opcheck on the CUDA ops with resets, a left-padded carried memory and per-row counters
    (test_reset's op inputs): schema, fake kernel (new_slots of a data-dependent size), autograd registration."""
    _need_cuda()
    from test_reset import _op_inputs
    from test_sab import backward_inputs
    torch.library.opcheck(torch.ops.fastrnn.sab_forward.default, _op_on_gpu(_op_inputs(scorer, True, True)))
    fwd = _op_on_gpu(_op_inputs(scorer, False, True))
    out = torch.ops.fastrnn.sab_forward(*fwd)
    args = backward_inputs(fwd, out, [torch.randn_like(t) for t in out[:3]], torch.randn_like(out[11]))
    torch.library.opcheck(torch.ops.fastrnn.sab_backward.default, tuple(args))


# sab_forward's arguments: cut 10, scale 11, lengths 12, memory 13, step0 14, reset 15, slot_offset 16, row_step0 17
CUDA_OP_ERRORS = OP_ERRORS + [
    (10, lambda a: torch.zeros(6, 4, dtype=torch.bool), r"cut must have shape \[6, 3\], got \[6, 4\]"),
    (11, lambda a: torch.ones(6, 3, 1, dtype=torch.float64), r"scale must have shape \[6\], got \[6, 3, 1\]"),
]


@pytest.mark.parametrize("i,make,text", CUDA_OP_ERRORS, ids=[c[2] for c in CUDA_OP_ERRORS])
def test_cuda_op_checks_per_row_arguments(i, make, text):
    """The CUDA op refuses bad per-row arguments with the cpu op's words (csrc/checks.h; the values of
    slot_offset and row_step0 read from the device), and a schedule that is neither [T] nor [T, B]."""
    _need_cuda()
    from test_reset import _op_inputs
    args = list(_op_on_gpu(_op_inputs("mlp", False, True)))
    if i == 12:
        args[13] = None                   # lengths with memory has its own message
        args[16] = None
    args[i] = make(args).to(DEV)
    with pytest.raises(RuntimeError, match=f"fastrnn::sab_forward: {text}"):
        torch.ops.fastrnn.sab_forward(*args)


@pytest.mark.parametrize("scorer,slot_state", [("mlp", "final"), ("linear", "provisional")])
def test_cuda_reset_reads_no_unwritten_memory(poison, scorer, slot_state):
    """Every fresh allocation NaN (the poison fixture): a per-row path that read an entry it never wrote (a
    padding slot, a fresh slot's key or value, a table entry, a workspace) would show up as NaN. Two layers,
    streamed in two chunks across resets."""
    _need_cuda()
    T, B = 13, 5
    sab = _model("cuda", attention=scorer, slot_state=slot_state, num_layers=2).to(DEV)
    x = torch.randn(T, B, 3, dtype=f64, device=DEV, requires_grad=True)
    reset = _mask(T, B, MODULE_RESETS).to(DEV)
    y1, _, state = sab(x[:6], reset=reset[:6], return_state=True)
    y2, (h, c) = sab(x[6:], state=state, reset=reset[6:])
    grads = torch.autograd.grad(_weighted((y1, y2, h, c)), [x, *sab.parameters()])
    assert all(bool(torch.isfinite(t).all()) for t in (y1, y2, h, c, *grads))
