"""r-LSTM / p-LSTM auxiliary losses (fastrnn.training.auxiliary; seed 001, eqs. (1)-(2)): the loss on a
tiny case recomputed by hand with nn.LSTMCell, the decoder's gradient reaching the main LSTM through the
anchor state (and only aux_trunc steps back), the phases, and the segmented state pass."""
import pytest
import torch
import torch.nn.functional as F

from fastrnn.training.auxiliary import AuxiliaryLSTM

f64 = torch.float64


# tiny problems: on two shared cores each small fused call would wait on the thread pool
pytestmark = pytest.mark.usefixtures("one_thread")


def _cell(lstm, layer=0):
    """An nn.LSTMCell holding layer ``layer`` of a fastrnn.LSTM (the same math and parameter layout)."""
    cell = torch.nn.LSTMCell(lstm.input_size if layer == 0 else lstm.hidden_size, lstm.hidden_size, dtype=f64)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, name, getattr(lstm, f"{name}_l{layer}"))  # shared Parameters: gradients compare
    return cell


def _by_hand(model, x, anchors):
    """L_aux of eqs. (1)-(2) step by step: the main state at each anchor from the state aux_trunc steps
    before it (detached: the gradient window), the decoder from there with teacher forcing."""
    main, dec, head = _cell(model.rnn), _cell(model.decoder), model.decoder_head
    e = model.encode(x)
    T, B = e.shape[0], e.shape[1]
    H, l, r = model.hidden_size, model.l, model.aux_trunc
    states = [(torch.zeros(B, H, dtype=f64), torch.zeros(B, H, dtype=f64))]
    with torch.no_grad():
        for t in range(T):
            states.append(main(e[t], states[-1]))
    total, count = 0.0, 0
    for a in anchors:
        hc = tuple(s.detach() for s in states[a - r])
        for t in range(a - r, a):
            hc = main(e[t], hc)
        span = range(a - l, a) if model.mode == "r" else range(a, a + l)
        inputs = [torch.zeros(B, e.shape[2], dtype=f64)] + [e[t] for t in list(span)[:-1]]
        for inp, t in zip(inputs, span):
            hc = dec(inp, hc)
            pred = head(hc[0])
            if model.tokens:
                total = total + F.cross_entropy(pred, x[t], reduction="sum")       # TokenLoss: cross-entropy
            else:
                total = total + ((pred - x[t]) ** 2).sum()                          # TokenLoss: squared L2
            count += B                                                              # B segments' tokens
    return total / count                                                            # Σ_i L_i / Σ_i l_i


@pytest.mark.parametrize("mode,tokens", [("r", False), ("p", True), ("r", True)])
def test_aux_loss_by_hand_and_its_gradient(mode, tokens):
    torch.manual_seed(0)
    T, B, I, H, l = 9, 2, 3, 4, 2
    kw = dict(embedding_size=3) if tokens else {}
    model = AuxiliaryLSTM(5 if tokens else I, H, 4, mode=mode, l=l, n_anchors=2, aux_trunc=3, main_trunc=2,
                          dtype=f64, **kw)
    x = torch.randint(0, 5, (T, B)) if tokens else torch.randn(T, B, I, dtype=f64, requires_grad=True)
    anchors = [4, 6] if mode == "r" else [3, 5]
    out = model.losses(x, phase="pretrain", anchors=anchors)
    assert out.main is None and out.logits is None and out.total is out.aux
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(out.aux, params + ([x] if not tokens else []), allow_unused=True)
    model.zero_grad()
    ref = _by_hand(model, x, anchors)
    torch.testing.assert_close(out.aux, ref, rtol=1e-12, atol=1e-14)
    want = torch.autograd.grad(ref, params + ([x] if not tokens else []), allow_unused=True)
    names = [n for n, _ in model.named_parameters()] + (["x"] if not tokens else [])
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)
    grads = dict(zip(names, got))
    # the decoder's gradient reaches the main LSTM through the anchor state ...
    assert grads["rnn.weight_hh_l0"].abs().sum() > 0 and grads["rnn.weight_ih_l0"].abs().sum() > 0
    assert grads["classifier.weight"] is None  # pretraining: no supervised loss
    if not tokens:
        # ... and only aux_trunc = 3 steps back from each anchor: inputs before min(a) - 3 get nothing
        # (the targets and the decoder's inputs, x[a-2:a], lie inside the windows too)
        assert not grads["x"][:min(anchors) - 3].any()
        assert grads["x"][min(anchors) - 3:max(anchors)].abs().sum(-1).gt(0).all()


def test_phases_and_truncation_of_the_main_loss():
    torch.manual_seed(1)
    T, B, I, H = 12, 3, 2, 4
    model = AuxiliaryLSTM(I, H, 3, mode="p", l=3, n_anchors=2, main_trunc=4, dtype=f64)
    x = torch.randn(T, B, I, dtype=f64, requires_grad=True)
    y = torch.tensor([0, 2, 1])
    sup = model.losses(x, y, phase="supervised")
    assert sup.aux is None and sup.anchors is None
    torch.testing.assert_close(sup.main, F.cross_entropy(model(x), y), rtol=1e-12, atol=0)  # same logits
    (gx,) = torch.autograd.grad(sup.total, x)
    assert not gx[:T - 4].any() and gx[T - 4:].abs().sum(-1).gt(0).all()   # main_trunc = 4 steps back
    g = torch.Generator().manual_seed(0)
    joint = model.losses(x, y, phase="joint", generator=g)
    assert joint.anchors.tolist() == sorted(joint.anchors.tolist()) and len(joint.anchors) == 2
    low, high = model.anchor_range(T)
    assert (low, high) == (3, T - 3) and all(low <= a <= high for a in joint.anchors.tolist())
    torch.testing.assert_close(joint.total, joint.main + joint.aux, rtol=0, atol=0)
    with pytest.raises(ValueError):
        model.losses(x, y, phase="joint", anchors=[T])   # a p-anchor needs l steps after it
    with pytest.raises(ValueError):
        model.losses(x, y, phase="unsupervised")


def test_states_at_equals_one_pass():
    torch.manual_seed(2)
    model = AuxiliaryLSTM(3, 5, 2, l=2, dtype=f64)
    e = torch.randn(20, 2, 3, dtype=f64)
    y, _ = model.rnn(e)
    states = model.states_at(e, [7, 3, 3, 15, 20])
    assert sorted(states) == [0, 3, 7, 15, 20]
    for p in (3, 7, 15, 20):
        torch.testing.assert_close(states[p][0][0], y[p - 1], rtol=0, atol=1e-14)


def test_losses_name_y_when_its_batch_size_is_wrong():
    torch.manual_seed(1)
    model = AuxiliaryLSTM(2, 4, 3, mode="p", l=3, n_anchors=2, main_trunc=4, dtype=f64)
    x = torch.randn(12, 3, 2, dtype=f64)
    for phase in ("supervised", "joint"):
        with pytest.raises(ValueError, match=r"y: expected \[B=3\] class labels .* got shape \(2,\)"):
            model.losses(x, torch.tensor([0, 1]), phase=phase)
    with pytest.raises(ValueError, match=r"y: expected \[B=3\] class labels .* got None"):
        model.losses(x, phase="joint")
    assert model.losses(x, phase="pretrain").main is None  # pre-training needs no labels
