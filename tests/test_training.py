"""The training package: one training step against a hand-written one, its phase hooks, the model, the tasks."""
import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrnn import training, truncation
from fastrnn.training import PHASES, SequenceModel, train_step

B, H = 4, 8


def copy_setup(core="lstm", seed=0, **kw):
    task = training.CopyTask(5)
    torch.manual_seed(seed)
    model = SequenceModel(task.input_size, H, task.n_out, core=core, backend="reference", **kw)
    return task, model, torch.optim.Adam(model.parameters(), lr=1e-2)


def artbp(length, generator):
    return truncation.artbp(length, 3.0, generator=generator)


@pytest.mark.parametrize("core", ["lstm", "sab"])
def test_step_equals_a_hand_written_iteration(core):
    """batch, then schedule from one generator; forward; CE; zero_grad; backward; clip; Adam: to the bit."""
    task, model, opt = copy_setup(core)
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    gen, ref_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    clip = 0.05
    for _ in range(3):
        result = train_step(model, task, opt, gen, batch_size=B, truncation=artbp, clip=clip)

        x, y = task.batch(B, ref_gen)
        schedule = truncation.artbp(task.length, 3.0, generator=ref_gen)
        logits, _ = ref_model(x, schedule)
        loss = F.cross_entropy(logits.reshape(-1, task.n_out), y.reshape(-1))
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(ref_model.parameters(), clip)
        assert norm > clip  # the clip is active, so a step without it would differ
        ref_opt.step()

        assert result.loss == loss.item() and 0 <= result.metrics["acc"] <= 1
    assert torch.equal(gen.get_state(), ref_gen.get_state())  # the same draws, in the same order
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_no_clip_and_no_truncation_differ_from_clip_and_truncation():
    results = []
    for kw in ({}, {"clip": 0.05}, {"truncation": artbp}):
        task, model, opt = copy_setup()
        train_step(model, task, opt, torch.Generator().manual_seed(1), batch_size=B, **kw)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


def test_phase_hooks_are_called_in_order_once_each():
    task, model, opt = copy_setup()
    seen = []
    grads = {}

    def on_phase_end(phase):
        seen.append(phase)
        grads[phase] = model.head.weight.grad is not None

    weight = model.head.weight.detach().clone()
    train_step(model, task, opt, torch.Generator().manual_seed(0), batch_size=B, clip=1.0, on_phase_end=on_phase_end)
    assert seen == list(PHASES) == ["data", "forward", "loss", "backward", "clip", "update"]
    assert not grads["loss"] and grads["backward"]  # gradients appear in the backward phase
    assert not torch.equal(weight, model.head.weight)


def test_evaluate_averages_without_touching_gradients():
    task, model, _ = copy_setup()
    gen = torch.Generator().manual_seed(0)
    batches = [task.eval_batch(B, gen) for _ in range(2)]
    metrics = training.evaluate(model, task, batches)
    losses = [task.loss(model(x)[0], y)[0].item() for x, y in batches]
    assert metrics["loss"] == pytest.approx(sum(losses) / 2) and set(metrics) == {"loss", "acc"}
    assert all(p.grad is None for p in model.parameters())


def test_model_embeds_tokens_and_sets_the_forget_bias():
    model = SequenceModel(11, H, 11, embedding_size=6, forget_bias=2.0, backend="reference")
    x = torch.randint(0, 11, (7, B))
    logits, attention = model(x)
    assert logits.shape == (7, B, 11) and attention is None and model.rnn.input_size == 6
    assert torch.equal((model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0)[H:2 * H], torch.full((H,), 2.0))
    sab = SequenceModel(3, H, 2, core="sab", k_top=2, k_att=1, backend="reference")
    _, attention = sab(torch.randn(9, B, 3), return_attention=True)
    assert attention.indices.shape[:2] == (9, B)
    with pytest.raises(ValueError, match="core"):
        SequenceModel(3, H, 2, core="gru")
    with pytest.raises(TypeError, match="SAB options"):
        SequenceModel(3, H, 2, core="lstm", k_top=2)


def test_tasks_losses_read_the_steps_they_should():
    logits = torch.full((6, B, 1), 100.0)  # adding: only the last step counts
    logits[-1, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss, metrics = training.AddingTask(6).loss(logits, torch.tensor([1.0, 2.5, 3.05, 4.03]))
    assert loss.item() == pytest.approx((0.25 + 0.05 ** 2 + 0.03 ** 2) / 4) and metrics["acc"] == 0.5
    assert isinstance(training.make_task("copy", 5), training.CopyTask)
    with pytest.raises(ValueError, match="task"):
        training.make_task("imagenet", 5)


def test_training_does_not_import_experiments():
    """The dependency runs experiments -> training -> modules, never back."""
    code = ("import sys, fastrnn.training; "
            "print(sorted(m for m in sys.modules if m.startswith('fastrnn.experiments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_truncation_takes_a_schedule_of_the_tasks_length_and_names_itself_otherwise():
    task, model, opt = copy_setup("lstm")
    gen, ref_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    ref_model, fixed = copy.deepcopy(model), truncation.fixed(task.length, 5)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    result = train_step(model, task, opt, gen, batch_size=B, truncation=fixed)  # a Schedule: used as is
    ref = train_step(ref_model, task, ref_opt, ref_gen, batch_size=B, truncation=lambda T, g: truncation.fixed(T, 5))
    assert result.loss == ref.loss
    with pytest.raises(ValueError, match=rf"truncation: a Schedule of length 20, but the task's sequences have "
                                         rf"{task.length} steps"):
        train_step(model, task, opt, gen, batch_size=B, truncation=truncation.fixed(20, 5))
    with pytest.raises(TypeError, match=r"truncation must be None, a callable \(T, generator\) -> Schedule"):
        train_step(model, task, opt, gen, batch_size=B, truncation=5)
