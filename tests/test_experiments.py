"""The experiment CLI, the training loop, records, plots and the main job, on tiny runs (seconds)."""
import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from fastrnn import training, truncation
from fastrnn.experiments import main_job, records, train
from fastrnn.experiments.__main__ import main as cli
from fastrnn.reference import SABAttention

TINY = ["--T", "5", "--hidden", "8", "--batch-size", "4", "--eval-batches", "2", "--log-every", "2",
        "--backend", "reference", "--no-progress", "--budget", "0"]


def tiny_config(**kw):
    base = dict(task="copy", T=5, hidden=8, batch_size=4, eval_batches=2, log_every=2, backend="reference",
                budget=0, max_iters=4, attn_at=[2])
    return train.Config(**{**base, **kw})


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_cli_run_writes_record_table_and_plots(tmp_path):
    out = tmp_path / "res"
    assert cli(["copy", "--method", "sab", "--max-iters", "6", "--attn-at", "2", "--out", str(out), *TINY]) == 0
    assert cli(["copy", "--method", "tbptt", "--k-trunc", "2", "--max-iters", "6", "--out", str(out), *TINY]) == 0
    sab = json.loads((out / "runs" / "copy-T5-sab-s0" / "record.json").read_text())
    assert sab["iterations"] == 6 and sab["config"]["method"] == "sab" and not sab["resumed"]
    assert [h["iter"] for h in sab["history"]] == [2, 4, 6]
    assert 0 <= sab["eval"]["acc"] <= 1 and sab["eval"]["loss"] > 0 and sab["tokens_per_second"] > 0
    assert sab["attention_snapshots"] == ["iter_2", "iter_6"]
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| run | method | iterations") and len(table) == 4
    assert "| copy-T5-sab-s0 | sab | 6 |" in table[2] and "| copy-T5-tbptt-s0 | tbptt | 6 |" in table[3]
    assert_png(out / "curves_copy.png")
    assert_png(out / "attention_copy-T5-sab-s0.png")
    with np.load(out / "runs" / "copy-T5-sab-s0" / "attention.npz") as z:
        assert sorted(z) == ["iter_2", "iter_6"] and z["iter_6"].shape == (25, 26)


def test_resume_continues_exactly(tmp_path):
    straight = train.Run(tiny_config(max_iters=6, method="artbp", L0=3.0), tmp_path / "a")
    straight.train(progress=False)
    train.Run(tiny_config(max_iters=3, method="artbp", L0=3.0), tmp_path / "b").train(progress=False)
    resumed = train.Run(tiny_config(max_iters=6, method="artbp", L0=3.0), tmp_path / "b")
    record = resumed.train(progress=False)
    assert record["resumed"] and record["iterations"] == 6
    assert [h["iter"] for h in record["history"]] == [2, 4, 6]
    # Model, optimiser and batch/schedule generator all restored: the same weights as without a stop.
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [h["loss"] for h in record["history"]] == [h["loss"] for h in json.loads(
        (tmp_path / "a" / "record.json").read_text())["history"]]


def test_resume_refuses_another_configuration(tmp_path):
    train.Run(tiny_config(max_iters=1, attn_at=[]), tmp_path).train(progress=False)
    with pytest.raises(ValueError, match="hidden"):
        train.Run(tiny_config(max_iters=2, hidden=16), tmp_path).train(progress=False)
    with pytest.raises(ValueError, match="precision"):   # a bf16 run's iterations never count as float32's
        train.Run(tiny_config(max_iters=2, precision="bf16"), tmp_path).train(progress=False)


def test_precision_is_in_the_run_name():
    assert tiny_config().name == "copy-T5-sab-s0" and tiny_config(precision="bf16").name == "copy-T5-sab-bf16-s0"


def test_budget_stops_training(tmp_path):
    run = train.Run(tiny_config(max_iters=0, budget=0.3, method="bptt"), tmp_path)
    record = run.train(progress=False)
    assert 0.3 <= record["train_seconds"] < 3 and record["iterations"] >= 1


@pytest.mark.parametrize("method", ["sab", "tbptt", "bptt", "artbp"])
def test_every_method_learns_something(tmp_path, method):
    run = train.Run(tiny_config(method=method, max_iters=30, k_trunc=3, L0=3.0, attn_at=[], lr=1e-2), tmp_path)
    record = run.train(progress=False)
    first, last = record["history"][0]["loss"], record["history"][-1]["loss"]
    assert last < first  # loss starts at ln 10 and falls towards the blank-predicting plateau


def test_schedules_of_the_methods():
    g = torch.Generator().manual_seed(0)
    tb = train.schedule_for(train.Config(method="tbptt", k_trunc=4), 10, g)
    assert tb.cut.nonzero().flatten().tolist() == [4, 8]
    assert not train.schedule_for(train.Config(method="bptt"), 10, g).cut.any()
    assert train.schedule_for(train.Config(method="sab"), 10, g) is None  # the module's k_trunc
    ar = train.schedule_for(train.Config(method="artbp", L0=2.0), 50, g)
    assert ar.cut.any() and (ar.scale[~ar.cut][1:] > 1).all()


def test_attention_matrix_maps_slots_to_steps():
    # T=3, B=2, k_top=2; slots: 0 = h0, 1 = step 1, 2 = step 3 (never used here).
    indices = torch.tensor([[[0, -1], [0, -1]], [[0, -1], [0, -1]], [[0, 1], [1, -1]]])
    weights = torch.tensor([[[1.0, 0], [1.0, 0]], [[1.0, 0], [1.0, 0]], [[0.25, 0.75], [1.0, 0]]])
    m = train.attention_matrix(SABAttention(indices, weights, torch.tensor([-1, 1, 3])), 3)
    expected = np.zeros((3, 4))
    expected[0, 0] = expected[1, 0] = 1.0
    expected[2, 0], expected[2, 2] = 0.125, 0.875  # column s + 1 holds step s
    np.testing.assert_allclose(m, expected)


def test_config_checks():
    with pytest.raises(ValueError, match="method"):
        train.Config(method="rtrl")
    with pytest.raises(ValueError, match="task"):
        train.Config(task="imagenet")
    with pytest.raises(ValueError, match="budget"):
        train.Config(budget=0, max_iters=0)
    with pytest.raises(ValueError, match="precision"):
        train.Config(precision="float16")


@pytest.mark.parametrize("method", ["sab", "bptt"])
def test_bf16_precision_trains_under_autocast_with_float32_master_weights(tmp_path, method):
    """--precision bf16: the model's forward runs under autocast bfloat16 (the cpu backend's mixed
    precision), the parameters and their gradients stay float32, and the held-out evaluation is float32."""
    seen = []
    for precision in ("float32", "bf16"):
        run = train.Run(tiny_config(method=method, precision=precision, backend="auto"), tmp_path / precision)
        run.model.rnn.register_forward_pre_hook(
            lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
        loss, _ = run.step()
        assert np.isfinite(loss)
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in run.model.parameters())
        evaluation = run.record(resumed=False)["eval"]
        assert np.isfinite(evaluation["loss"])
    # float32: the step and 2 evaluation batches without autocast; bf16: the step under it, evaluation without
    assert [on for on, _ in seen] == [False, False, False, True, False, False] and seen[3][1] == torch.bfloat16



def test_float32_precision_leaves_an_outer_autocast_on(tmp_path):
    """precision float32 does not switch autocast off: a caller's autocast (bench/bf16_mixed.py times
    Run.step under it) reaches the model."""
    run = train.Run(tiny_config(method="bptt", backend="auto"), tmp_path)
    seen = []
    run.model.rnn.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run.step()
    assert seen == [True]


def test_records_table_rounds_and_orders():
    rec = {"name": "x", "config": {"method": "sab"}, "iterations": 1234, "train_seconds": 9.6, "cpu_seconds": 4.4,
           "tokens_per_second": 12345.6, "eval": {"acc": 0.98765, "loss": 0.012345},
           "history": [{"acc": a} for a in (0.0, 1.0, 0.5)]}
    line = records.markdown_table([rec]).splitlines()[2]
    assert line == "| x | sab | 1,234 | 10 | 4 | 12,346 | 0.988 | 0.0123 | 0.500 |"


def test_main_job_commands_share_one_budget(tmp_path):
    cmds = main_job.commands(42.0, tmp_path, 3, "auto", [])
    methods = [c[c.index("--method") + 1] for c in cmds]
    assert methods == ["sab", "tbptt", "bptt"]
    for c in cmds:
        assert c[c.index("--budget") + 1] == "42.0" and c[c.index("--T") + 1] == "100"
    sab = cmds[0]
    assert sab[sab.index("--slot-state") + 1] == "provisional" and sab[sab.index("--k-trunc") + 1] == "20"
    assert cmds[1][cmds[1].index("--k-trunc") + 1] == "20"
    bf16 = main_job.commands(42.0, tmp_path, 3, "auto", [], "bf16")
    assert all(c[c.index("--precision") + 1] == "bf16" for c in bf16)


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_main_job_end_to_end(tmp_path, precision):
    """The README job with a 1-second budget per method: three processes, table and PNGs (bf16: the runs
    named -bf16, which the job's table and heatmap find)."""
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-m", "fastrnn.experiments", "main", "--budget", "1", "--out", str(out),
                           "--backend", "reference", "--eval-batches", "1", "--hidden", "16", "--no-progress",
                           "--precision", precision], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tag = "" if precision == "float32" else "-bf16"
    assert f"| copy-T100-sab{tag}-s0 | sab |" in proc.stdout and f"| copy-T100-bptt{tag}-s0 | bptt |" in proc.stdout
    for name in ("main_curves.png", f"attention_copy-T100-sab{tag}-s0.png", "curves_copy.png"):
        assert_png(out / name)


def other_tasks():
    from fastrnn.tasks import CharPTB, PixelMNIST

    rng = np.random.default_rng(0)
    images, labels = rng.random((16, 784), dtype=np.float32), rng.integers(0, 10, 16)
    texts = {"train": " the cat sat on the mat \n" * 4, "valid": " the mat \n", "test": " a cat \n"}
    return {"adding": training.AddingTask(6), "pmnist": training.MNISTTask(True, PixelMNIST(images, labels, permute=True)),
            "ptb": training.PTBTask(7, CharPTB(texts))}


@pytest.mark.parametrize("name", ["adding", "pmnist", "ptb"])
def test_other_tasks_train_and_report(tmp_path, name):
    task = other_tasks()[name]
    # backend "auto": the fused kernels where built (784 reference steps are slow), else the reference.
    cfg = tiny_config(task=name, T=task.length, max_iters=2, log_every=1, attn_at=[], backend="auto")
    run = train.Run(cfg, tmp_path, task=task)
    record = run.train(progress=False)
    assert record["iterations"] == 2 and len(record["history"]) == 2
    assert np.isfinite(record["eval"]["loss"]) and 0 <= record["eval"]["acc"] <= 1
    if name == "ptb":
        assert record["eval"]["bpc"] == pytest.approx(record["eval"]["loss"] / np.log(2))
        assert isinstance(run.model.embedding, torch.nn.Embedding)


def test_suites_parse_and_the_study_moves_the_cut_onto_the_marker():
    """Every suite run is a valid command line; the copy-trunc study differs only in its cut grid."""
    from fastrnn.experiments import suites
    from fastrnn.experiments.__main__ import build_parser, config_from_args

    cuts = {}
    for suite in suites.SUITES.values():
        for name, args in suite.runs.items():
            parsed = build_parser().parse_args([*args, "--budget", "1"])
            cfg = config_from_args(parsed, parsed.task, parsed.method)
            if name.startswith(("copy-T100-sab-k", "copy-T100-sab-mlp-k")):
                schedule = train.schedule_for(cfg, 120, torch.Generator()) or truncation.fixed(120, cfg.k_trunc)
                cuts[name] = torch.nonzero(schedule.cut).flatten().tolist()
    marker = 109  # copy T=100: the marker is at step T + 9
    assert marker + 1 in cuts["copy-T100-sab-k5"] and marker + 1 in cuts["copy-T100-sab-k10"]
    for k in (5, 10):
        grid = cuts[f"copy-T100-sab-k{k}-marker"]
        assert marker in grid and marker + 1 not in grid and set(np.diff(grid)) == {k}
    assert cuts["copy-T100-sab-mlp-k5"] == cuts["copy-T100-sab-k5"]
    assert cuts["copy-T100-sab-mlp-k5-marker"] == cuts["copy-T100-sab-k5-marker"]


def test_suite_runs_side_by_side_and_writes_its_table(tmp_path, monkeypatch):
    from fastrnn.experiments import suites

    tiny = suites.Suite("tiny", 1.0, {"copy-a": ["copy", "--method", "sab", "--k-trunc", "2"],
                                      "copy-b": ["copy", "--method", "bptt"]}, "a note")
    monkeypatch.setitem(suites.SUITES, "tiny", tiny)
    out = tmp_path / "res"
    assert suites.main(["tiny", "--out", str(out), "--budget", "0", "--seed", "3", "--max-iters", "4",
                        *[a for a in TINY if a not in ("--budget", "0")]]) == 0
    text = (out / "suite_tiny.md").read_text()
    assert "| copy-a-s3 | sab | 4 |" in text and "| copy-b-s3 | bptt | 4 |" in text and "a note" in text
    assert "- copy-a-s3: at the plateau from iteration " in text
    assert "; attention of the output steps on the digits / on the marker at iteration 4: " in text
    bptt_line = next(line for line in text.splitlines() if line.startswith("- copy-b-s3"))
    assert "attention" not in bptt_line  # bptt has no attention
    assert_png(out / "curves_tiny.png")
    assert suites.main(["list"]) == 0


@pytest.mark.parametrize("method", ["sab", "bptt"])
def test_forget_bias_sets_only_the_forget_gate(method):
    task = training.make_task("copy", 5)
    torch.manual_seed(0)
    default = train.build_model(tiny_config(method=method), task)
    torch.manual_seed(0)
    model = train.build_model(tiny_config(method=method, forget_bias=1.0), task)
    H = 8
    total = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    assert torch.equal(total[H:2 * H], torch.ones(H))
    for gate in (0, 2, 3):  # i, g, o keep nn.LSTM's init
        rows = slice(gate * H, (gate + 1) * H)
        assert torch.equal(model.rnn.bias_ih_l0[rows], default.rnn.bias_ih_l0[rows])
    assert not torch.equal((default.rnn.bias_ih_l0 + default.rnn.bias_hh_l0)[H:2 * H], torch.ones(H))


def test_attn_size_sets_the_mlp_scorer_size_and_is_refused_for_linear():
    task = training.make_task("copy", 5)
    model = train.build_model(tiny_config(attention="mlp", attn_size=3), task)
    assert model.rnn.att_wh_l0.shape == (3, 8) and model.rnn.att_wm_l0.shape == (3, 8)
    assert train.build_model(tiny_config(attention="mlp"), task).rnn.att_wh_l0.shape == (8, 8)  # 0: A = hidden
    with pytest.raises(ValueError, match="attn_size"):
        tiny_config(attention="linear", attn_size=3)
    with pytest.raises(ValueError, match="attn_size"):
        tiny_config(attention="mlp", attn_size=-1)


def test_digit_attention_reads_the_output_rows_on_the_digit_columns():
    from fastrnn.experiments.suites import digit_attention

    L = 25  # copy T=5
    m = np.zeros((L, L + 1))
    m[-10:, 0] = 0.5      # h0 (column 0) is not a digit
    m[-10:, 2] = 0.25     # step 1, a digit
    m[-10:, 10] = 0.25    # step 9, the last digit
    m[-11, 2] = 1.0       # the step before the outputs does not count
    assert digit_attention(m) == pytest.approx(0.5)
    m[-10:, 11] = 0.3     # step 10 is a blank
    assert digit_attention(m) == pytest.approx(0.5)


def test_marker_attention_reads_the_marker_column():
    from fastrnn.experiments.suites import marker_attention

    T = 5
    L = T + 20
    marker = T + 9  # copy: the marker step
    m = np.zeros((L, L + 1))
    m[-10:, marker + 1] = 0.6   # column s + 1 for attended step s
    m[-10:, marker] = 0.4       # the step before the marker does not count
    m[-11, marker + 1] = 1.0    # the marker step itself is not an output step
    assert marker_attention(m) == pytest.approx(0.6)


def test_copy_milestones():
    from fastrnn.experiments.suites import copy_milestones

    plateau = 10 * np.log(8) / 120  # copy T=100
    history = [{"iter": 10, "loss": 0.45, "acc": 0.0}, {"iter": 20, "loss": 1.05 * plateau, "acc": 0.12},
               {"iter": 30, "loss": 0.9 * plateau, "acc": 0.24}, {"iter": 40, "loss": 0.1, "acc": 0.3},
               {"iter": 50, "loss": 0.01, "acc": 0.979}, {"iter": 60, "loss": 0.01, "acc": 0.98}]
    history = [{**h, "time": h["iter"] / 10} for h in history]
    m = copy_milestones({"config": {"T": 100}, "history": history})
    assert {k: h["iter"] for k, h in m.items()} == {"plateau": 20, "off": 40, "solved": 60}
    assert copy_milestones({"config": {"T": 100}, "history": history[:1]}) == {
        "plateau": None, "off": None, "solved": None}


def test_bpc_line_lists_language_model_runs_only():
    from fastrnn.experiments.suites import bpc_line

    runs = [{"name": "ptb-a", "eval": {"loss": 1.0, "bpc": 1.4427}}, {"name": "copy-b", "eval": {"loss": 0.1}}]
    assert bpc_line(runs) == "\nHeld-out bits per character: ptb-a 1.443\n"
    assert bpc_line(runs[1:]) == ""


def test_copy_baseline_only_for_copy_runs_of_one_T():
    from fastrnn.experiments.suites import copy_baseline

    def rec(task, T):
        return {"config": {"task": task, "T": T}}

    assert copy_baseline([rec("copy", 100), rec("copy", 100)]) == {
        "acc": 1 / 8, "loss": pytest.approx(10 * np.log(8) / 120)}
    assert copy_baseline([rec("copy", 100), rec("copy", 200)]) is None
    assert copy_baseline([rec("copy", 100), rec("adding", 100)]) is None


# ---- progress where output is not a terminal (logs, CI) and where it is --------------------------------

PROGRESS_RUN = [sys.executable, "-m", "fastrnn.experiments", "copy", "--method", "sab", "--T", "5", "--hidden", "8",
                "--batch-size", "4", "--eval-batches", "1", "--log-every", "2", "--backend", "reference",
                "--budget", "0", "--max-iters", "6", "--attn-at", "--no-report", "--progress-interval", "0"]


def test_progress_without_a_terminal_is_plain_lines(tmp_path, capfd):
    """`nohup ... > log` or CI (here: pytest's captured file descriptors): no carriage returns or escape
    codes, one plain line per interval."""
    assert cli([*PROGRESS_RUN[3:], "--out", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    text = out + err
    assert "\r" not in text and "\x1b" not in text, repr(text[-2000:])
    lines = [l for l in out.splitlines() if l.startswith("copy-T5-sab-s0: ") and " it (" in l]
    assert lines[0].endswith("[started]") and lines[-1].endswith("[done]"), lines
    assert len(lines) >= 3 and "loss " in lines[-1] and "tok_s " in lines[-1], lines  # --progress-interval 0


def test_progress_plain_lines_wait_for_the_interval(capsys):
    from fastrnn.experiments.progress import Progress

    bar = Progress("run", 10, "it", interval=3600)
    for i in range(1, 11):
        bar.set_postfix(loss="0.5")
        bar.update_to(i)
    bar.close()
    assert capsys.readouterr().out.splitlines() == ["run: 0/10 it (0%) [started]",
                                                    "run: 10/10 it (100%), loss 0.5 [done]"]


def test_progress_in_a_terminal_is_a_bar(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm sizes its bar to this
    proc = subprocess.Popen([*PROGRESS_RUN, "--out", str(tmp_path)], stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\r" in text and "%|" in text and "[started]" not in text, text[-2000:]


# ---- the command line as a user meets it ------------------------------------------------------------

def _record_suite_calls(monkeypatch, tmp_path):
    from fastrnn.experiments import methods

    calls = []

    def fake(name):
        def suite(out, *args, **kwargs):
            calls.append((name, args, kwargs))
            path = tmp_path / f"suite_{name}.md"
            path.write_text("table\n")
            return path
        return suite

    for name in methods.SUITES:
        monkeypatch.setattr(methods, f"{name}_suite", fake(name))
    return calls


def test_seed_of_the_method_suites_is_the_first_seed_not_the_number_of_seeds(tmp_path, monkeypatch):
    calls = _record_suite_calls(monkeypatch, tmp_path)
    assert cli(["suite", "influence", "--seed", "3", "--steps", "10"]) == 0
    assert cli(["suite", "cycleworld", "--seed", "2", "--seeds", "2", "--steps", "10"]) == 0
    assert cli(["suite", "--seed", "4", "aux", "--budget", "1"]) == 0  # the name after a flag
    (_, args_i, kw_i), (_, args_c, kw_c), (_, args_a, kw_a) = calls
    assert args_i[:2] == (10, 5) and kw_i["seed"] == 3      # 5 seeds (the default) from 3 on
    assert args_c[:2] == (10, 2) and kw_c["seed"] == 2
    assert args_a[:2] == (1.0, 1) and kw_a["seed"] == 4
    with pytest.raises(SystemExit) as e:  # abbreviations are refused (no --seed read as --seeds)
        cli(["suite", "influence", "--see", "3"])
    assert e.value.code == 2 and len(calls) == 3


def test_aux_suite_passes_the_clock_on(tmp_path, monkeypatch):
    calls = _record_suite_calls(monkeypatch, tmp_path)
    assert cli(["suite", "aux", "--budget", "2", "--clock", "cpu"]) == 0
    assert cli(["suite", "aux", "--budget", "2"]) == 0
    assert [kw["clock"] for _, _, kw in calls] == ["cpu", "wall"]


def test_aux_run_on_the_cpu_clock_counts_process_time(monkeypatch):
    """With clock="cpu" the budget is the run's CPU seconds: a process clock that advances 1 s per
    training step stops a 3-second run after 3 steps, however little wall time they take."""
    from fastrnn.experiments import methods

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(600, 196, generator=g), torch.randint(0, 10, (600,), generator=g))
    monkeypatch.setattr(methods, "mnist_pixels", lambda split, side: images)
    ticks = iter(range(10_000))
    monkeypatch.setattr(methods.time, "process_time", lambda: float(next(ticks)))
    run = methods.aux_run("tbptt", 3.0, side=14, hidden=8, batch=4, eval_n=500, clock="cpu")
    assert run["iterations"] == 3 and run["train_s"] == 3.0 and run["clock"] == "cpu"
    assert 0 < run["wall_s"] < 60
    with pytest.raises(ValueError, match="clock"):
        methods.aux_run("tbptt", 3.0, clock="gpu")


def test_influence_suite_runs_the_seeds_from_seed_on(tmp_path):
    from fastrnn.experiments import methods

    methods.influence_suite(tmp_path, 30, 2, 1, seed=3)
    names = [r["name"] for r in json.loads((tmp_path / "suite_influence.json").read_text())]
    assert names == ["tbptt-L=10", "tbptt-L=100", "tbptt-L=200", "artbp-L0=16-alpha=6-s3", "artbp-L0=16-alpha=6-s4"]


def test_cycleworld_suite_restricts_worlds_windows_methods_and_sets_fpp_parameters(tmp_path):
    from fastrnn.experiments import methods

    assert cli(["suite", "cycleworld", "--worlds", "cycle6", "--T", "2", "--methods", "fpp", "tbptt",
                "--steps", "12", "--seed", "1", "--seeds", "2", "--lr", "0.01", "--state-lr", "0.5",
                "--lam", "0.25", "--buffer", "7", "--M", "3", "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "suite_cycleworld.json").read_text())
    assert sorted(r["name"] for r in runs) == ["cycle6-fpp-T2-s1", "cycle6-fpp-T2-s2",
                                               "cycle6-tbptt-T2-s1", "cycle6-tbptt-T2-s2"]
    for r in runs:
        assert r["lr"] == 0.01 and r["steps"] == 12
        if r["method"] == "fpp":  # the run's FPP object got them (state_lr is read back from it)
            assert (r["state_lr"], r["lam"], r["buffer_size"], r["M"]) == (0.5, 0.25, 7, 3)
        else:  # T-BPTT ran one window of the latest T steps with the default λ, whatever the suite passed
            assert (r["lam"], r["buffer_size"], r["M"]) == (1.0, 2, 1)
    # defaults: the world's learning rate, and the suite's state step (not the FPP class's: the lr)
    r = methods.world_run("cycle10", "fpp", 3, 8)
    assert r["lr"] == methods.WORLDS["cycle10"][2] and r["state_lr"] == methods.STATE_LR == 1.0
    assert r["lam"] == 1.0 and r["M"] == 4 and r["buffer_size"] == 1000


def test_cycleworld_report_merges_runs_into_mean_and_min_max_over_seeds(tmp_path):
    from fastrnn.experiments import methods

    curve = {"t": [1, 2], "acc": [0.5, 0.5], "ce": [0.7, 0.7]}
    accs = {0: 0.81, 1: 0.97, 2: 0.93}
    runs = [{"world": "cycle6", "method": m, "T": 2, "seed": s, "steps": 40, "acc": a if m == "fpp" else 0.5,
             "ce": 0.0, "wall_s": 1.0, "curve": curve, "lr": 0.03, "state_lr": 0.03, "lam": 1.0, "M": 4,
             "buffer_size": 1000} for s, a in accs.items() for m in ("fpp", "tbptt")]
    (tmp_path / "a.json").write_text(json.dumps(runs[:4]))  # seeds 0, 1 from one suite, seed 2 from another
    (tmp_path / "b.json").write_text(json.dumps(runs[4:]))
    assert cli(["suite", "cycleworld", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                "--out", str(tmp_path / "m")]) == 0
    text = (tmp_path / "m" / "suite_cycleworld.md").read_text()
    mean = sum(accs.values()) / 3
    row = next(line for line in text.splitlines() if line.startswith("| 2 |"))
    assert row == f"| 2 | {mean:.3f} ({min(accs.values()):.3f}-{max(accs.values()):.3f}, n=3) | 0.500 (0.500-0.500, n=3) |"
    assert "buffer" not in text.split("| T |")[1].splitlines()[0]  # no column for a method that did not run
    assert "state step = the learning rate" in text and "seeds 0, 1, 2" in text
    assert (tmp_path / "m" / "curves_cycleworld.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "m" / "suite_cycleworld.json").read_text())) == 6


def test_every_parser_refuses_abbreviations():
    from fastrnn import data
    from fastrnn.experiments import methods, suites
    from fastrnn.experiments.__main__ import build_parser

    for parser, argv in ((build_parser(), ["copy", "--batch", "4"]), (suites.build_parser(), ["adding", "--wor", "1"]),
                         (methods.build_parser(), ["influence", "--see", "1"])):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    with pytest.raises(SystemExit):
        data.main(["fetch", "mnist", "--cach", "x"])


def test_help_lists_every_command_suite_and_default(capsys):
    from fastrnn.experiments import methods, suites
    from fastrnn.experiments.__main__ import build_parser

    parser = build_parser()
    text = parser.format_help()
    assert "{copy,adding,mnist,pmnist,ptb,main,suite,report}" in text
    for flag, default in (("--k-top", "5"), ("--lr", "0.001"), ("--batch-size", "64"), ("--hidden", "128"),
                          ("--clip", "1.0"), ("--seed", "0"), ("--budget", "60.0"), ("--method", "sab")):
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert action.help and parser._get_formatter()._expand_help(action).endswith(f" (default: {default})")
    for p in (parser, suites.build_parser(), methods.build_parser()):
        for action in p._actions:
            assert action.help, action  # every flag says what it does
    suite_help = suites.build_parser().format_help()
    for name in ("copy-trunc", "adding", "influence", "cycleworld", "aux", "list"):
        assert name in suite_help
    with pytest.raises(SystemExit) as e:
        cli(["suite", "influence", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--seeds SEEDS" in text and "--seed SEED" in text and "S, S+1, ..., S+N-1" in text
    assert "issue #" not in text and "issue #" not in methods.__doc__
    with pytest.raises(SystemExit) as e:
        cli(["--out", "x", "suite"])  # main and suite come first: said, not run as a task
    assert e.value.code == 2 and "suite must be the first argument" in capsys.readouterr().err


def test_report_of_a_missing_directory_says_so(tmp_path, capsys):
    out = tmp_path / "missing"
    assert cli(["report", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"no runs found in {out} (runs are read from {out / 'runs'}/*/record.json)\n"
    assert not out.exists()
    out.mkdir()
    assert cli(["report", "--out", str(out)]) == 0 and "no runs found" in capsys.readouterr().out


@pytest.mark.parametrize("argv, flag", [
    (["cycleworld", "--steps", "-3"], "--steps"), (["cycleworld", "--steps", "0"], "--steps"),
    (["influence", "--steps", "x"], "--steps"), (["aux", "--seeds", "0"], "--seeds"),
    (["cycleworld", "--workers", "0"], "--workers"),
    (["cycleworld", "--T", "0"], "--T"), (["cycleworld", "--T", "-1"], "--T"), (["cycleworld", "--T", "2", "2"], "--T"),
    (["cycleworld", "--M", "0"], "--M"), (["cycleworld", "--buffer", "0"], "--buffer"),
    (["cycleworld", "--buffer", "-5"], "--buffer"), (["cycleworld", "--buffer", "4", "--T", "2", "6"], "--buffer"),
    (["cycleworld", "--buffer", "10"], "--buffer"),  # StochasticWorld's T = 15
    *[(["cycleworld", flag, v], flag) for flag in ("--lr", "--lam") for v in ("-1", "nan", "0", "inf")],
    (["cycleworld", "--state-lr", "nan"], "--state-lr"), (["cycleworld", "--state-lr", "-1"], "--state-lr"),
    (["cycleworld", "--state-lr", "0"], "--state-lr"),
    (["cycleworld", "--worlds"], "--worlds"), (["cycleworld", "--worlds", "cycle6", "cycle6"], "--worlds"),
    (["cycleworld", "--methods", "fpp", "fpp"], "--methods"),
    (["cycleworld", "--methods", "tbptt", "--lam", "0.5"], "--lam"),
    (["cycleworld", "--methods", "tbptt", "--buffer=5"], "--buffer"),
    (["cycleworld", "--methods", "tbptt", "--state-lr", "1"], "--state-lr"),
    (["cycleworld", "--merge", "a.json", "--T", "4", "--methods", "tbptt", "--lr", "5"], "--merge"),
    (["influence", "--merge", "a.json"], "--merge"), (["influence", "--T", "4"], "--T"),
    (["aux", "--steps", "9"], "--steps"),
    *[(["aux", "--budget", v], "--budget") for v in ("0", "-5", "nan")],
    (["aux", "--clock", "gpu"], "--clock"), (["cycleworld", "--clock", "cpu"], "--clock"),
])
def test_method_suites_refuse_bad_options(argv, flag, tmp_path, monkeypatch, capsys):
    from fastrnn.experiments import methods

    calls = _record_suite_calls(monkeypatch, tmp_path)
    monkeypatch.setattr(methods, "cycleworld_report", lambda *a, **k: calls.append(a))
    with pytest.raises(SystemExit) as e:
        cli(["suite", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: argument {flag}: " in err and "Traceback" not in err and not calls


def test_merge_refuses_bad_files_naming_them(tmp_path, capsys):
    run = {"world": "cycle6", "method": "fpp", "T": 2, "seed": 0, "steps": 50, "acc": 0.9, "ce": 0.3, "wall_s": 1.0,
           "curve": {"t": [1], "acc": [0.9], "ce": [0.3]}, "lr": 0.03, "state_lr": 1.0, "lam": 1.0, "M": 4,
           "buffer_size": 1000}
    files = {"good.json": [run], "same.json": [run], "seed1_4000.json": [{**run, "seed": 1, "steps": 4000}],
             "seed1_lam.json": [{**run, "seed": 1, "lam": 0.5}], "empty.json": [], "dict.json": {},
             "fields.json": [{"acc": 0.9}], "bad.json": "{not json"}
    for name, data in files.items():
        (tmp_path / name).write_text(data if isinstance(data, str) else json.dumps(data))
    cases = [(["missing.json"], "missing.json: cannot read it"), (["bad.json"], "bad.json: not JSON"),
             (["empty.json"], "empty.json: holds no runs"), (["dict.json"], "dict.json: holds no runs"),
             (["fields.json"], "fields.json: run 0 lacks world, method"),
             (["good.json", "good.json"], "good.json: given twice"),
             (["good.json", "same.json"], "the same run twice (in"),
             (["good.json", "seed1_4000.json"], "different steps (50 in"),
             (["good.json", "seed1_lam.json"], "different lam (1.0 in")]
    for names, message in cases:
        with pytest.raises(SystemExit) as e:
            cli(["suite", "cycleworld", "--merge", *(str(tmp_path / n) for n in names), "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "error: argument --merge: " in err and message in err, (names, err)
        assert "Traceback" not in err
    assert not (tmp_path / "m").exists()
