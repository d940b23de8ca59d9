"""A run's progress: a tqdm bar in a terminal, plain lines anywhere else.

Where output is a terminal, each run draws its tqdm bar (parallel runs on their own lines). Where it is
not (``nohup ... > log``, a pipe, CI), bars would write carriage returns and cursor-movement escape codes
into the file, one update a second per run; there a run instead prints one plain line every ``interval``
seconds (and when it starts and ends), flushed, to stdout:

    copy-T100-sab-s0: 120/530 s (23%), it 2,210, loss 0.2811, acc 0.139, 26,107 tok/s
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

DEFAULT_INTERVAL = 30.0  # seconds between plain lines


def interactive() -> bool:
    """True when both stdout and stderr (where tqdm draws) are terminals."""
    return _isatty(sys.stdout) and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """``update_to(n)``, ``set_postfix(**fields)``, ``close()``: a tqdm bar or plain lines (module doc).

    ``total`` and ``unit`` ("s" of budget or "it"erations) describe the run's end; ``enabled=False`` shows
    nothing at all; ``bars`` forces the choice (default: `interactive()`)."""

    def __init__(self, name: str, total: float, unit: str, *, enabled: bool = True, position: int = 0,
                 interval: float = DEFAULT_INTERVAL, bars: bool | None = None, stream=None):
        self.name, self.total, self.unit, self.interval = name, total, unit, interval
        self.enabled = enabled
        self.n = 0.0
        self.fields: dict = {}
        self._stream = stream
        self._bar = None
        self._last = time.monotonic()
        if not enabled:
            return
        if interactive() if bars is None else bars:
            self._bar = tqdm(total=total, desc=name, position=position, leave=True, mininterval=1.0,
                             bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n:.0f}/{total:.0f} " + unit
                                        + " {postfix}")
        else:
            self._line("started")

    def update_to(self, n: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n - self._bar.n)
            return
        self.n = n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def set_postfix(self, **fields) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**fields, refresh=False)
        self.fields = fields

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._line("done")

    def _line(self, tag: str = "") -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        text = f"{self.name}: {self.n:,.0f}/{self.total:,.0f} {self.unit}{pct}"
        if self.fields:
            text += ", " + ", ".join(f"{k} {v}" for k, v in self.fields.items())
        if tag:
            text += f" [{tag}]"
        print(text, file=self._stream or sys.stdout, flush=True)
