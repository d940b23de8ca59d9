"""GPU tests of the cuda and triton backends on CUDA tensors against the reference (docs/SPEC.md section 2):
float64 to 1e-9 relative (helpers.TOL), float32 at helpers.TOL, bfloat16 coarsely against the float32
reference on the same rounded inputs (helpers.BF16_TOL); NaN-poisoned buffers; a slot selected by every
step and every row; lengths; truncation schedules (fixed, ARTBP, a hand-made cut at step 0); both sweeps
of the CUDA LSTM (persistent and one launch per step); streaming a SAB layer across calls (docs/SPEC.md
section 8: memory in, new slots out, the gradient through the carried memory), chunk by chunk against the
reference's chunks, as tests/test_streaming.py does on the CPU; new_slots a fresh tensor where the written
states' slice is contiguous as it stands (opcheck on the CUDA op); k_top above the shared-memory limit of the
attention kernels refused by name.

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
from helpers import (BF16_TOL, NEW_SLOTS_VIEW_CASES, TOL, compare, layer_args, run_with_grads,  # noqa: E402
                     schedule_args, shares_memory)
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
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")
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
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")
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
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")
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
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")
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
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")
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
    if backends._layer_modules("cuda") is None:
        pytest.skip(f"cuda backend unavailable: {backends._why_unavailable('cuda')}")
    T, B, I, H = 3, 2, 3, 8
    args = _to_dev(layer_args(T, B, I, H, A=4, dtype=torch.float64), dtype)
    kw = dict(**_sched(tr.full(T), dtype), k_att=1, scorer="mlp", provisional=True)
    y = _fn("cuda", "sab_layer")(**args, k_top=limit, **kw)[0]
    y.float().sum().backward()
    with pytest.raises(RuntimeError, match=rf"k_top must be <= {limit} for .* on CUDA .*got {limit + 1}"):
        _fn("cuda", "sab_layer")(**args, k_top=limit + 1, **kw)
