"""Peak resident memory of one SAB-LSTM fwd+bwd (B=32, I=64, H=128), CPU backend against the reference.

Each measurement runs in a fresh subprocess and reports its `ru_maxrss`; the "baseline" row is the same
process without the fwd+bwd (imports, module, input), so the difference is what the pass itself costs.

    .venv/bin/python bench/sab_memory.py                       # T = 100 300 1000, reference up to 300
    .venv/bin/python bench/sab_memory.py --T 1000 --reference  # the reference at T=1000 (10-18 GB, 15-50 s)
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys
import torch
sys.path.insert(0, {root!r})
import fastrnn
torch.set_num_threads(2)
impl, scorer, T = {impl!r}, {scorer!r}, {T}
B, I, H = 32, 64, 128
torch.manual_seed(0)
module = fastrnn.SABLSTM(I, H, attention=scorer, backend=impl if impl != "baseline" else "cpu")
x = torch.randn(T, B, I, requires_grad=True)
if impl != "baseline":
    y = module(x)[0]
    y.sum().backward()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def peak_mib(impl: str, scorer: str, T: int) -> float:
    root = str(Path(__file__).resolve().parent.parent)
    code = CHILD.format(root=root, impl=impl, scorer=scorer, T=T)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--reference", action="store_true", help="also run the reference at T > 300")
    args = p.parse_args()
    print(f"{'T':>6} {'scorer':>7} {'impl':>10} {'peak MiB':>10}")
    for T in args.T:
        for scorer in ("mlp", "linear"):
            impls = ["baseline", "cpu"] + (["reference"] if T <= 300 or args.reference else [])
            for impl in impls:
                print(f"{T:>6} {scorer:>7} {impl:>10} {peak_mib(impl, scorer, T):>10.0f}", flush=True)


if __name__ == "__main__":
    main()
