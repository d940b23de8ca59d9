"""Shapes of the issues' benchmarks, a fwd+bwd step builder and the CPU's name, shared by every suite."""
import platform

import torch

B, I, H = 32, 64, 128


def fwd_bwd_step(module, T, *, dtype=torch.float32, forward_kwargs=None):
    """A callable running one forward + backward of `module` on fixed random input [T, B, I]."""
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    target = torch.randn(T, B, H, dtype=dtype)
    kwargs = forward_kwargs or {}

    def step():
        module.zero_grad(set_to_none=True)
        y = module(x, **kwargs)[0]
        (y * target).sum().backward()

    return step


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for the benchmarks' headers."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
