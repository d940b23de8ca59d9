"""Task generators and data sets (fastrnn.tasks): layout, seeding and metrics, on generated data;
the real MNIST / PTB only when the cache was fetched (`python -m fastrnn.data fetch all`)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastrnn import data
from fastrnn.tasks import CharPTB, CharVocab, PixelMNIST, adding_batch, bits_per_character, copying_batch
from fastrnn.tasks import copying, fixed_permutation


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- copying ----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, 100])
def test_copying_layout(T):
    x, y = copying_batch(T, 32, generator=gen(0))
    L = T + 20
    assert x.shape == (L, 32, 1) and y.shape == (L, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    s = x[..., 0].long()
    digits = s[:10]
    assert digits.min() >= 1 and digits.max() <= 8
    assert set(digits.unique().tolist()) == set(range(1, 9))  # all eight digits occur in 320 draws
    expected = torch.zeros(L, 32, dtype=torch.int64)
    expected[:10] = digits
    expected[T + 9] = 9  # the marker
    assert torch.equal(s, expected)
    target = torch.zeros(L, 32, dtype=torch.int64)
    target[-10:] = digits
    assert torch.equal(y, target)


def test_copying_onehot_matches_scalar_and_is_seeded():
    xs, ys = copying_batch(12, 8, generator=gen(3))
    xo, yo = copying_batch(12, 8, generator=gen(3), encoding="onehot")
    assert xo.shape == (32, 8, 10) and torch.equal(yo, ys)
    assert torch.equal(xo.sum(-1), torch.ones(32, 8)) and torch.equal(xo.argmax(-1), xs[..., 0].long())
    x2, _ = copying_batch(12, 8, generator=gen(4))
    assert not torch.equal(x2, xs)


def test_copying_accuracy_counts_only_the_copy():
    _, y = copying_batch(5, 4, generator=gen(1))
    logits = F.one_hot(y, 10).float()
    assert copying.copying_accuracy(logits, y) == 1.0
    logits[:10] = 0  # wrong outside the copy: does not matter
    assert copying.copying_accuracy(logits, y) == 1.0
    logits[-1, 0] = F.one_hot((y[-1, 0] % 8) + 1, 10).float()  # one of 40 copy outputs wrong
    assert copying.copying_accuracy(logits, y) == pytest.approx(39 / 40)


def test_memoryless_cross_entropy_is_the_plateau():
    T = 30
    _, y = copying_batch(T, 16, generator=gen(2))
    logits = torch.full((T + 20, 16, 10), -1e9)
    logits[:-10, :, 0] = 0  # certain blank before the copy
    logits[-10:, :, 1:9] = 0  # uniform over the 8 digits during the copy
    ce = F.cross_entropy(logits.reshape(-1, 10), y.reshape(-1)).item()
    assert ce == pytest.approx(copying.memoryless_cross_entropy(T), rel=1e-6)


@pytest.mark.parametrize("kwargs, arg", [(dict(T=0, batch_size=2), "T"), (dict(T=3, batch_size=0), "batch_size"),
                                         (dict(T=3, batch_size=2, encoding="bits"), "encoding")])
def test_copying_bad_arguments_are_named(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        copying_batch(**kwargs)


# --- adding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [2, 9, 50])
def test_adding_layout(T):
    x, y = adding_batch(T, 64, generator=gen(0))
    assert x.shape == (T, 64, 2) and y.shape == (64,)
    values, mask = x[..., 0], x[..., 1]
    assert values.min() >= 0 and values.max() < 1
    assert torch.equal(mask.sum(0), torch.full((64,), 2.0))
    half = T // 2
    assert torch.equal(mask[:half].sum(0), torch.ones(64)) and torch.equal(mask[half:].sum(0), torch.ones(64))
    torch.testing.assert_close(y, (values * mask).sum(0))


def test_adding_seeded_and_checked():
    a, b = adding_batch(10, 4, generator=gen(5)), adding_batch(10, 4, generator=gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="T"):
        adding_batch(1, 4)


# --- pixel / permuted MNIST (generated images) -------------------------------------------------


def fake_images(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def test_pixel_mnist_is_row_major_pixels_in_time():
    images, labels = fake_images()
    ds = PixelMNIST(images, labels)
    x, y = ds.batch(torch.tensor([3, 7]))
    assert x.shape == (784, 2, 1) and x.is_contiguous()
    np.testing.assert_array_equal(x[:, 1, 0].numpy(), images[7])
    assert y.tolist() == [labels[3], labels[7]]


def test_permuted_mnist_uses_one_fixed_permutation():
    images, labels = fake_images()
    p = fixed_permutation(0)
    assert torch.equal(p, fixed_permutation(0)) and not torch.equal(p, fixed_permutation(1))
    assert torch.equal(p.sort().values, torch.arange(784))
    ds = PixelMNIST(images, labels, permute=True, seed=0)
    x, _ = ds.batch(torch.tensor([0, 5]))
    np.testing.assert_array_equal(x[:, 1, 0].numpy(), images[5][p.numpy()])


def test_mnist_epoch_covers_every_example_once():
    images, labels = fake_images(23)
    ds = PixelMNIST(images, np.arange(23))
    seen = torch.cat([y for _, y in ds.epoch(5, generator=gen(0))])
    assert sorted(seen.tolist()) == list(range(23))
    x, y = ds.random_batch(4, generator=gen(1))
    assert x.shape == (784, 4, 1) and y.shape == (4,)


def test_mnist_bad_shapes_are_named():
    with pytest.raises(ValueError, match="images"):
        PixelMNIST(np.zeros((3, 783)), np.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        PixelMNIST(np.zeros((3, 784)), np.zeros(4))


# --- character-level PTB (generated text) -------------------------------------------------------

TEXTS = {"train": " the cat sat on the mat \n a dog ran <unk> \n\n", "valid": " the dog sat \n", "test": " a cat \n"}


def test_char_ptb_stream_and_vocab():
    ds = CharPTB(TEXTS)
    assert ds.vocab.decode(ds.ids["train"]) == "the cat sat on the mat\na dog ran <unk>\n"
    assert ds.vocab.chars == sorted(set("the cat sat on the mat\na dog ran <unk>\n"))
    assert ds.vocab.decode(ds.vocab.encode("a cat\n")) == "a cat\n"
    with pytest.raises(ValueError, match="'z'"):
        ds.vocab.encode("zoo")


def test_char_ptb_windows_predict_the_next_character():
    ds = CharPTB(TEXTS)
    x, y = ds.random_batch("train", 6, 8, generator=gen(0))
    assert x.shape == y.shape == (8, 6)
    assert torch.equal(x[1:], y[:-1])
    stream = ds.vocab.decode(ds.ids["train"])
    for b in range(6):
        assert ds.vocab.decode(x[:, b]) + ds.vocab.decode(y[-1:, b]) in stream
    with pytest.raises(ValueError, match="length"):
        ds.random_batch("valid", 2, 500)


def test_char_ptb_sequential_batches_cover_the_split():
    ds = CharPTB(TEXTS)
    xs, ys = zip(*ds.sequential_batches("train", 2, 4))
    x, y = torch.cat(xs), torch.cat(ys)
    rows = (ds.ids["train"].numel() - 1) // 2
    assert x.shape == (rows, 2)
    assert torch.equal(x.t().reshape(-1), ds.ids["train"][: 2 * rows])
    assert torch.equal(y.t().reshape(-1), ds.ids["train"][1: 2 * rows + 1])


def test_bits_per_character():
    assert bits_per_character(math.log(2)) == pytest.approx(1.0)
    uniform = CharVocab("abcd")
    assert bits_per_character(math.log(len(uniform))) == pytest.approx(2.0)


# --- real data, when fetched ------------------------------------------------------------------


def test_real_permuted_mnist():
    if not data.available("mnist"):
        pytest.skip(f"mnist cache absent: fill it with `{data.fetch_hint('mnist')}`")
    ds = PixelMNIST.from_cache("test", permute=True, seed=0)
    assert len(ds) == 10_000
    x, y = ds.batch(torch.arange(4))
    assert x.shape == (784, 4, 1) and 0 <= x.min() and x.max() < 1 and y.max() <= 9


def test_real_char_ptb():
    if not data.available("ptb"):
        pytest.skip(f"ptb cache absent: fill it with `{data.fetch_hint('ptb')}`")
    ds = CharPTB.from_cache()
    assert len(ds.vocab) == 50
    # 5,101,619 raw characters less the blank padding around words and lines.
    assert ds.ids["train"].numel() == 5_017_482
