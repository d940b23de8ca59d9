"""fastrnn.profiling: ranges show in torch.profiler traces (and go to NVTX), a layer's backward range spans its
backward on every backend without changing any gradient, nothing records or changes when no profiler runs,
and nothing breaks a torch.compile graph; bench/profile.py writes a Chrome trace with the training step's
phases."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fastrnn
from fastrnn import profiling, reference

ROOT = Path(__file__).resolve().parents[1]


def _events(prof):
    return {e.name: e for e in prof.events()}


def _layer_args(T=6, B=3, I=2, H=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    h0, c0 = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    cut, scale = fastrnn.truncation.fixed(T, 3).cut, fastrnn.truncation.fixed(T, 3).scale
    return [x, *weights, h0, c0, cut.to(torch.float64) if cut.is_floating_point() else cut,
            scale.to(torch.float64)]


def _backends():
    names = ["reference"] + (["cpu"] if "cpu" in fastrnn.available_backends() else [])
    return [pytest.param(n, id=n) for n in names]


def _lstm_layer(backend):
    if backend == "reference":
        return reference.lstm_layer
    from fastrnn.ops import lstm
    return lstm.lstm_layer


def test_range_records_under_the_profiler_only():
    assert not profiling.recording()
    assert isinstance(profiling.range("fastrnn.test.idle"), type(profiling._NULL))  # nothing to record: no-op
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        assert profiling.recording()
        with profiling.range("fastrnn.test.block"):
            torch.ones(3).sum()
        profiling.ranged("fastrnn.test.function")(lambda: torch.ones(2) * 2)()
    names = _events(prof)
    assert "fastrnn.test.block" in names and "fastrnn.test.function" in names


@pytest.mark.parametrize("backend", _backends())
def test_layer_ranges_span_forward_and_backward_and_keep_the_gradients(backend):
    fn = _lstm_layer(backend)
    args = _layer_args()
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    y, h, c = fn(*args)
    expected = torch.autograd.grad((y.sum() + h.sum() + c.square().sum()), inputs)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y2, h2, c2 = profiling.layer("fastrnn.lstm0", fn, *args)
        grads = torch.autograd.grad((y2.sum() + h2.sum() + c2.square().sum()), inputs)
    for a, b in zip((y2, h2, c2, *grads), (y, h, c, *expected)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    events = list(prof.events())
    fwd = [e for e in events if e.name == "fastrnn.lstm0.forward"]
    bwd = [e for e in events if e.name == "fastrnn.lstm0.backward"]
    assert len(fwd) == 1 and len(bwd) == 1, sorted({e.name for e in events})
    f, b = fwd[0].time_range, bwd[0].time_range
    assert f.end <= b.start  # the backward range opens after the forward
    if backend == "cpu":  # the op's backward kernel runs inside the backward range
        [kernel] = [e for e in events if e.name == "fastrnn::lstm_backward"]
        assert b.start <= kernel.time_range.start and kernel.time_range.end <= b.end


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.SABLSTM])
def test_modules_put_each_layer_in_forward_and_backward_ranges(backend, cls):
    model = cls(2, 4, num_layers=2, backend=backend, dtype=torch.float64)
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(model(x)[0].sum(), x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (got,) = torch.autograd.grad(model(x)[0].sum(), x)
    kind = "lstm" if cls is fastrnn.LSTM else "sab"
    names = _events(prof)
    for layer in (0, 1):
        for phase in ("forward", "backward"):
            assert f"fastrnn.{kind}.layer{layer}.{phase}" in names, sorted(n for n in names if "fastrnn" in n)
    assert torch.equal(got, expected)   # same calls, same thread count: the ranges change no value


def test_layer_is_a_plain_call_when_nothing_records():
    args = _layer_args()
    y, h, c = profiling.layer("fastrnn.lstm0", reference.lstm_layer, *args)
    assert y.grad_fn is not None and "_BackwardStart" not in type(y.grad_fn).__name__


def test_ranges_without_the_nvtx_package_and_with_an_nvtx_tool(monkeypatch):
    # without the package: torch.profiler ranges only
    monkeypatch.setattr(profiling, "_nvtx", None)
    monkeypatch.setattr(profiling, "_NVTX_ON", False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with profiling.range("fastrnn.test.no_nvtx"):
            pass
    assert "fastrnn.test.no_nvtx" in _events(prof)
    monkeypatch.undo()
    nvtx = pytest.importorskip("nvtx")
    # as under nsys: NVTX calls on (with no tool attached they record nothing, and must not fail)
    monkeypatch.setattr(profiling, "_NVTX_ON", True)
    assert profiling.recording()
    with profiling.range("fastrnn.test.nvtx"):
        y, h, c = profiling.layer("fastrnn.lstm0", reference.lstm_layer, *_layer_args())
    (y.sum() + c.sum()).backward()
    assert nvtx.enabled() in (True, False)


def test_ranges_leave_a_compiled_graph_whole():
    w = torch.randn(3, 4, requires_grad=True)

    def layer_fn(x, w):
        return torch.tanh(x @ w), x.sum()

    def f(x):
        with profiling.range("fastrnn.test.compiled"):
            y, s = profiling.layer("fastrnn.test_layer", layer_fn, x, w)
        return y.sum() + s

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    x = torch.randn(5, 3)
    with profile(activities=[ProfilerActivity.CPU]):  # recording: the helpers must still not break the graph
        torch.testing.assert_close(compiled(x), f(x))
    torch._dynamo.reset()


def test_bench_profile_writes_a_chrome_trace_with_the_step_phases(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_profile", ROOT / "bench" / "profile.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    [trace] = bench.main(["--device", "cpu", "--T", "5", "--batch-size", "4", "--hidden", "8", "--iters", "2",
                          "--warmup", "1", "--out", str(tmp_path)])
    events = json.loads(Path(trace).read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    for phase in ("data", "forward", "loss", "backward", "clip", "update"):
        assert f"fastrnn.train_step.{phase}" in names, phase
    assert "iteration 1" in names
    out = capsys.readouterr().out
    assert "Self CPU" in out and f"trace: {trace}" in out


def test_bench_profile_stands_aside_for_the_standard_library_profile():
    """bench/ first on sys.path (pytest run in bench/: pytest-benchmark imports cProfile, which imports
    `profile`): the import still gets the standard library's module."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cProfile, profile; "
            "assert 'bench' not in profile.__file__, profile.__file__; cProfile.run('1 + 1')")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "bench")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
