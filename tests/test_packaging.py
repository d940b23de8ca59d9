"""Packaging: `pip wheel` of a copy of the repository builds the C++ ops into the wheel (scikit-build-core
driving CMakeLists.txt), the wheel installs into a fresh virtual environment and runs the cpu backend
there; without the library, `import fastrnn` warns once, naming the fix.

Nothing is downloaded: the build runs with --no-build-isolation against this environment's torch and
scikit-build-core, pip runs with --no-index, and the fresh environment reaches this environment's
packages (torch, numpy, triton, ...) through a .pth file instead of installing its own.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["fastrnn", "fastrnn.ops", "fastrnn.tasks", "fastrnn.training", "fastrnn.experiments",
               "fastrnn.kernels"]

# Run inside the fresh environment, outside the repository: the installed package, its library and its
# subpackages; then LSTM and SABLSTM forward and backward on backend="cpu" against the reference.
_CHECK_INSTALLED = r"""
import importlib, json, sys, warnings
warnings.simplefilter("error")                       # a missing-library warning would fail here
import torch
import fastrnn
from fastrnn import _native
prefix = sys.argv[1]
assert fastrnn.__file__.startswith(prefix), fastrnn.__file__
assert str(_native.LIBRARY).startswith(prefix) and _native.LIBRARY.exists(), _native.LIBRARY
assert "cpu" in fastrnn.available_backends(), _native.load_error()
for name in sys.argv[2].split(","):
    assert importlib.import_module(name).__file__.startswith(prefix), name
f64 = torch.float64
worst = {}
for name, cls, kw in [("lstm", fastrnn.LSTM, {}), ("sab", fastrnn.SABLSTM, dict(k_top=2, k_att=2, k_trunc=3))]:
    torch.manual_seed(0)
    ref = cls(3, 5, 2, backend="reference", dtype=f64, **kw)
    cpu = cls(3, 5, 2, backend="cpu", dtype=f64, **kw)
    cpu.load_state_dict(ref.state_dict())
    x = torch.randn(8, 4, 3, dtype=f64)
    results = []
    for m in (cpu, ref):
        xs = x.clone().requires_grad_()
        y, (h, c) = m(xs)
        (y.square().sum() + h.sum() + c.sum()).backward()
        results.append([y, h, c, xs.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    worst[name] = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item() for a, b in zip(*results))
print(json.dumps(worst))
"""


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _copy_repository(dest: Path) -> None:
    """The files a clone would have (tracked, plus untracked but not ignored): no build, no library."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist): everything but the build outputs
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "build", "_lib", "results",
                                                                  ".cache", "__pycache__"))
        return
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _no_download(proc) -> None:
    text = proc.stdout + proc.stderr
    assert "Downloading" not in text and "Collecting" not in text.replace("Processing", ""), text[-3000:]


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                    reason="cmake or a C++ compiler is missing")
def test_wheel_builds_the_ops_installs_in_a_fresh_venv_and_runs_the_cpu_backend(tmp_path):
    pytest.importorskip("scikit_build_core", reason="the build backend (scripts/setup.sh installs it)")
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    _copy_repository(src)
    assert not (src / "fastrnn" / "_lib").exists()
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)

    # pip wheel: scikit-build-core runs CMake against this environment's torch
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-index", "--no-build-isolation", "--no-deps",
                  "-w", str(dist), str(src)], env=env, timeout=600)
    _no_download(built)
    [wheel] = dist.glob("fastrnn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fastrnn/_lib/libfastrnn_cpu.so" in names
    for package in SUBPACKAGES:
        assert package.replace(".", "/") + "/__init__.py" in names, package
    assert not any("__pycache__" in n for n in names)

    # a fresh venv that reaches this environment's packages through a .pth (nothing big is installed)
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    outer = Path(torch.__file__).resolve().parents[1]
    (site / "_outer_site_packages.pth").write_text(f"{outer}\n")
    installed = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", "--no-deps",
                      str(wheel)], env=env, timeout=300)
    _no_download(installed)

    checked = _run([str(py), "-c", _CHECK_INSTALLED, str(venv), ",".join(SUBPACKAGES)], cwd=tmp_path,
                   env=env, timeout=300)
    worst = __import__("json").loads(checked.stdout.strip().splitlines()[-1])
    assert set(worst) == {"lstm", "sab"}, worst

    # the same install without its library: the import warns once, naming the fix (a reinstall from source)
    (site / "fastrnn" / "_lib" / "libfastrnn_cpu.so").unlink()
    warned = _run([str(py), "-c", "import fastrnn, fastrnn.modules; print(fastrnn.available_backends())"],
                  cwd=tmp_path, env=env, timeout=120)
    assert warned.stderr.count("UserWarning") == 1, warned.stderr
    assert "pip install --no-build-isolation" in warned.stderr and "'cpu'" not in warned.stdout


def test_missing_library_warns_once_naming_the_fix(monkeypatch, tmp_path):
    from fastrnn import _native
    monkeypatch.setattr(_native, "LIBRARY", tmp_path / "libfastrnn_cpu.so")
    monkeypatch.setattr(_native, "_warned", False)
    with pytest.warns(UserWarning, match="build_native.sh") as caught:
        _native.warn_if_missing()
        _native.warn_if_missing()
    assert len(caught) == 1
    assert "backend='auto' runs CPU tensors on the slow reference" in str(caught[0].message)


def test_pyproject_requires_a_torch_range_and_builds_with_scikit_build_core():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "scikit_build_core.build"
    assert not any(r.startswith("torch") for r in meta["build-system"]["requires"])  # never a second torch
    [torch_req] = [d for d in meta["project"]["dependencies"] if d.startswith("torch")]
    assert "==" not in torch_req and ">=" in torch_req, torch_req
    assert meta["tool"]["scikit-build"]["wheel"]["packages"]["fastrnn/kernels"] == "kernels"


# Run in a child with the checkout on PYTHONPATH; argv[1] == "bare": every editable-install import hook is
# removed first (a machine where fastrnn was never installed, as scripts/gpu_check.sh meets a GPU machine).
_CHECK_CHECKOUT_KERNELS = r"""
import sys
if sys.argv[1] == "bare":
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import fastrnn
import fastrnn.kernels
from fastrnn.kernels import lstm_step, sparse_attention, sparse_attention_bwd
from fastrnn.ops import triton_backend
print(fastrnn.__file__, fastrnn.kernels.__file__, lstm_step.__file__, sparse_attention.__file__,
      sparse_attention_bwd.__file__, triton_backend.available())
"""


@pytest.mark.parametrize("hooks", ["as-installed", "bare"])
def test_a_checkout_on_pythonpath_imports_its_own_kernels(tmp_path, hooks):
    """A checkout used through PYTHONPATH alone (scripts/gpu_check.sh on a GPU machine; a git worktree beside
    an editable install of another checkout): fastrnn.kernels is this checkout's kernels/ (fastrnn/_checkout.py),
    whether or not an editable install's import hook for fastrnn is present, and the triton backend counts as
    available. The wheel's own fastrnn/kernels/ is test_wheel_builds_...'s."""
    pytest.importorskip("triton")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    out = _run([sys.executable, "-c", _CHECK_CHECKOUT_KERNELS, hooks], cwd=tmp_path, env=env, timeout=120).stdout
    *files, available = out.split()
    assert files[0] == str(ROOT / "fastrnn" / "__init__.py"), files[0]
    for f in files[1:]:
        assert Path(f).parent == ROOT / "kernels", f
    assert available == "True"
