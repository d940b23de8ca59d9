"""Character-level Penn Treebank (SPEC section 5; Ke et al., SAB, section 4.3), scored in bits per character.

The text is Mikolov's word-level LM splits (from the pinned ``treebank`` package via
``fastrnn.data.load_ptb``) turned into the usual character stream: one sentence per line, leading and
trailing blanks stripped, words separated by one space, ``"\\n"`` ending every sentence. The vocabulary
is the set of characters of the training split (about 50). Training windows are contiguous
``length + 1`` character spans; the model predicts each next character. BPC = cross-entropy (nats) / ln 2.
Time-major like ``nn.LSTM``: x ``[L, B]`` (int64 character ids, for an embedding), y ``[L, B]``.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def normalize(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return "".join(line + "\n" for line in lines if line)


def bits_per_character(cross_entropy_nats: float) -> float:
    return cross_entropy_nats / math.log(2)


class CharVocab:
    """Characters <-> ids, sorted so the ids do not depend on the order the text was read in."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        # Vectorised over code points (the training split has 5M characters): the sorted vocabulary
        # makes the id of a character its rank among the vocabulary's code points.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        ids = np.searchsorted(table, codes)
        bad = (ids >= len(table)) | (table[np.minimum(ids, len(table) - 1)] != codes)
        if bad.any():
            raise ValueError(f"text: character {chr(codes[bad.argmax()])!r} is not in the vocabulary")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharPTB:
    """The three splits as id streams, with a vocabulary built from ``train``."""

    def __init__(self, texts: dict):
        missing = [s for s in ("train", "valid", "test") if s not in texts]
        if missing:
            raise ValueError(f"texts: missing split {missing[0]!r}")
        normalized = {s: normalize(t) for s, t in texts.items()}
        self.vocab = CharVocab(normalized["train"])
        self.ids = {s: self.vocab.encode(t) for s, t in normalized.items()}

    @classmethod
    def from_cache(cls, cache=None):
        from fastrnn.data import load_ptb

        return cls(load_ptb(cache))

    def random_batch(self, split: str, batch_size: int, length: int, *, generator: torch.Generator | None = None):
        """``batch_size`` random windows: x = chars ``[s, s+length)``, y = chars ``[s+1, s+length+1)``."""
        stream = self.ids[split]
        if length + 1 > stream.numel():
            raise ValueError(f"length: {length} does not fit the {split} split ({stream.numel()} characters)")
        starts = torch.randint(0, stream.numel() - length, (batch_size,), generator=generator)
        offsets = torch.arange(length + 1)
        window = stream[starts[None, :] + offsets[:, None]]  # [length + 1, B]
        return window[:-1].contiguous(), window[1:].contiguous()

    def sequential_batches(self, split: str, batch_size: int, length: int):
        """Cover ``split`` once: the stream cut into ``batch_size`` columns, read ``length`` rows at a time
        (for evaluation with the state carried from one window to the next)."""
        stream = self.ids[split]
        rows = (stream.numel() - 1) // batch_size
        x_all = stream[: rows * batch_size].view(batch_size, rows).t()
        y_all = stream[1: rows * batch_size + 1].view(batch_size, rows).t()
        for start in range(0, rows, length):
            yield x_all[start:start + length].contiguous(), y_all[start:start + length].contiguous()
