"""Truncation schedules (SPEC section 3): shapes, rules, and ARTBP's unbiasedness, checked statistically."""
import pytest
import torch

from fastrnn import reference as R
from fastrnn import truncation as tr

f64 = torch.float64


def test_full_and_fixed():
    s = tr.full(5)
    assert not s.cut.any() and (s.scale == 1).all() and len(s) == 5
    s = tr.fixed(7, 3)
    assert s.cut.tolist() == [False, False, False, True, False, False, True]
    assert (s.scale == 1).all()
    assert not tr.fixed(4, None).cut.any() and not tr.fixed(4, 0).cut.any()
    assert len(tr.full(0)) == 0


def test_fixed_offset_shifts_the_grid():
    # Copy T=100 with k=10: SPEC's grid cuts at 110 (the marker at 109 ends a segment); offset 5 cuts at
    # 105 and 115, so the marker shares a segment with the first five output steps.
    s = tr.fixed(120, 10, offset=5)
    assert torch.nonzero(s.cut).flatten().tolist() == list(range(5, 120, 10))
    assert torch.equal(tr.fixed(9, 3, offset=3).cut, tr.fixed(9, 3).cut)
    assert tr.fixed(7, 3, offset=-1).cut.tolist() == [False, False, True, False, False, True, False]


def test_artbp_rule_and_determinism():
    g = torch.Generator().manual_seed(0)
    s = tr.artbp(200, 5.0, alpha=4.0, generator=g)
    assert not s.cut[0] and s.scale[0] == 1
    last = 0
    for t in range(1, 200):
        c_t = 3.0 / (2.0 * 5.0 + (t - last))
        if s.cut[t]:
            last = t
            assert s.scale[t] == 1
        else:
            assert s.scale[t].item() == pytest.approx(1.0 / (1.0 - c_t), rel=1e-15)
    s2 = tr.artbp(200, 5.0, alpha=4.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.cut, s2.cut) and torch.equal(s.scale, s2.scale)


def test_artbp_mean_segment_length_is_about_L0():
    s = tr.artbp(20000, 8.0, generator=torch.Generator().manual_seed(1))
    mean_len = 20000 / (int(s.cut.sum()) + 1)
    assert 6.0 < mean_len < 10.0


@pytest.mark.parametrize("bad", [
    lambda: tr.fixed(5, -1), lambda: tr.fixed(-1, 2), lambda: tr.fixed(5, 2, offset=1.5), lambda: tr.artbp(5, 1.0), lambda: tr.artbp(5, 4.0, alpha=2.0),
    lambda: tr.Schedule(torch.zeros(3), torch.ones(3)), lambda: tr.Schedule(torch.zeros(3, dtype=torch.bool),
                                                                         torch.ones(4)),
    lambda: tr.Schedule(torch.zeros(2, dtype=torch.bool), torch.tensor([1.0, float("nan")])),
])
def test_bad_schedules_raise(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()


def _lstm_gradient(args, schedule):
    keys = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")
    y, _, _ = R.lstm_layer(**{k: args[k] for k in keys}, cut=schedule.cut, scale=schedule.scale)
    loss = (y * args["target"]).sum()
    grads = torch.autograd.grad(loss, [args[k] for k in keys])
    return torch.cat([g.flatten() for g in grads])


def test_artbp_mean_gradient_is_the_full_bptt_gradient():
    """Over N draws, each component's mean lies within 6 standard errors of the full gradient, while
    fixed truncation (biased) misses it by far more: the bound has the power to tell them apart."""
    torch.manual_seed(0)
    T, B, I, H = 12, 2, 2, 3
    args = {k: torch.randn(*shape, dtype=f64, requires_grad=k != "target") * 0.8
            for k, shape in dict(x=(T, B, I), w_ih=(4 * H, I), w_hh=(4 * H, H), b_ih=(4 * H,), b_hh=(4 * H,),
                                 h0=(B, H), c0=(B, H), target=(T, B, H)).items()}
    args = {k: v.detach().requires_grad_(k != "target") for k, v in args.items()}
    exact = _lstm_gradient(args, tr.full(T))
    g = torch.Generator().manual_seed(0)
    N = 1500
    draws = torch.stack([_lstm_gradient(args, tr.artbp(T, 3.0, alpha=4.0, generator=g)) for _ in range(N)])
    mean, stderr = draws.mean(0), draws.std(0) / N ** 0.5
    z = (mean - exact).abs() / (stderr + 1e-12)
    assert z.max() < 6.0, f"ARTBP mean gradient off by {z.max():.1f} standard errors"
    biased = _lstm_gradient(args, tr.fixed(T, 3))
    assert ((biased - exact).abs() / (stderr + 1e-12)).max() > 20.0
