"""Every shared host/device function (csrc/include/fastrnn/*.h, FASTRNN_HD), on the host: the scalar math
policy (scalar_math.h), the LSTM cell forward and backward (lstm_cell.h), the scorers' terms and their
backward (attention_score.h), the ranking with its tie rules, the threshold, the sparse weights, their backward
and the threshold slot's gradient (sparse_attention.h), the slot numbering of a call, streaming included, and
where a slot's value lies (memory_slots.h), the per-row slot tables of a call with resets and where their
entries lie (row_slots.h, against fastrnn.ops.streaming.reset_plan), and what lengths and the schedule (a
[T] or a [T, B] one) do to one element of the reverse sweep (reverse_sweep.h). tests/shared_math_check.cpp
calls them and prints the results; this file recomputes them in Python from docs/SPEC.md (sections 1.2-1.3,
8, 9) and docs/CONTRACT.md, and checks that the
check program calls every FASTRNN_HD function of those headers. Compiled with nvcc (-x cu: the headers are
compiled for the device as well; host code runs without a GPU) where it is installed, else with c++ and the
csrc/include headers alone."""
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastrnn.ops.attention import slot_steps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "csrc" / "include" / "fastrnn"
CHECK = ROOT / "tests" / "shared_math_check.cpp"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared_math") / "check"
    src = CHECK
    inc = [f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}"]
    if shutil.which("nvcc"):
        cmd = ["nvcc", "-std=c++17", "-x", "cu", "-DFASTRNN_WITH_CUDA_HEADERS", *inc, str(src), "-o", str(out)]
    elif shutil.which("c++"):
        cmd = ["c++", "-std=c++17", "-O1", *inc, str(src), "-o", str(out)]
    else:
        pytest.skip("no C++ compiler (nvcc or c++)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = subprocess.run([str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    return {"with_cuda": "nvcc" in cmd[0], "lines": lines}


def _of(results, kind):
    return [r for r in results["lines"] if r["kind"] == kind]


def _shared_functions():
    """{header: [names]} of every FASTRNN_HD function (member functions and constructors included)."""
    found = {}
    for header in sorted(SHARED.glob("*.h")):
        for line in header.read_text().splitlines():
            code = line.split("//")[0]
            if "FASTRNN_HD" not in code or code.lstrip().startswith("#"):
                continue
            m = re.search(r"(\w+)\s*\(", code.split("FASTRNN_HD", 1)[1])
            assert m, f"{header.name}: cannot read the function name of: {line.strip()}"
            found.setdefault(header.name, []).append(m.group(1))
    return found


def test_every_shared_function_is_exercised():
    """Each FASTRNN_HD function of csrc/include/fastrnn/ is called by tests/shared_math_check.cpp (and its
    header included there), so a CPU test runs every piece of the math the GPU runs."""
    code = "\n".join(line.split("//")[0] for line in CHECK.read_text().splitlines())
    shared = _shared_functions()
    assert {"lstm_cell.h", "attention_score.h", "sparse_attention.h", "memory_slots.h", "reverse_sweep.h",
            "row_slots.h", "scalar_math.h"} <= set(shared), shared
    missing = [f"{h}: {name}" for h, names in shared.items() for name in names
               if not re.search(rf"\b{name}\b", code)]
    assert not missing, f"shared functions the check program never calls: {missing}"
    headers = [h for h in shared if f'#include "fastrnn/{h}"' not in code]
    assert not headers, f"shared headers the check program does not include: {headers}"


def _defines(code, name):
    """Whether C++ `code` (comments stripped) declares or defines a function `name`: a return type, then
    the name and its parameter list, at the start of a line (not a call: no `=`, `return`, `::` before it)."""
    for line in code.splitlines():
        m = re.match(rf"\s*([\w:<>*&\s]*?[\s*&])\s*\b{name}\s*\(", line)
        if m and m.group(1).strip() and not re.search(r"\b(return|if|else)\b", m.group(1)):
            return True
    return False


def test_no_copy_of_the_shared_math_in_the_device_code():
    """The pieces that moved into csrc/include/fastrnn/ are defined there only: neither device's code keeps
    its own (both call the shared ones)."""
    moved = ("slot_value", "slot_written_at", "num_slots", "slot_step", "output_grad", "carried_dc", "last_step",
             "add_threshold_grad", "selected_count", "mlp_score_term", "linear_score", "row_step", "row_slot_walk",
             "row_slot_value", "schedule_entry")
    for path in sorted([*(ROOT / "csrc" / "cpu").iterdir(), *(ROOT / "csrc" / "cuda").iterdir()]):
        if path.suffix not in (".h", ".cuh", ".cpp", ".cu"):
            continue
        code = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
        own = [name for name in moved if _defines(code, name)]
        own += [name for name in ("SlotGrid", "ScalarMath", "RowWalk", "RowStep")
                if re.search(rf"\b(struct|class)\s+{name}\b", code)]
        assert not own, f"{path.relative_to(ROOT)} defines its own {own}"
    shared = "\n".join(p.read_text() for p in SHARED.glob("*.h"))
    assert all(_defines(shared, name) for name in moved if name not in ("slot_written_at", "num_slots",
                                                                         "slot_step"))


def test_scalar_math(results):
    cases = _of(results, "scalar")
    assert len(cases) == 12
    for r in cases:
        x, a, b = r["x"], r["a"], r["b"]
        assert r["sigmoid"] == pytest.approx(_sig(x), rel=1e-15)
        assert r["tanh"] == pytest.approx(math.tanh(x), rel=1e-15, abs=1e-16)
        assert r["fma"] == pytest.approx(a * b + x, rel=1e-15, abs=1e-15)
        assert r["sigmoid_f32"] == pytest.approx(_sig(x), rel=1e-6)
        assert r["tanh_f32"] == pytest.approx(math.tanh(x), rel=1e-6, abs=1e-7)
        assert r["fma_f32"] == pytest.approx(a * b + x, rel=1e-6, abs=1e-6)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_lstm_cell_forward_and_backward(results):
    cases = _of(results, "cell")
    assert len(cases) == 20
    for r in cases:
        pi, pf, pg, po = r["pre"]
        cp = r["c_prev"]
        i, f, g, o = _sig(pi), _sig(pf), math.tanh(pg), _sig(po)
        c = f * cp + i * g
        h = o * math.tanh(c)
        for a, b in zip(r["fwd"], (i, f, g, o, c, h)):
            assert a == pytest.approx(b, rel=1e-14, abs=1e-15)
        assert r["fwd_f32"][0] == pytest.approx(c, rel=1e-5, abs=1e-6)
        assert r["fwd_f32"][1] == pytest.approx(h, rel=1e-5, abs=1e-6)

        # backward by central differences of L = dh * h + dc_next * c over the pre-activations and c_prev
        def loss(p):
            ii, ff, gg, oo = _sig(p[0]), _sig(p[1]), math.tanh(p[2]), _sig(p[3])
            cc = ff * p[4] + ii * gg
            return r["dh"] * oo * math.tanh(cc) + r["dc_next"] * cc
        base = [pi, pf, pg, po, cp]
        eps = 1e-6
        for k, got in enumerate(r["bwd"]):
            up, dn = list(base), list(base)
            up[k] += eps
            dn[k] -= eps
            assert got == pytest.approx((loss(up) - loss(dn)) / (2 * eps), rel=1e-6, abs=1e-8), k


def _select(scores, k_top):
    """SPEC 1.3 in Python: stable descending ranking, threshold, relu with relu'(0) = 0, normalised."""
    ranking = sorted(range(len(scores)), key=lambda j: -scores[j])   # sorted() is stable: lower slot first
    if len(scores) > k_top:
        thr = ranking[k_top]
        tau = scores[thr]
        kept = ranking[:k_top]
    else:
        thr = ranking[-1]
        tau = scores[thr] - 1
        kept = ranking
    sel = sorted(j for j in kept if scores[j] - tau > 0)
    a = {j: scores[j] - tau for j in sel}
    denom = sum(a[j] for j in sel) + 1e-7
    return sel, [a[j] / denom for j in sel], tau, thr, denom


def test_selection_tie_rules_and_weights_backward(results):
    cases = _of(results, "select")
    assert len(cases) == 60
    assert any(r["count"] < min(r["k_top"], len(r["scores"])) for r in cases), "no case with ties at the threshold"
    for r in cases:
        k = r["k_top"]
        sel, w, tau, thr, denom = _select(r["scores"], k)
        assert r["idx"] == sel + [-1] * (k - len(sel))
        assert r["w"] == pytest.approx(w + [0.0] * (k - len(sel)), rel=1e-14, abs=1e-15)
        assert r["tau"] == tau and r["thr"] == thr and r["count"] == len(sel) == r["selected_count"]
        assert r["denom"] == pytest.approx(denom, rel=1e-14)
        # weights backward: w_p = ã_p / (Σ ã + eps), ã_p = a_p - tau; dL/da_p and dL/dtau for L = Σ dw_p w_p
        dw = r["dw"]
        atil = [r["scores"][j] - tau for j in sel]
        Z = sum(atil) + 1e-7
        wdw = sum(a / Z * d for a, d in zip(atil, dw))
        da = [(d - wdw) / Z for d in dw]
        assert r["da"] == pytest.approx(da, rel=1e-12, abs=1e-14)
        assert r["dtau"] == pytest.approx(-sum(da), rel=1e-12, abs=1e-14)
        # dL/dtau goes to the threshold slot: into its dL/da when it is selected, else scored on its own
        assert r["thr_selected"] == (thr in sel)
        da_thr = list(r["da"])
        if thr in sel:
            da_thr[sel.index(thr)] += r["dtau"]
        assert r["da_thr"] == da_thr
    assert any(r["thr_selected"] for r in cases) and not all(r["thr_selected"] for r in cases)


def test_selection_ranks_nan_as_torch_sort(results):
    """A NaN score ranks above every number, equal NaNs by slot order (torch.sort(descending=True, stable=True),
    the reference's ranking), and a NaN or infinite score makes the row's weights NaN exactly where the
    reference's sparse_weights has NaN: NaN propagates as in the reference instead of being dropped."""
    import torch

    from fastrnn import reference
    nan, inf = float("nan"), float("inf")
    cases = [[1.0, nan, 2.0, nan, 0.5], [nan, 3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 3.0, 4.0, inf],
             [1.0, -inf, 2.0, 3.0, 0.0], [0.5, 2.0, 0.5, 1.0, 2.0]]
    rows = _of(results, "rank_nan")
    assert len(rows) == len(cases) * 4
    for r in rows:
        a = torch.tensor([cases[r["case"]]], dtype=torch.float64)
        order = torch.sort(a, dim=1, descending=True, stable=True).indices[0].tolist()
        assert r["ranked"] == order[:r["k_top"] + 1], r
        assert r["any_nan"] == bool(reference.sparse_weights(a, r["k_top"]).isnan().any()), r
    assert any(r["any_nan"] for r in rows) and not all(r["any_nan"] for r in rows)
    assert _of(results, "ranks_above")[0]["pairs"] == [1, 0, 0, 1, 0, 1]


def test_score_terms_forward_and_backward(results):
    cases = _of(results, "score")
    assert len(cases) == 16
    for r in cases:
        q, p, v, acc, da = r["q"], r["p"], r["v"], r["acc"], r["da"]
        u = math.tanh(q + p)
        assert r["term"] == pytest.approx(acc + v * u, rel=1e-14, abs=1e-15)
        assert r["term_f32"] == pytest.approx(acc + v * u, rel=1e-6, abs=1e-6)
        # backward by central differences of da * (v tanh(q + p)), accumulated onto d0
        eps = 1e-6

        def a(vv, qq, pp):
            return da * vv * math.tanh(qq + pp)
        num = [(a(v + eps, q, p) - a(v - eps, q, p)) / (2 * eps), (a(v, q + eps, p) - a(v, q - eps, p)) / (2 * eps),
               (a(v, q, p + eps) - a(v, q, p - eps)) / (2 * eps)]
        for got, got32, d0, want in zip(r["d"], r["d_f32"], r["d0"], num):
            assert got == pytest.approx(d0 + want, rel=1e-7, abs=1e-8)
            assert got32 == pytest.approx(d0 + want, rel=1e-5, abs=1e-5)
        assert r["linear"] == (r["key"] + r["query"]) + r["bias"]   # summed in the reference's order


def test_slot_numbering_matches_slot_steps(results):
    """SlotGrid and slot_value against fastrnn.ops.attention.slot_steps (the global step of every slot of a
    call, docs/SPEC.md section 8) and the reference's rule: a slot is written after step t when
    (step0 + t + 1) % k_att == 0; carried slots are read from memory (h0 when S0 = 1), new ones from y (final)
    or hhat (provisional) at the step that wrote them."""
    cases = _of(results, "slots")
    assert len(cases) == 2 * 4 * 3
    assert {(r["S0"], r["step0"]) for r in cases} >= {(1, 0), (3, 5)}
    for r in cases:
        T, S0, step0, k_att, B, H, b = (r[k] for k in ("T", "S0", "step0", "k_att", "B", "H", "b"))
        steps = slot_steps(T, k_att, S0=S0, step0=step0).tolist()
        local = [s - step0 for s in steps[S0:]]                   # the steps of this call that wrote a slot
        assert local == [t for t in range(T) if (step0 + t + 1) % k_att == 0]
        assert r["n_mem"] == [S0 + sum(1 for s in local if s < t) for t in range(T + 1)]
        assert r["written"] == [S0 + local.index(t) if t in local else -1 for t in range(T)]
        assert r["step_of"] == local
        for j, prov, base, offset in r["value"]:
            if j < S0:
                assert (base, offset) == ("carried", (b * S0 + j) * H)
            else:
                assert (base, offset) == ("hhat" if prov else "y", (local[j - S0] * B + b) * H)
    fresh = [r for r in cases if r["S0"] == 1 and r["step0"] == 0]
    for r in fresh:  # a fresh call: slot j >= 1 holds step j * k_att - 1, S = 1 + T // k_att
        assert r["step_of"] == [j * r["k_att"] - 1 for j in range(1, len(r["step_of"]) + 1)]
        assert r["n_mem"][-1] == 1 + r["T"] // r["k_att"]


def test_reverse_sweep_pieces(results):
    last = _of(results, "last")
    assert [(r["len"], r["last"], r["last_no_len"]) for r in last] == [(4, 3, 6), (0, -1, 6), (7, 6, 6)]
    grads = _of(results, "output_grad")
    assert len(grads) == 25
    for r in grads:
        t, lst, dy, dh_n = r["t"], r["last"], r["dy"], r["dh_n"]
        want = 0.0 if t > lst else (dy + dh_n if t == lst else dy)
        assert r["g"] == want
        assert r["g_f32"] == pytest.approx(want, rel=1e-6, abs=1e-6)
        if t > lst:  # past the row's length dy is ignored, even a NaN
            assert r["g_nan_dy"] == 0.0
        else:
            assert math.isnan(r["g_nan_dy"])
    carried = _of(results, "carried_dc")
    assert len(carried) == 8 and any(r["cut"] and math.isnan(r["dc_prev"]) for r in carried)
    for r in carried:
        if r["cut"]:  # a cut is a detach: exactly zero, not even a NaN crosses it
            assert r["out"] == 0.0 and r["out_f32"] == 0.0
        elif math.isnan(r["dc_prev"]):
            assert math.isnan(r["out"]) and math.isnan(r["out_f32"])
        else:
            assert r["out"] == r["dc_prev"] * r["scale"]
            assert r["out_f32"] == pytest.approx(r["dc_prev"] * r["scale"], rel=1e-6, abs=1e-7)


def test_row_slot_tables_match_reset_plan(results):
    """row_slots.h's walk (the cpu and cuda ops' per-row tables) against fastrnn.ops.streaming.reset_plan (the
    module's and triton's bookkeeping, docs/CONTRACT.md "Per-row resets"): per row and step the window [lo, hi)
    (lo: the last reset's fresh slot, or the row's offset; hi: the carried entries and every slot appended
    before the step's own write), the written slot where reset_plan writes, the appended count, base, and the
    appended slots' sources in table order (a fresh slot -1, a written one its step), which number the slots as
    reset_plan's new_steps do; row_step alone gives the same windows and the fresh slots; row_slot_value reads
    carried entries from the memory, written ones from y / hhat at their step, fresh ones and padding as zeros,
    and without tables (src nullptr) is slot_value."""
    import torch

    from fastrnn.ops.streaming import PAD_STEP, reset_plan
    cases = _of(results, "row_slots")
    assert len(cases) == 5 and any(r["offset"] for r in cases) and any(not r["has_reset"] for r in cases)
    for r in cases:
        T, B, S0, step0, k_att = (r[k] for k in ("T", "B", "S0", "step0", "k_att"))
        reset = torch.tensor(r["reset"], dtype=torch.bool).reshape(T, B)
        offset = None if r["offset"] is None else torch.tensor(r["offset"])
        counter = None if r["counter"] is None else torch.tensor(r["counter"])
        plan = reset_plan(T, B, k_att, torch.device("cpu"), S0=S0, step0=step0,
                          reset=reset if r["has_reset"] else None, slot_offset=offset, row_step0=counter)
        lo, hi, wr = (torch.tensor(r[k]).reshape(T, B) for k in ("lo", "hi", "wr"))
        assert r["appended"] == plan.appended.tolist()
        S1 = max(r["appended"])
        src = torch.tensor(r["src"], dtype=torch.int64).reshape(B, S1)
        assert torch.equal(wr >= 0, plan.writes)
        events = (reset.long() + plan.writes.long()).cumsum(0) - plan.writes.long()   # appended before t's write
        assert torch.equal(hi, S0 + events)
        assert torch.equal(wr, torch.where(plan.writes, hi, -1))
        start = torch.zeros(B, dtype=torch.int64) if offset is None else offset
        fresh = torch.where(reset, hi - 1, -1)
        assert torch.equal(lo, torch.maximum(fresh.cummax(0).values, start.expand(T, B)))
        assert torch.equal(lo[-1], plan.base)
        for b in range(B):
            n = r["appended"][b]
            assert src[b, n:].eq(-1).all()                            # padding
            for i in range(n):
                t = int(src[b, i])
                if t >= 0:                                            # written after step t: wr says so
                    assert wr[t, b] == S0 + i and plan.new_steps[b, i] == step0 + t
                else:                                                 # a fresh slot: lo starts there at a reset
                    (steps,) = torch.nonzero(reset[:, b] & (lo[:, b] == S0 + i), as_tuple=True)
                    assert len(steps) == 1 and plan.new_steps[b, i] == step0 + int(steps[0]) - 1
            assert plan.new_steps[b, n:].eq(PAD_STEP).all()
        steps = torch.tensor(r["steps_row0"])                          # [lo, hi, fresh, wr] along row 0
        assert torch.equal(steps[:, 0], lo[:, 0]) and torch.equal(steps[:, 1], hi[:, 0])
        assert torch.equal(steps[:, 3], wr[:, 0])
        assert torch.equal(steps[:, 2], torch.where(reset[:, 0], lo[:, 0], -1))
        H = r["H"]
        for b, j, prov, region, at in r["value"]:
            if j < S0:
                assert (region, at) == ("carried", (b * S0 + j) * H)
            elif src[b, j - S0] < 0:
                assert region == "zeros"
            else:
                assert (region, at) == ("hhat" if prov else "y", (int(src[b, j - S0]) * B + b) * H)
        assert r["plain_same"]


def test_schedule_entry(results):
    """A [T] schedule is every row's (entry t), a [T, B] one step-major (entry t * B + b)."""
    cases = _of(results, "schedule_entry")
    assert len(cases) == 24
    for r in cases:
        assert r["entry"] == (r["t"] * r["B"] + r["b"] if r["rows"] else r["t"])
