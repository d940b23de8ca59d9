"""Every shared host/device function, on the host: the LSTM cell forward and backward
(csrc/include/fastrnn/lstm_cell.h), the ranking with its tie rules, the threshold, the sparse weights and
their backward (sparse_attention.h: TopList, select_and_weigh, weights_backward), and the CUDA sweeps'
slot helpers (csrc/cuda/sab.cuh: slot_value, slot_written_at). tests/shared_math_check.cpp calls them and
prints the results; this file recomputes them in Python from docs/SPEC.md (sections 1.2-1.3) and
docs/CONTRACT.md. Compiled with nvcc (host code only, runs without a GPU) where it is installed, so the
CUDA headers' host parts are included; else with c++ and the csrc/include headers alone."""
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared_math") / "check"
    src = ROOT / "tests" / "shared_math_check.cpp"
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


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_lstm_cell_forward_and_backward(results):
    cases = [r for r in results["lines"] if r["kind"] == "cell"]
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
    cases = [r for r in results["lines"] if r["kind"] == "select"]
    assert len(cases) == 60
    assert any(r["count"] < min(r["k_top"], len(r["scores"])) for r in cases), "no case with ties at the threshold"
    for r in cases:
        k = r["k_top"]
        sel, w, tau, thr, denom = _select(r["scores"], k)
        assert r["idx"] == sel + [-1] * (k - len(sel))
        assert r["w"] == pytest.approx(w + [0.0] * (k - len(sel)), rel=1e-14, abs=1e-15)
        assert r["tau"] == tau and r["thr"] == thr and r["count"] == len(sel)
        assert r["denom"] == pytest.approx(denom, rel=1e-14)
        # weights backward: w_p = ã_p / (Σ ã + eps), ã_p = a_p - tau; dL/da_p and dL/dtau for L = Σ dw_p w_p
        dw = r["dw"]
        atil = [r["scores"][j] - tau for j in sel]
        Z = sum(atil) + 1e-7
        wdw = sum(a / Z * d for a, d in zip(atil, dw))
        da = [(d - wdw) / Z for d in dw]
        assert r["da"] == pytest.approx(da, rel=1e-12, abs=1e-14)
        assert r["dtau"] == pytest.approx(-sum(da), rel=1e-12, abs=1e-14)


def test_cuda_slot_helpers(results):
    if not results["with_cuda"]:
        pytest.skip("nvcc is not installed: csrc/cuda/sab.cuh's host parts need it")
    B, H, b = 3, 5, 2
    slots = [r for r in results["lines"] if r["kind"] == "slot"]
    assert len(slots) == 24
    for r in slots:
        j, k_att = r["j"], r["k_att"]
        if j == 0:
            assert r["base"] == "h0" and r["offset"] == b * H
        else:
            assert r["base"] == ("hhat" if r["provisional"] else "y")
            assert r["offset"] == ((j * k_att - 1) * B + b) * H
    written = [r for r in results["lines"] if r["kind"] == "written"]
    for r in written:
        t, k_att = r["t"], r["k_att"]
        assert r["slot"] == ((t + 1) // k_att if (t + 1) % k_att == 0 else 0)
