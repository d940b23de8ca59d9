"""Shared test helpers: random SAB/LSTM layer arguments and gradient comparison against the reference."""
import torch

from fastrnn.truncation import Schedule

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def layer_args(T, B, I, H, *, A=None, scorer="mlp", bias=True, dtype=torch.float64, scale=0.5, sab=True):
    """Random leaf tensors (requires_grad) for one layer, as a dict of the contract's argument names."""
    def leaf(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    args = dict(x=leaf(T, B, I), w_ih=leaf(4 * H, I), w_hh=leaf(4 * H, H),
                b_ih=leaf(4 * H) if bias else None, b_hh=leaf(4 * H) if bias else None)
    if sab:
        if scorer == "mlp":
            A = A or H
            args.update(att_wh=leaf(A, H), att_wm=leaf(A, H), att_s=leaf(A))
        else:
            args.update(att_wh=leaf(H), att_wm=leaf(H), att_s=leaf(1))
    args.update(h0=leaf(B, H), c0=leaf(B, H))
    return args


def schedule_args(schedule: Schedule, dtype):
    return dict(cut=schedule.cut, scale=schedule.scale.to(dtype))


def leaves(args):
    return {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}


def run_with_grads(fn, args, sched, seed=1, **kw):
    """Runs fn(**args, **sched, **kw); backprops a fixed random weighting of (y, h_n, c_n).
    Returns (outputs, {name: grad})."""
    out = fn(**args, **sched, **kw)
    y, h_n, c_n = out[0], out[1], out[2]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum()
               for o in (y, h_n, c_n))
    named = leaves(args)
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    grads = {k: (torch.zeros_like(v) if gr is None else gr) for (k, v), gr in zip(named.items(), grads)}
    return out, grads


def assert_close(actual, expected, dtype, what):
    torch.testing.assert_close(actual, expected, **TOL[dtype], msg=lambda m: f"{what}: {m}")
