"""Run records: one JSON file per run, and a markdown table across runs."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

COLUMNS = ("run", "method", "iterations", "train s", "CPU s", "tokens/s", "acc (held-out)", "loss (held-out)",
           "acc (last 10 logs)")


def write_record(path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def load_records(out) -> list:
    """Every ``out/runs/*/record.json``, ordered by run name."""
    paths = sorted(Path(out).glob("runs/*/record.json"))
    return [json.loads(p.read_text()) for p in paths]


def trailing_accuracy(record: dict, n: int = 10) -> float:
    """Mean training accuracy of the last ``n`` logged windows (each ``log_every`` iterations)."""
    tail = record["history"][-n:]
    return sum(h["acc"] for h in tail) / len(tail) if tail else float("nan")


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def markdown_table(records: list) -> str:
    """One row per run. "acc" is the task's accuracy (copy: on the last 10 steps of the sequence).
    "CPU s" below "train s" means the run shared its core (other processes, or more runs than cores)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        cells = (r["name"], r["config"]["method"], f"{r['iterations']:,}", f"{r['train_seconds']:.0f}", f"{r.get('cpu_seconds', float('nan')):.0f}",
                 f"{r['tokens_per_second']:,.0f}", f"{r['eval']['acc']:.3f}", f"{r['eval']['loss']:.4f}",
                 _fmt(trailing_accuracy(r)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(out, records: list | None = None) -> Path:
    records = load_records(out) if records is None else records
    path = Path(out) / "results.md"
    path.write_text(markdown_table(records))
    return path
